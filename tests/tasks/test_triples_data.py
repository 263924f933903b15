"""Triple corpora: records, readers of the common file formats, qa_wikidata parsing, distant supervision."""

import json

import pytest

from compactlm.errors import CompactLMError
from compactlm.tasks.triples import DistantConfig, TripleExample, load_splits, read_file, triple_key
from compactlm.tasks.triples.distant import MentionIndex, align, split_sentences
from compactlm.tasks.triples.sources import build_distant, distant_corpus
from compactlm.tasks.triples.wikidata import Fact, entity_types, parse_examples, parse_prompt


def test_example_dedups_normalised_triples_and_round_trips():
    e = TripleExample("Paris is in France.", (("Paris", "capital of", "France"), ("paris", "Capital  of", "FRANCE")),
                      {"Paris": "location"})
    assert e.triples == (("Paris", "capital of", "France"),)
    assert e.keys() == {("paris", "capital of", "france")}
    assert TripleExample.from_json(json.loads(json.dumps(e.to_json()))) == e


# ----------------------------------------------------------------------------- readers

def _write(path, obj, jsonl=False):
    path.write_text("\n".join(json.dumps(r) for r in obj) + "\n" if jsonl else json.dumps(obj), encoding="utf-8")
    return path


def test_reader_casrel_text_triple_list(tmp_path):
    f = _write(tmp_path / "train_triples.json", [
        {"text": "Bob Dylan was born in Duluth .", "triple_list": [["Bob Dylan", "/people/person/place_of_birth", "Duluth"]]},
        {"text": "Nothing here .", "triple_list": []},
    ])
    ex = read_file(f)
    assert ex[0] == TripleExample("Bob Dylan was born in Duluth .", (("Bob Dylan", "/people/person/place_of_birth", "Duluth"),))
    assert ex[1].triples == ()


def test_reader_tpLinker_relation_list_with_entity_types(tmp_path):
    f = _write(tmp_path / "d.jsonl", [{
        "text": "Anna lives in Oslo", "relation_list": [{"subject": "Anna", "predicate": "lives_in", "object": "Oslo"}],
        "entity_list": [{"text": "Anna", "type": "PER", "char_span": [0, 4]}, {"text": "Oslo", "type": "LOC"}],
    }], jsonl=True)
    (e,) = read_file(f)
    assert e.triples == (("Anna", "lives_in", "Oslo"),) and e.entity_types == {"Anna": "PER", "Oslo": "LOC"}


def test_reader_nyt_relation_mentions(tmp_path):
    f = _write(tmp_path / "nyt.json", [{
        "sentText": "Obama visited Kenya .", "relationMentions": [{"em1Text": "Obama", "em2Text": "Kenya", "label": "visited"}],
        "entityMentions": [{"text": "Obama", "label": "PERSON"}],
    }])
    (e,) = read_file(f)
    assert e.triples == (("Obama", "visited", "Kenya"),) and e.entity_types == {"Obama": "PERSON"}


def test_reader_tokens_with_spans_and_spert_indices(tmp_path):
    f = _write(tmp_path / "spans.jsonl", [
        {"tokens": ["New", "York", "is", "in", "USA"], "spo_list": [[[0, 2], "located_in", [4, 5]]]},
        {"tokens": ["Ada", "met", "Alan"], "entities": [{"type": "PER", "start": 0, "end": 1}, {"type": "PER", "start": 2, "end": 3}],
         "relations": [{"type": "met", "head": 0, "tail": 1}]},
        {"tokens": ["Rome", "is", "in", "Italy"], "triples": [{"head": {"span": [0, 1], "type": "LOC"}, "relation": "in", "tail": "Italy"}]},
    ], jsonl=True)
    a, b, c = read_file(f)
    assert a.sentence == "New York is in USA" and a.triples == (("New York", "located_in", "USA"),)
    assert b.triples == (("Ada", "met", "Alan"),) and b.entity_types == {"Ada": "PER", "Alan": "PER"}
    assert c.triples == (("Rome", "in", "Italy"),) and c.entity_types == {"Rome": "LOC"}


