"""Corpus parsing: local .txt/.jsonl files, wiki markers, disjointness, and one-line errors."""

import json

import pytest

from compactlm.data import load_texts
from compactlm.data.corpora import disjoint_passages, split_wiki_docs
from compactlm.errors import CompactLMError


def test_txt_splits_on_blank_lines(tmp_path):
    f = tmp_path / "a.txt"
    f.write_text("first doc\nline two\n\n\n  second doc  \n \n\nthird\n")
    assert load_texts(str(f)) == ["first doc\nline two", "second doc", "third"]


def test_jsonl_default_and_named_field(tmp_path):
    f = tmp_path / "a.jsonl"
    f.write_text(json.dumps({"text": "one", "body": "B1"}) + "\n\n" + json.dumps({"text": " two ", "body": "B2"}) + "\n")
    assert load_texts(str(f)) == ["one", "two"]
    assert load_texts(f"{f}:body") == ["B1", "B2"]


def test_file_edit_is_seen(tmp_path):
    f = tmp_path / "a.txt"
    f.write_text("old")
    assert load_texts(str(f)) == ["old"]
    f.write_text("new text")
    import os
    os.utime(f, (1, 12345))
    assert load_texts(str(f)) == ["new text"]


@pytest.mark.parametrize("content, needle", [
    ('{"text": "ok"}\n{"text": broken\n', "line 2 is not valid JSON"),
    ('{"text": "ok"}\n{"other": "x"}\n', "line 2 has no string field 'text'"),
    ("\n\n", "holds no text"),
])
def test_bad_jsonl_is_one_line_error(tmp_path, content, needle):
    f = tmp_path / "bad.jsonl"
    f.write_text(content)
    with pytest.raises(CompactLMError, match=needle) as e:
        load_texts(str(f))
    assert str(f) in str(e.value) and "\n" not in str(e.value)


def test_missing_empty_unknown(tmp_path):
    with pytest.raises(CompactLMError, match="file not found"):
        load_texts(str(tmp_path / "nope.txt"))
    (tmp_path / "empty.txt").write_text("  \n\n ")
    with pytest.raises(CompactLMError, match="holds no text"):
        load_texts(str(tmp_path / "empty.txt"))
    with pytest.raises(CompactLMError, match="unknown.*wiki-eval"):
        load_texts("no-such-corpus")


def test_hub_corpus_offline_names_alternatives(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(CompactLMError, match="hub is unreachable.*wiki-eval"):
        load_texts("wikitext2")


def test_split_wiki_docs():
    text = '<doc id="1" title="A">\nA\n\nalpha text\n</doc>\n<doc id="2">\n  \n</doc>\n<doc id="3">beta</doc>'
    assert split_wiki_docs(text) == ["A\n\nalpha text", "beta"]


def test_disjoint_passages_dedupes_and_drops_overlap():
    ref = ["one two three four five six seven eight nine ten eleven twelve thirteen fourteen"]
    shared = "Intro: two three four five six seven eight nine ten eleven twelve thirteen fourteen end"
    passages = ["a fresh paragraph", "A  fresh paragraph".lower(), shared, "another one"]
    kept, stats = disjoint_passages(passages, ref)
    assert kept == ["a fresh paragraph", "another one"]
    assert stats == {"input": 4, "duplicates": 1, "overlapping": 1, "kept": 2}
    # 12 shared words are not enough at n=13
    kept, _ = disjoint_passages(["x two three four five six seven eight nine ten eleven twelve thirteen y"], ref)
    assert len(kept) == 1
