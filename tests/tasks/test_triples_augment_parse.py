"""Entity swapping (augmented test sets, training augmentation) and the generative output parser."""

import random
import re

import pytest

from compactlm.errors import CompactLMError
from compactlm.tasks.triples import (
    EntityPool, TripleExample, augment_test_set, augment_training, format_triples, parse_generation, parse_triples,
    swap_entities, triple_set, unseen_share,
)
from compactlm.tasks.triples.augment import replace_mentions, swappable

E = TripleExample
TYPES = {"Paris": "location", "Lyon": "location", "Oslo": "location", "Bergen": "location",
         "France": "country", "Norway": "country", "Spain": "country", "Italy": "country"}
TRAIN = [
    E("Paris is the capital of France, and Paris is large.", (("Paris", "capital of", "France"),),
      {"Paris": "location", "France": "country"}),
    E("Oslo lies in Norway.", (("Oslo", "located in", "Norway"),), {"Oslo": "location", "Norway": "country"}),
    E("Lyon is a city in Spain.", (("Lyon", "located in", "Spain"),), {"Lyon": "location", "Spain": "country"}),
    E("Bergen is in Italy.", (("Bergen", "located in", "Italy"),), {"Bergen": "location", "Italy": "country"}),
]
POOL = EntityPool.from_examples(TRAIN)


def _context(sentence, names):
    """The sentence with every entity mention blanked: what swapping must keep."""
    for n in sorted(names, key=len, reverse=True):
        sentence = re.sub(rf"(?<!\w){re.escape(n)}(?!\w)", "_", sentence)
    return sentence


def test_pool_groups_typed_entities():
    assert POOL.by_type == {"country": ("France", "Italy", "Norway", "Spain"), "location": ("Bergen", "Lyon", "Oslo", "Paris")}


def test_swap_keeps_context_and_rewrites_labels_consistently():
    src = TRAIN[0]
    for seed in range(5):
        new = swap_entities(src, POOL, random.Random(seed))
        (h, r, t), = new.triples
        assert r == "capital of" and h != "Paris" and t != "France"
        assert new.sentence.count(h) == 2 and t in new.sentence and "Paris" not in new.sentence
        assert _context(new.sentence, [h, t]) == _context(src.sentence, ["Paris", "France"])
        assert new.entity_types == {h: "location", t: "country"}
        assert TYPES[h] == "location" and TYPES[t] == "country"


def test_overlapping_mentions_are_not_swapped():
    nested = E("Charles V of France ruled.", (("Charles V of France", "country of citizenship", "France"),),
               {"Charles V of France": "person", "France": "country"})
    assert not swappable(nested)
    assert swap_entities(nested, POOL, random.Random(0)) is None
    untyped = E("Oslo lies in Norway.", (("Oslo", "located in", "Norway"),))
    assert not swappable(untyped)


def test_replace_mentions_whole_tokens_only():
    ex = E("Paris and Parisians love France.", (("Paris", "capital of", "France"),), {"Paris": "location"})
    new = replace_mentions(ex, {"Paris": "Lyon"})
    assert new.sentence == "Lyon and Parisians love France." and new.triples == (("Lyon", "capital of", "France"),)


def test_augmented_test_set_is_unseen_and_real_context():
    test = [E("Oslo is the capital of Norway.", (("Oslo", "capital of", "Norway"),), {"Oslo": "location", "Norway": "country"})]
    train = [*TRAIN, E("Paris, capital of Spain.", (("Paris", "capital of", "Spain"),))]
    aug, stats = augment_test_set(test, train, POOL, seed=0, copies=3)
    assert stats == {"source": 1, "augmented": 1, "skipped": 0} and len(aug) == 3 and len(set(aug)) == 3
    assert unseen_share(aug, train) == 1.0
    for a in aug:
        (h, r, t), = a.triples
        assert a.sentence == f"{h} is the capital of {t}." and (h, t) != ("Oslo", "Norway")
    with pytest.raises(CompactLMError, match="copies"):
        augment_test_set(test, train, POOL, copies=0)


def test_training_augmentation_ratio_seed_and_avoid():
    avoid = {("lyon", "capital of", "france")}
    new, stats = augment_training(TRAIN, ratio=1.5, seed=7, avoid=avoid)
    assert stats["requested"] == 6 and stats["made"] == 6 and len(new) == 6
    assert not (triple_set(new) & avoid)
    again, _ = augment_training(TRAIN, ratio=1.5, seed=7, avoid=avoid)
    assert again == new
    assert augment_training(TRAIN, ratio=1.5, seed=8, avoid=avoid)[0] != new
    assert augment_training(TRAIN, ratio=0)[0] == []
    src_context = {_context(e.sentence, e.entities()) for e in TRAIN}
    for e in new:
        assert _context(e.sentence, e.entities()) in src_context
        assert all(e.entity_types[x] == TYPES[x] for x in e.entities())
    with pytest.raises(CompactLMError, match="ratio"):
        augment_training(TRAIN, ratio=-1)


# ----------------------------------------------------------------------------- parser

def test_format_parse_round_trip():
    triples = [("Paris", "capital of", "France"), ("Oslo", "located in", "Norway")]
    assert format_triples(triples) == "Paris | capital of | France\nOslo | located in | Norway"
    assert parse_triples(format_triples(triples)) == triples


def test_parser_on_malformed_generations():
    text = "\n".join([
        "Paris | capital of | France",
        "",
        "   ",
        "Paris | capital of",  # missing field
        "Paris | capital of | France | extra",  # extra pipe
        "Paris |  | France",  # empty field
        "paris | Capital Of | france",  # duplicate after normalisation
        "no pipes at all",
        "Oslo | LOCATED  in | Norway",  # relation spelled differently
        "Oslo | founded by | Vikings",  # unknown relation
        "| | |",
    ])
    out = parse_generation(text, relations=["capital of", "located in"])
    assert out.triples == [("Paris", "capital of", "France"), ("Oslo", "located in", "Norway")]
    assert out.duplicates == 1
    reasons = [r for _, r in out.rejected]
    assert reasons == ["expected 3 fields separated by '|', got 2", "expected 3 fields separated by '|', got 4",
                       "empty field", "expected 3 fields separated by '|', got 1", "unknown relation 'founded by'",
                       "expected 3 fields separated by '|', got 4"]
    assert parse_triples("Oslo | founded by | Vikings") == [("Oslo", "founded by", "Vikings")]  # no relation set


@pytest.mark.parametrize("junk", [None, 42, b"\xff\xfe", b"A | r | B", "", "\n\n", "|||||", "\x00 | \x00", ["a | b | c"]])
def test_parser_never_raises(junk):
    out = parse_triples(junk, relations=["r"])
    assert isinstance(out, list)
    if junk == b"A | r | B":
        assert out == [("A", "r", "B")]
