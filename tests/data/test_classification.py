"""Fixed classification splits: disjoint, deterministic, BoolQ split by passage (offline rows)."""

import random

import pytest

from compactlm.data import classification as C
from compactlm.data.classification import SPLIT_SEED, Example, split_examples


def _boolq_like(n_passages=300, per_passage=4):
    rows = []
    for p in range(n_passages):
        for q in range(per_passage):
            rows.append(Example(text=f"question {q} on {p}?", text_pair=f"Passage number {p}.", label=(p + q) % 2))
    random.Random(0).shuffle(rows)
    return rows


@pytest.fixture
def fake_boolq(monkeypatch):
    monkeypatch.setitem(C._READERS, "boolq", _boolq_like)
    monkeypatch.setitem(C.TASKS, "boolq", C.ClassificationTask("boolq", ("no", "yes"), "test", 200, 100, 256))
    C._splits.cache_clear()
    yield
    C._splits.cache_clear()


def test_boolq_splits_share_no_passage(fake_boolq):
    splits = {s: C.load_classification("boolq", s) for s in C.SPLITS}
    passages = {s: {e.text_pair.lower() for e in ex} for s, ex in splits.items()}
    assert not passages["train"] & passages["test"]
    assert not passages["train"] & passages["validation"]
    assert not passages["validation"] & passages["test"]
    sizes = C.split_sizes("boolq")
    assert 200 <= sizes["test"] < 200 + 4 and 100 <= sizes["validation"] < 100 + 4
    assert sum(sizes.values()) == 1200


def test_group_split_is_deterministic_and_keeps_every_example_once():
    rows = _boolq_like()
    a = split_examples(rows, 200, 100, group_key=lambda e: e.text_pair)
    b = split_examples(list(rows), 200, 100, group_key=lambda e: e.text_pair)
    assert a == b
    assert sorted(map(C._key, sum(a.values(), ()))) == sorted(map(C._key, rows))


def test_ungrouped_split_is_the_plain_seeded_cut():
    """Single-example groups reproduce the original cut, so the sarcasm splits do not move."""
    rows = [Example(text=f"headline {i}", label=i % 2) for i in range(50)] + [Example(text="HEADLINE 3", label=0)]
    distinct = rows[:50]
    random.Random(SPLIT_SEED).shuffle(distinct)
    out = split_examples(rows, 10, 5)
    assert out == {"test": tuple(distinct[:10]), "validation": tuple(distinct[10:15]), "train": tuple(distinct[15:])}
