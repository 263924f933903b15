"""Seeded token samples and the evaluation token stream."""

import pytest
import torch

from compactlm.data import eval_tokens, token_samples, token_stream
from compactlm.data.char_tokenizer import char_tokenizer
from compactlm.errors import CompactLMError


@pytest.fixture
def corpus(tmp_path, tmp_cache):
    f = tmp_path / "c.txt"
    f.write_text("\n\n".join(f"document number {i} says hello." for i in range(40)))
    return str(f)


def test_stream_joins_documents_with_eos(corpus):
    tok = char_tokenizer()
    stream = token_stream(tok, corpus)
    assert stream.dtype == torch.long
    assert (stream == tok.eos_token_id).sum() == 39
    assert tok.decode(stream[:24]) == "document number 0 says h"
    assert torch.equal(token_stream(tok, corpus), stream)  # cached copy is identical


def test_token_samples_deterministic_and_seeded(corpus):
    tok = char_tokenizer()
    a = token_samples(tok, corpus, n=5, seq_len=16, seed=0)
    b = token_samples(tok, corpus, n=5, seq_len=16, seed=0)
    c = token_samples(tok, corpus, n=5, seq_len=16, seed=1)
    assert a.shape == (5, 16) and a.dtype == torch.long
    assert torch.equal(a, b) and not torch.equal(a, c)
    stream = token_stream(tok, corpus)
    text = tok.decode(stream)
    for row in a:  # every sample is a contiguous window of the stream
        assert tok.decode(row) in text


def test_too_short_corpus_and_bad_args(corpus):
    tok = char_tokenizer()
    n = token_stream(tok, corpus).numel()
    with pytest.raises(CompactLMError, match="fewer than seq_len"):
        token_samples(tok, corpus, n=1, seq_len=n + 1)
    with pytest.raises(CompactLMError, match="must be positive"):
        token_samples(tok, corpus, n=0, seq_len=8)
    with pytest.raises(CompactLMError, match="no tokenizer"):
        token_samples(None, corpus, n=1, seq_len=8)


def test_eval_tokens_prefix(corpus):
    tok = char_tokenizer()
    ids = eval_tokens(tok, corpus, max_tokens=50)
    assert ids.shape == (1, 50)
    assert torch.equal(ids[0], token_stream(tok, corpus)[:50])
    assert eval_tokens(tok, corpus, max_tokens=10**7).shape[1] == token_stream(tok, corpus).numel()


def test_list_of_documents_source():
    tok = char_tokenizer()
    ids = token_stream(tok, ["ab", "", "cd"])
    assert tok.decode(ids, skip_special_tokens=False) == "ab<eos>cd"
