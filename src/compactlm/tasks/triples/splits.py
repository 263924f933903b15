"""Train / validation / test splits of a triple corpus: the standard random split, and the two
re-splits that emphasise unseen triples (Lee et al., NAACL 2022).

* :func:`standard_split` — sentences shuffled with a seed and dealt to test, validation and train
  by fraction. Deterministic for a seed.
* :func:`rearrange` — a new test set of ``test_size`` sentences whose unseen share is
  ``unseen_share``, drawn from the whole pool. A triple occurring in exactly one sentence is unseen
  wherever that sentence goes; a test sentence all of whose triples occur elsewhere stays *seen* as
  long as one other occurrence of each stays in train. The test set is grown one sentence at a
  time: a sentence of only once-occurring triples while the share of unseen test triples is below
  the target, otherwise a sentence of only repeated triples whose every triple keeps an occurrence
  outside the test set (sentences mixing both kinds are left to train). Validation is then drawn
  from the rest without taking the last training occurrence of a seen test triple, so the achieved
  share is exact; if the kind of sentence needed next runs out, the test set stops short of
  ``test_size`` (rather than drift from the share) and a warning is logged (the returned stats say
  what was reached).
* :func:`sift` — drop the training sentences that contain any test triple, so every test triple
  becomes unseen while the test set is unchanged.
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Sequence

from compactlm.errors import CompactLMError
from compactlm.tasks.triples.example import TripleExample, triple_set
from compactlm.tasks.triples.metrics import unseen_share as _unseen_share

log = logging.getLogger(__name__)

SPLIT_SEED = 1234
SPLIT_NAMES = ("train", "validation", "test")


@dataclass
class Splits:
    """Examples of each split; ``stats`` says how they were made."""

    train: list[TripleExample]
    validation: list[TripleExample]
    test: list[TripleExample]
    stats: dict = field(default_factory=dict)

    def items(self):
        return (("train", self.train), ("validation", self.validation), ("test", self.test))

    def summary(self) -> dict:
        """Sentences and triples per split, relations, and the test set's unseen share."""
        out = {name: {"sentences": len(ex), "triples": sum(len(e.triples) for e in ex)} for name, ex in self.items()}
        out["relations"] = len({t[1] for _, ex in self.items() for e in ex for t in e.triples})
        out["unseen_share"] = _unseen_share(self.test, self.train)
        return out


def _check_fraction(name: str, value: float) -> None:
    if not 0.0 <= value < 1.0:
        raise CompactLMError(f"{name}: expected a fraction in [0, 1), got {value}")


def standard_split(examples: Sequence[TripleExample], validation: float = 0.1, test: float = 0.1,
                   seed: int = SPLIT_SEED) -> Splits:
    """Seeded random split by sentence (test and validation get ``round(fraction * n)`` each)."""
    _check_fraction("validation", validation)
    _check_fraction("test", test)
    if validation + test >= 1.0:
        raise CompactLMError(f"validation + test: expected a sum below 1, got {validation + test}")
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    n_test, n_val = round(test * len(order)), round(validation * len(order))
    pick = lambda idx: [examples[i] for i in sorted(idx)]  # noqa: E731 - keep corpus order inside a split
    return Splits(pick(order[n_test + n_val:]), pick(order[n_test:n_test + n_val]), pick(order[:n_test]),
                  {"split": "standard", "seed": seed, "validation": validation, "test": test})


