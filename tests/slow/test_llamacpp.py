"""llama.cpp loads compactlm's GGUF export and computes what compactlm computes (slow; needs
``make llamacpp``, which builds llama.cpp through llama-cpp-python)."""

import numpy as np
import pytest
import torch

from compactlm.api import quantize
from compactlm.data.tokens import eval_tokens
from compactlm.export.gguf import export_gguf
from compactlm.models import load_model

pytestmark = pytest.mark.slow


def _log_softmax(x):
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def test_real_model_q4_0_export_loads_in_llamacpp_with_close_logits(tmp_path):
    llama_cpp = pytest.importorskip("llama_cpp")  # inside the test: the fast suite must not even collect a skip
    model, tok = load_model("smollm2-135m")
    quantize(model, "rtn", "gguf-q4_0")
    path = tmp_path / "m.gguf"
    export_gguf(model, tok, path, qtype="q4_0")
    ids = eval_tokens(tok, "wiki-eval", 256)[0]
    with torch.no_grad():
        ours = model(ids[None]).logits[0].double().numpy()
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=512, logits_all=True, n_threads=2, verbose=False)
    llm.eval(ids.tolist())
    theirs = np.asarray(llm.scores[: len(ids)], dtype=np.float64)
    llm.close()
    # Stated tolerance: llama.cpp quantizes activations to 8-bit blocks in its Q4_0 dot products, so
    # logits are close, not equal (measured on these 256 tokens: mean |diff| 0.16 of logits up to 36,
    # next-token KL 0.0034 nats, 96.5% equal argmax).
    lo, lt = _log_softmax(ours), _log_softmax(theirs)
    kl = (np.exp(lo) * (lo - lt)).sum(-1).mean()
    assert kl < 0.01, kl
    assert np.abs(ours - theirs).mean() < 0.01 * np.abs(ours).max()
    assert (ours.argmax(-1) == theirs.argmax(-1)).mean() > 0.9
