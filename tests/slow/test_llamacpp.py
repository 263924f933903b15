"""llama.cpp loads compactlm's GGUF export and computes what compactlm computes (slow; needs
``make llamacpp``, which builds llama.cpp through llama-cpp-python)."""

import numpy as np
import pytest
import torch

from compactlm.api import quantize
from compactlm.export.gguf import export_gguf
from compactlm.models import load_model

pytestmark = pytest.mark.slow


def test_real_model_q4_0_export_loads_in_llamacpp_with_close_logits(tmp_path):
    llama_cpp = pytest.importorskip("llama_cpp")  # inside the test: the fast suite must not even collect a skip
    model, tok = load_model("smollm2-135m")
    quantize(model, "rtn", "gguf-q4_0")
    path = tmp_path / "m.gguf"
    export_gguf(model, tok, path, qtype="q4_0")
    ids = tok("The capital of France is Paris. It is known for the Eiffel Tower and", return_tensors="pt")["input_ids"][0]
    with torch.no_grad():
        ours = model(ids[None]).logits[0].double().numpy()
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=256, logits_all=True, n_threads=2, verbose=False)
    llm.eval(ids.tolist())
    theirs = np.asarray(llm.scores[: len(ids)], dtype=np.float64)
    # llama.cpp quantizes activations to 8-bit blocks in its Q4_0 dot products: close, not equal.
    assert np.abs(ours - theirs).max() < 0.05 * np.abs(ours).max()
    assert (ours.argmax(-1) == theirs.argmax(-1)).mean() > 0.9
