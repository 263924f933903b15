"""Fixtures of the encoder tests: a tiny BERT teacher on disk (the local sarcasm rows are in tests/conftest.py)."""

import pytest

from compactlm.data.char_tokenizer import char_tokenizer
from compactlm.models.tiny import tiny_model


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("teacher")
    tiny_model("bert", head="sequence-classification").save_pretrained(d / "model")
    char_tokenizer().save_pretrained(d / "model")
    return d
