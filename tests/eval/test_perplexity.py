"""Perplexity against a direct forward pass, and the strided-window bookkeeping."""

import math

import pytest
import torch
import torch.nn.functional as F

from compactlm.data.char_tokenizer import char_tokenizer
from compactlm.errors import CompactLMError
from compactlm.eval import perplexity
from compactlm.eval.perplexity import windows
from compactlm.models.tiny import tiny_model


@pytest.fixture(scope="module")
def llama():
    return tiny_model("llama").eval()


def _ids(n, seed=0):
    return torch.randint(2, 128, (n,), generator=torch.Generator().manual_seed(seed))


def test_non_overlapping_matches_hand_computation(llama):
    ids = _ids(70)  # 4 windows of 16, the last 6 tokens do not fill a window
    r = perplexity(llama, None, ids, seq_len=16, max_tokens=1000, batch_size=3)
    with torch.no_grad():
        x = ids[:64].view(4, 16)
        logits = llama(x).logits
        ce = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1))
    assert r["tokens"] == 4 * 15 and r["windows"] == 4 and r["stride"] == 16
    assert r["ppl"] == pytest.approx(math.exp(ce.item()), rel=1e-5)
    assert r["nll"] == pytest.approx(ce.item(), rel=1e-5)


def test_overlapping_scores_only_new_tokens(llama):
    ids = _ids(40, seed=1)
    r = perplexity(llama, None, ids, seq_len=16, max_tokens=40, stride=8, batch_size=2)
    # by hand: window [b, b+16) scores the targets past the previous window's end
    nll, count, prev_end = 0.0, 0, 0
    with torch.no_grad():
        for b in range(0, 40 - 16 + 1, 8):
            x = ids[b:b + 16].unsqueeze(0)
            logp = F.log_softmax(llama(x).logits[0, :-1], -1).gather(1, x[0, 1:, None])[:, 0]
            n = min(b + 16 - prev_end, 15)
            nll -= logp[-n:].sum().item()
            count += n
            prev_end = b + 16
    assert r["tokens"] == count == 15 + 3 * 8 and r["windows"] == 4
    assert r["ppl"] == pytest.approx(math.exp(nll / count), rel=1e-5)


@pytest.mark.parametrize("n, L, s", [(100, 16, 16), (100, 16, 5), (37, 10, 3), (8, 16, 16)])
def test_windows_score_each_target_once(n, L, s):
    scored = []
    for b, e, k in windows(n, L, s):
        assert e - b == min(L, n) and 0 < k < e - b + 1
        scored += range(e - k, e)  # absolute indices of the scored targets
    assert len(scored) == len(set(scored)) and min(scored) >= 1
    if s == L:
        assert len(scored) == (n // min(L, n)) * (min(L, n) - 1)


def test_batch_size_does_not_change_result(llama):
    ids = _ids(100, seed=2)
    a = perplexity(llama, None, ids, seq_len=20, batch_size=1)
    b = perplexity(llama, None, ids, seq_len=20, batch_size=5)
    assert a["ppl"] == pytest.approx(b["ppl"], rel=1e-5)


def test_text_source_and_errors(llama, tmp_path, tmp_cache):
    f = tmp_path / "t.txt"
    f.write_text("\n\n".join(["hello world, this is a tiny corpus."] * 10))
    tok = char_tokenizer()
    r = perplexity(llama, tok, str(f), seq_len=32, max_tokens=200)
    assert r["tokens"] == (200 // 32) * 31 and math.isfinite(r["ppl"])
    with pytest.raises(CompactLMError, match="stride"):
        perplexity(llama, tok, str(f), seq_len=32, stride=64)
    with pytest.raises(CompactLMError, match="seq_len"):
        perplexity(llama, tok, str(f), seq_len=1)


def test_decoder_architectures(decoder_tiny):
    name, model = decoder_tiny
    model.eval()
    ids = _ids(48, seed=3)
    r = perplexity(model, None, ids, seq_len=16)
    with torch.no_grad():
        x = ids.view(3, 16)
        logits = model(x).logits
        ce = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1))
    assert r["ppl"] == pytest.approx(math.exp(ce.item()), rel=1e-4), name
