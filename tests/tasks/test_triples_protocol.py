"""Seen/unseen evaluation protocol: bookkeeping, micro P/R/F1, rearranged and sifted splits."""

import pytest

from compactlm.errors import CompactLMError
from compactlm.tasks.triples import (
    TripleExample, is_seen, rearrange, report, score, sift, sifted, standard_split, triple_set, unseen_share,
)
from compactlm.tasks.triples.splits import Splits

E = TripleExample
TRAIN = [
    E("Paris is the capital of France.", (("Paris", "capital of", "France"),)),
    E("Rome is in Italy.", (("Rome", "located in", "Italy"), ("Italy", "capital", "Rome"))),
]
TEST = [
    E("paris, capital of france.", (("paris", "Capital of", "FRANCE"),)),  # seen (after normalisation)
    E("Berlin is in Germany and Rome in Italy.", (("Berlin", "located in", "Germany"), ("Rome", "located in", "Italy"))),
    E("Oslo is in Norway.", (("Oslo", "located in", "Norway"),)),
]


def test_seen_unseen_bookkeeping():
    keys = triple_set(TRAIN)
    assert is_seen(("PARIS", "capital  of", "France"), keys)
    assert not is_seen(("France", "capital of", "Paris"), keys)  # direction matters
    assert not is_seen(("Rome", "capital", "Italy"), keys)  # relation matters
    assert unseen_share(TEST, TRAIN) == pytest.approx(2 / 4)


def test_micro_f1_on_a_hand_made_case():
    preds = [
        [("Paris", "capital of", "France"), ("Paris", "capital of", "France")],  # seen TP (repeat counts once)
        [("Berlin", "located in", "Germany"), ("Italy", "capital", "Rome")],  # unseen TP + seen FP (copied from train)
        [("Oslo", "capital of", "Norway")],  # unseen FP; gold unseen triple missed
    ]
    s = score(TEST, preds, TRAIN)
    assert (s["seen"].tp, s["seen"].predicted, s["seen"].gold) == (1, 2, 2)
    assert (s["unseen"].tp, s["unseen"].predicted, s["unseen"].gold) == (1, 2, 2)
    assert (s["all"].tp, s["all"].predicted, s["all"].gold) == (2, 4, 4)
    assert s["all"].precision == 0.5 and s["all"].recall == 0.5 and s["all"].f1 == 0.5
    assert s["seen"].f1 == pytest.approx(0.5) and s["unseen"].recall == 0.5
    r = report(s, TEST, TRAIN)
    assert r["unseen_share"] == 0.5 and r["all"]["f1"] == 0.5
    empty = score(TEST, [[], [], []], TRAIN)
    assert empty["all"].precision == 0.0 and empty["all"].f1 == 0.0
    with pytest.raises(CompactLMError, match="one prediction list per gold example"):
        score(TEST, [[]], TRAIN)


def _pool():
    """20 sentences: 10 with a triple found nowhere else, 10 sharing 5 triples in pairs."""
    once = [E(f"U{i} is in V{i}.", ((f"U{i}", "located in", f"V{i}"),)) for i in range(10)]
    rep = [E(f"S{i % 5} is in T{i % 5}, sentence {i}.", ((f"S{i % 5}", "located in", f"T{i % 5}"),)) for i in range(10)]
    return once + rep


@pytest.mark.parametrize("share", [0.0, 0.5, 1.0])
def test_rearrange_reaches_the_unseen_share(share):
    pool = _pool()
    sp = rearrange(pool, share, test_size=4, validation_size=2, seed=3)
    assert len(sp.test) == 4 and len(sp.validation) == 2 and len(sp.train) == 14
    assert unseen_share(sp.test, sp.train) == pytest.approx(share)
    assert sp.stats["unseen_share"] == pytest.approx(share)
    assert sorted(map(id, sp.train + sp.validation + sp.test)) == sorted(map(id, pool))


def test_rearrange_stops_short_rather_than_drift(caplog):
    sp = rearrange(_pool(), 1.0, test_size=15, seed=0)
    assert len(sp.test) == 10 and unseen_share(sp.test, sp.train) == 1.0
    assert "too few sentences" in caplog.text
    sp = rearrange(_pool(), 0.0, test_size=8, seed=0)  # only one sentence of each repeated pair may leave train
    assert len(sp.test) == 5 and unseen_share(sp.test, sp.train) == 0.0
    with pytest.raises(CompactLMError, match="unseen_share"):
        rearrange(_pool(), 1.5, test_size=3)


def test_sift_removes_exactly_the_leaking_sentences():
    kept, removed = sift(TRAIN, TEST)
    assert removed == [TRAIN[0], TRAIN[1]]  # one leaks Paris/capital of/France, the other Rome/located in/Italy
    extra = E("Oslo was founded in 1040.", (("Oslo", "founded", "1040"),))
    kept, removed = sift([*TRAIN, extra], TEST)
    assert kept == [extra] and removed == TRAIN
    sp = sifted(Splits([*TRAIN, extra], [TRAIN[0]], TEST))
    assert sp.train == [extra] and sp.validation == [] and unseen_share(sp.test, sp.train) == 1.0
    assert sp.stats["sifted_train"] == 2


def test_standard_split_is_seeded_and_disjoint():
    pool = _pool()
    a, b = standard_split(pool, 0.1, 0.2, seed=1), standard_split(pool, 0.1, 0.2, seed=1)
    assert (a.train, a.validation, a.test) == (b.train, b.validation, b.test)
    assert (len(a.train), len(a.validation), len(a.test)) == (14, 2, 4)
    assert standard_split(pool, 0.1, 0.2, seed=2).test != a.test
    with pytest.raises(CompactLMError, match="validation \\+ test"):
        standard_split(pool, 0.5, 0.5)