@pytest.mark.parametrize("records, message", [
    ([{"triple_list": []}], "record 1: no sentence"),
    ([{"text": "a b"}, {"text": "x", "triple_list": [["a", "r"]]}], "record 1: no triples"),
    ([{"text": "x", "triple_list": [["a", "r"]]}], r"record 1: triple_list\[0\]: expected \[head, relation, tail\]"),
    ([{"text": "x", "triple_list": [["a", "r", "b"]]}, {"text": "y", "spo_list": [[[0, 9], "r", "b"]]}],
     "record 2: spo_list\\[0\\] head is a token span but the record has no 'tokens'"),
    ([{"tokens": ["a"], "spo_list": [[[0, 3], "r", "b"]]}], "outside the 1 tokens"),
    ([{"text": "x", "relation_list": [{"subject": "a", "object": "b"}]}], "expected head"),
])
def test_reader_errors_name_file_and_record(tmp_path, records, message):
    f = _write(tmp_path / "bad.json", records)
    with pytest.raises(CompactLMError, match=message) as err:
        read_file(f)
    assert str(f) in str(err.value) and "\n" not in str(err.value)


def test_reader_bad_json_line_and_missing_file(tmp_path):
    f = tmp_path / "x.jsonl"
    f.write_text('{"text": "a", "triple_list": []}\n{oops\n')
    with pytest.raises(CompactLMError, match="line 2 is not valid JSON"):
        read_file(f)
    with pytest.raises(CompactLMError, match="file not found"):
        read_file(tmp_path / "none.json")


def test_load_splits_from_folder_and_hub_offline(tmp_path, monkeypatch):
    rec = {"text": "A is in B .", "triple_list": [["A", "in", "B"]]}
    for name in ("train.json", "dev.json", "test.json"):
        _write(tmp_path / name, [rec, rec])
    sp = load_splits(str(tmp_path))
    assert (len(sp.train), len(sp.validation), len(sp.test)) == (2, 2, 2) and sp.summary()["unseen_share"] == 0.0
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(CompactLMError, match="unreachable"):
        load_splits("hf:some/dataset")
    with pytest.raises(CompactLMError, match="not found"):
        load_splits(str(tmp_path / "nothing"))


# ----------------------------------------------------------------------------- qa_wikidata

def test_parse_prompt_templates():
    assert parse_prompt("The country of citizenship of Jean-Paul Belmondo is") == ("Jean-Paul Belmondo", "country of citizenship")
    assert parse_prompt("The country of Sassari is") == ("Sassari", "country")
    assert parse_prompt("The language used in Botswana is [MASK]") == ("Botswana", "language used")
    assert parse_prompt("The sport played by A. C. Green is") == ("A. C. Green", "sport")
    assert parse_prompt("Sussex shares a border with") == ("Sussex", "shares border with")
    assert parse_prompt("Aswan is located in or next to body of water") == ("Aswan", "located in or next to body of water")
    assert parse_prompt("Abuja is capital of") == ("Abuja", "capital of")
    assert parse_prompt("What is the weather like") is None


def test_parse_examples_lists_and_types():
    facts, stats = parse_examples([
        {"input": "Sussex shares a border with", "target": ["Hampshire", "Kent"]},
        {"input": "The capital of France is", "target": "Paris"},
        {"input": "The country of citizenship of Victor Hugo is", "target": "France"},
        {"input": "The native language of Victor Hugo is", "target": "French"},
        {"input": "Hello there", "target": "x"},
    ])
    assert stats == {"prompts": 5, "parsed": 4, "unparsed": 1, "facts": 5}
    assert Fact("Sussex", "shares border with", "Kent") in facts
    types = entity_types(facts)
    # France: one 'location' vote (head of capital) and one 'country' vote: tie broken by TYPES order
    assert types == {"Sussex": "location", "Hampshire": "location", "Kent": "location", "France": "country",
                     "Paris": "location", "Victor Hugo": "person", "French": "language"}


