"""Seen/unseen bookkeeping and micro precision / recall / F1 of triple extraction.

Definitions (Lee et al., NAACL 2022, "Does it Really Generalize Well on Unseen Data?"; the source is
silent on the details below, these are adopted):

* A triple is compared by its :func:`~.example.triple_key` (normalised head, relation, tail); a
  predicted triple is correct iff its key equals a gold key of the *same sentence* (exact match of
  both entity strings and the relation, after normalisation). Repeated predictions in a sentence
  count once.
* A triple — gold or predicted — is **seen** iff its key occurs among the training triples, else
  **unseen**. Gold and predicted triples are therefore partitioned by the same rule: a correct
  prediction is seen exactly when the gold triple it matches is, and a wrong prediction counts
  against the precision of the part its own key falls in (a hallucinated triple copied from
  training lowers *seen* precision; a new wrong triple lowers *unseen* precision). The seen and
  unseen counts add up to the overall counts.
* Micro P = TP / predicted, R = TP / gold, F1 = 2PR / (P + R), each 0 when its denominator is 0.
* The **unseen share** of a test set is its unseen gold triples over all its gold triples.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Iterable, Sequence

from compactlm.errors import CompactLMError
from compactlm.tasks.triples.example import Triple, TripleExample, triple_key, triple_set


@dataclass(frozen=True)
class PRF:
    """Micro counts and scores of one part (all, seen or unseen)."""

    tp: int
    predicted: int
    gold: int

    @property
    def precision(self) -> float:
        return self.tp / self.predicted if self.predicted else 0.0

    @property
    def recall(self) -> float:
        return self.tp / self.gold if self.gold else 0.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0

    def as_dict(self) -> dict:
        return {**asdict(self), "precision": self.precision, "recall": self.recall, "f1": self.f1}


def is_seen(triple: Iterable[str], train_keys: set[Triple]) -> bool:
    """Whether ``triple`` (normalised) occurs among ``train_keys`` (see :func:`~.example.triple_set`)."""
    return triple_key(triple) in train_keys


def unseen_share(test: Sequence[TripleExample], train: Sequence[TripleExample] | set[Triple]) -> float:
    """Unseen gold triples of ``test`` over all its gold triples (0 for a test set without triples)."""
    keys = train if isinstance(train, set) else triple_set(train)
    total = unseen = 0
    for e in test:
        for k in e.keys():
            total += 1
            unseen += k not in keys
    return unseen / total if total else 0.0


def score(
    gold: Sequence[TripleExample],
    predicted: Sequence[Iterable[Iterable[str]]],
    train: Sequence[TripleExample] | set[Triple],
) -> dict[str, PRF]:
    """Micro P/R/F1 overall and on seen and unseen triples.

    Args:
        gold: Test examples.
        predicted: One collection of predicted ``(head, relation, tail)`` per test example.
        train: The training examples (or their :func:`~.example.triple_set`) that decide *seen*.

    Returns:
        ``{"all": PRF, "seen": PRF, "unseen": PRF}``.
    """
    if len(predicted) != len(gold):
        raise CompactLMError(f"predicted: expected one prediction list per gold example ({len(gold)}), got {len(predicted)}")
    keys = train if isinstance(train, set) else triple_set(train)
    counts = {part: [0, 0, 0] for part in ("seen", "unseen")}  # tp, predicted, gold
    for ex, preds in zip(gold, predicted):
        g = ex.keys()
        p = {triple_key(t) for t in preds}
        for k in g:
            counts["seen" if k in keys else "unseen"][2] += 1
        for k in p:
            part = counts["seen" if k in keys else "unseen"]
            part[1] += 1
            part[0] += k in g
    seen, unseen = (PRF(*counts[p]) for p in ("seen", "unseen"))
    total = PRF(seen.tp + unseen.tp, seen.predicted + unseen.predicted, seen.gold + unseen.gold)
    return {"all": total, "seen": seen, "unseen": unseen}


def report(scores: dict[str, PRF], test: Sequence[TripleExample], train: Sequence[TripleExample] | set[Triple]) -> dict:
    """A JSON-able summary: each part's counts and scores, and the test set's unseen share."""
    return {**{k: v.as_dict() for k, v in scores.items()}, "unseen_share": unseen_share(test, train)}
