"""QAT weight quantizers and prepare/convert on tiny models."""

import pytest
import torch

from compactlm.errors import CompactLMError
from compactlm.models import save_quantized, load_model
from compactlm.models.tiny import tiny_model
from compactlm.qat import (
    LSQQuantizer,
    MinMaxQuantizer,
    PACTQuantizer,
    TWNQuantizer,
    convert_qat,
    prepare_qat,
    qat_linears,
    twn_ternarize,
)
from compactlm.quant import QuantLinear


def _w(c_out=8, c_in=32, seed=0):
    return torch.randn(c_out, c_in, generator=torch.Generator().manual_seed(seed))


def test_twn_three_levels_per_channel_and_formula():
    w = _w()
    w_hat = TWNQuantizer("channel")(w)
    for r in range(w.shape[0]):
        levels = torch.unique(w_hat[r])
        assert len(levels) == 3
        a = levels.max()
        assert torch.allclose(levels, torch.stack([-a, torch.zeros(()), a]))
        delta = 0.7 * w[r].abs().mean()
        keep = w[r].abs() > delta
        assert torch.allclose(a, w[r].abs()[keep].mean())
        assert torch.equal(w_hat[r] != 0, keep)
    # per tensor: one α for the whole matrix
    t = TWNQuantizer("tensor")(w)
    assert len(torch.unique(t)) == 3


def test_twn_pre_clip_and_rows():
    w = _w() * 3
    codes, alpha = twn_ternarize(w, per="row", clip=2.5)
    assert alpha.shape == (8, 1) and (alpha <= 2.5).all()
    assert set(codes.unique().tolist()) <= {-1.0, 0.0, 1.0}
    with pytest.raises(CompactLMError, match="per"):
        twn_ternarize(w, per="group")


@pytest.mark.parametrize("q", [TWNQuantizer("channel"), MinMaxQuantizer(4, 16), MinMaxQuantizer(3),
                               "pact", "lsq", "lsq4"])
def test_to_qweight_matches_fake_quant_and_ste(q):
    w = _w()
    if q == "pact":
        q = PACTQuantizer(w, 2)
    elif q == "lsq":
        q = LSQQuantizer(w, 2)
    elif q == "lsq4":
        q = LSQQuantizer(w, 4, group_size=16)
    wl = w.clone().requires_grad_()
    w_hat = q(wl)
    qw = q.to_qweight(w)
    assert torch.allclose(qw.dequantize(), w_hat.detach(), atol=1e-6)
    w_hat.sum().backward()
    assert wl.grad is not None and wl.grad.abs().sum() > 0


def test_learned_parameters_get_gradients_and_ternary_pact_starts_at_twn():
    w = _w()
    pact = PACTQuantizer(w, 2)
    # same α as TWN at start (its threshold is α/2, uniform rounding, not TWN's 0.7·mean|W|)
    assert torch.allclose(pact.to_qweight(w).scale, twn_ternarize(w)[1], atol=1e-5)
    lsq = LSQQuantizer(w, 2)
    target = torch.randn_like(w)
    for q, p in ((pact, pact.gamma), (lsq, lsq.s)):
        ((q(w) - target) ** 2).sum().backward()
        assert p.grad is not None and p.grad.abs().sum() > 0


@pytest.mark.parametrize("model_type", ["llama", "gpt2", "bert"])
@pytest.mark.parametrize("scheme,options", [("w2a16", {}), ("w4a16-g16", {}), ("w2a16", {"quantizer": "lsq"}),
                                            ("w4a8", {"quantizer": "pact"})])
def test_convert_matches_fake_quant_forward(model_type, scheme, options, token_batch):
    model = tiny_model(model_type).eval()
    prepare_qat(model, scheme, **options)
    layers = qat_linears(model)
    assert layers and not any(isinstance(m, QuantLinear) for m in model.modules())
    # embeddings / lm_head stay FP
    assert type(model.get_input_embeddings()).__name__ == "Embedding"
    with torch.no_grad():
        ref = model(input_ids=token_batch[:, :16]).logits
        convert_qat(model)
        out = model(input_ids=token_batch[:, :16]).logits
    assert not qat_linears(model) and len([m for m in model.modules() if isinstance(m, QuantLinear)]) == len(layers)
    assert torch.allclose(ref, out, atol=1e-4)


def test_kv8_is_trained_and_the_converted_model_computes_the_fake_quant_model(token_batch):
    """``-kv8`` is present during QAT: the k/v projections of the fake-quant model already quantize
    their outputs, so the converted (shipped) model computes what was trained, bit for bit."""
    model = prepare_qat(tiny_model("llama").eval(), "w4a8-kv8", quantizer="minmax")
    no_kv = prepare_qat(tiny_model("llama").eval(), "w4a8", quantizer="minmax")
    layers = qat_linears(model)
    with_out_q = {n for n, m in layers.items() if m.output_quantizer is not None}
    assert with_out_q and all(n.endswith(("k_proj", "v_proj")) for n in with_out_q)
    ids = token_batch[:, :16]
    model(input_ids=ids, labels=ids).loss.backward()  # trains through the kv8 quantizer
    assert all(layers[n].weight.grad.abs().sum() > 0 for n in with_out_q)
    with torch.no_grad():
        fake = model(input_ids=ids).logits
        assert not torch.equal(fake, no_kv(input_ids=ids).logits)  # kv8 changes what training sees
        convert_qat(model)
        assert torch.equal(model(input_ids=ids).logits, fake)
    deployed = {n: m for n, m in model.named_modules() if isinstance(m, QuantLinear) and m.output_quantizer is not None}
    assert set(deployed) == with_out_q


def test_training_reaches_latent_weight_and_saves(tmp_path, token_batch):
    model = tiny_model("llama")
    prepare_qat(model, "w2a16")
    out = model(input_ids=token_batch, labels=token_batch)
    out.loss.backward()
    layer = next(iter(qat_linears(model).values()))
    assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0
    model.eval()
    convert_qat(model)
    with torch.no_grad():
        ref = model(input_ids=token_batch).logits
    save_quantized(model, None, tmp_path / "run", extra_config={"method": "qat", "scheme": "w2a16"},
                   unquantized_dtype=None)
    loaded, _ = load_model(str(tmp_path / "run"), backend="reference")
    with torch.no_grad():
        assert torch.allclose(loaded(input_ids=token_batch).logits, ref, atol=1e-4)


def test_errors():
    with pytest.raises(CompactLMError, match="static"):
        prepare_qat(tiny_model("llama"), "w8a8")
    with pytest.raises(CompactLMError, match="twn"):
        prepare_qat(tiny_model("llama"), "w4a16", quantizer="twn")
    with pytest.raises(CompactLMError, match="quantizer"):
        prepare_qat(tiny_model("llama"), "w4a16", quantizer="foo")
    m = prepare_qat(tiny_model("llama"), "w4a16")
    with pytest.raises(CompactLMError, match="already"):
        prepare_qat(m, "w4a16")