def rearrange(examples: Sequence[TripleExample], unseen_share: float, test_size: int, validation_size: int = 0,
              seed: int = SPLIT_SEED) -> Splits:
    """Re-split ``examples`` so the test set has ``test_size`` sentences and the given unseen share.

    Args:
        examples: The whole pool (e.g. train + validation + test of a standard split).
        unseen_share: Target fraction of unseen gold triples in the test set, in [0, 1].
        test_size: Test sentences.
        validation_size: Validation sentences (drawn after the test set).
        seed: Shuffling seed.
    """
    if not 0.0 <= unseen_share <= 1.0:
        raise CompactLMError(f"unseen_share: expected a fraction in [0, 1], got {unseen_share}")
    if test_size < 1 or test_size + validation_size >= len(examples):
        raise CompactLMError(f"test_size: expected 1..{len(examples) - validation_size - 1} sentences, got {test_size}")
    keys = [e.keys() for e in examples]
    counts = Counter(k for ks in keys for k in ks)
    rng = random.Random(seed)
    once = [i for i, ks in enumerate(keys) if ks and all(counts[k] == 1 for k in ks)]
    repeated = [i for i, ks in enumerate(keys) if ks and all(counts[k] > 1 for k in ks)]
    rng.shuffle(once)
    rng.shuffle(repeated)
    outside = Counter(counts)  # occurrences of each triple outside the test set
    test: list[int] = []
    n_unseen = n_seen = 0
    while len(test) < test_size:
        total = n_unseen + n_seen
        want_unseen = unseen_share >= 1 or (unseen_share > 0 and n_unseen <= unseen_share * total)
        pool = once if want_unseen else repeated
        if not pool:
            break  # the kind needed to keep the share has run out: stop short rather than drift
        i = pool.pop()
        if not want_unseen and any(outside[k] < 2 for k in keys[i]):
            continue  # taking it would leave a triple of it without a training occurrence
        n_unseen += want_unseen * len(keys[i])
        n_seen += (not want_unseen) * len(keys[i])
        for k in keys[i]:
            outside[k] -= 1
        test.append(i)
    test_keys = {k for i in test for k in keys[i]}
    in_test = set(test)
    rest = [i for i in range(len(examples)) if i not in in_test]
    rng.shuffle(rest)
    val: list[int] = []
    for i in rest:
        if len(val) >= validation_size:
            break
        if all(outside[k] >= 2 for k in keys[i] if k in test_keys):
            for k in keys[i]:
                outside[k] -= 1
            val.append(i)
    taken = set(test) | set(val)
    pick = lambda idx: [examples[i] for i in sorted(idx)]  # noqa: E731
    out = Splits(pick(i for i in range(len(examples)) if i not in taken), pick(val), pick(test))
    reached = _unseen_share(out.test, out.train)
    if len(test) < test_size or abs(reached - unseen_share) > 0.05:
        log.warning("rearrange: reached %d test sentences at unseen share %.3f (asked %d at %.3f): the pool "
                    "has too few sentences of the needed kind", len(test), reached, test_size, unseen_share)
    out.stats = {"split": "rearranged", "seed": seed, "unseen_share_target": unseen_share,
                 "unseen_share": reached, "test_size": len(test), "validation_size": len(val)}
    return out


def sift(train: Sequence[TripleExample], test: Sequence[TripleExample]) -> tuple[list[TripleExample], list[TripleExample]]:
    """``(kept, removed)``: the training sentences without / with a triple of ``test``."""
    test_keys = triple_set(test)
    kept, removed = [], []
    for e in train:
        (removed if e.keys() & test_keys else kept).append(e)
    return kept, removed


def sifted(splits: Splits) -> Splits:
    """``splits`` with :func:`sift` applied to train (validation is sifted too, so it cannot leak either)."""
    train, removed = sift(splits.train, splits.test)
    val, removed_val = sift(splits.validation, splits.test)
    return Splits(train, val, list(splits.test),
                  {**splits.stats, "sifted_train": len(removed), "sifted_validation": len(removed_val)})


def all_examples(splits: Splits) -> list[TripleExample]:
    """Train, validation and test examples in one list (the pool :func:`rearrange` re-splits)."""
    return [e for _, ex in splits.items() for e in ex]


__all__ = ["SPLIT_NAMES", "SPLIT_SEED", "Splits", "all_examples", "rearrange", "sift", "sifted", "standard_split"]