# ----------------------------------------------------------------------------- distant supervision

def test_split_sentences_keeps_abbreviations_and_initials():
    text = "Dr. Smith met J. R. Tolkien in Oxford. They talked for hours about it! Short one.\nNew line has five words here."
    assert split_sentences(text) == ["Dr. Smith met J. R. Tolkien in Oxford.", "They talked for hours about it!",
                                     "New line has five words here."]


def test_mentions_are_whole_token_longest_first():
    idx = MentionIndex(["York", "New York City", "Paris"])
    found = idx.find("New York City is not Parisian, York is old.")
    assert [n for n, _, _ in found] == ["New York City", "York"]


FACTS = [Fact("Paris", "capital of", "France"), Fact("Paris", "country", "France"), Fact("Berlin", "capital of", "Germany"),
         Fact("France", "shares border with", "Germany"), Fact("France", "color", "Germany"),
         Fact("Lyon", "country", "France")]
DOCS = [
    "Paris is the capital and largest city of France. Paris is large and old and full of people.",
    "Berlin lies far from France in every sense of the word. France borders Germany along the Rhine river.",
    "Paris is the capital and largest city of France.",  # a repeat
    "Parisian food is famous in France and beyond.",  # 'Paris' only inside a word
]


def test_align_keeps_sentences_with_both_entities_and_whitelisted_relations():
    types = {"Paris": "location", "France": "country", "Germany": "country"}
    ex, st = align(DOCS, FACTS, relations={"capital of", "country", "shares border with"}, types=types)
    assert [e.sentence for e in ex] == ["Paris is the capital and largest city of France.", "France borders Germany along the Rhine river."]
    assert ex[0].triples == (("Paris", "capital of", "France"), ("Paris", "country", "France"))
    assert ex[1].triples == (("France", "shares border with", "Germany"),)  # 'color' is not whitelisted
    assert ex[0].entity_types == {"Paris": "location", "France": "country"}
    assert (st.duplicates, st.kept, st.triples) == (1, 2, 3)
    ex, st = align(DOCS, FACTS, relations={"capital of", "country"}, max_triples=1)
    assert st.too_many == 1 and ex == []


def test_distant_corpus_is_cached_and_deterministic(tmp_cache, tmp_path, monkeypatch):
    task = tmp_path / "task.json"
    task.write_text(json.dumps({"examples": [
        {"input": "The capital of France is", "target": "Paris"},
        {"input": "The country of Lyon is", "target": "France"},
    ]}))
    docs = ["Paris is the capital and largest city of France.", "Lyon is a big city in the east of France.",
            "Nothing about it at all in this one."]
    monkeypatch.setattr("compactlm.data.corpora.load_texts", lambda name: docs if name == "wiki" else [])
    cfg = DistantConfig(texts=("wiki",), facts=str(task))
    ex, stats = distant_corpus(cfg)
    assert [e.triples for e in ex] == [(("France", "capital", "Paris"),), (("Lyon", "country", "France"),)]
    assert ex[1].entity_types == {"France": "country"}  # Lyon: head of 'country' is untyped
    assert stats["align"]["kept"] == 2 and list(tmp_cache.glob("triples/wikidata-distant-*.json"))
    monkeypatch.setattr("compactlm.data.corpora.load_texts", lambda name: pytest.fail("rebuilt instead of cached"))
    again, _ = distant_corpus(cfg)
    assert again == ex
    assert build_distant(cfg, documents=docs[:1])[0] == ex[:1]
    assert triple_key(ex[0].triples[0]) == ("france", "capital", "paris")


@pytest.mark.slow
def test_real_distant_corpus_builds(tmp_cache):
    sp = load_splits()
    s = sp.summary()
    assert s["train"]["sentences"] > 1000 and s["relations"] >= 20 and 0 < s["unseen_share"] < 0.5
