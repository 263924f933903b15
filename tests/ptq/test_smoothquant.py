"""SmoothQuant: FP outputs unchanged by the migration, activation ranges flattened, method registered."""

import pytest
import torch

from compactlm.api import quantize
from compactlm.errors import CompactLMError
from compactlm.models.specs import get_blocks, get_module, get_spec
from compactlm.models.tiny import tiny_model
from compactlm.ptq.smoothquant import collect_input_absmax, smooth_model, smoothing_factors
from compactlm.quant.linear import QuantLinear


def _randomize_norms(model):
    """Tiny models start with identity norms; give them random affine parameters (and outlier channels)."""
    g = torch.Generator().manual_seed(1)
    spec = get_spec(model)
    with torch.no_grad():
        for block in get_blocks(model):
            for norm_name, _ in spec.norm_linears:
                norm = get_module(block, norm_name)
                c = norm.weight.numel()
                norm.weight.add_(0.3 * torch.randn(c, generator=g))
                norm.weight[:3].mul_(8.0)  # outlier channels, as in real LLMs
                if getattr(norm, "bias", None) is not None:
                    norm.bias.add_(0.1 * torch.randn(c, generator=g))
    return model


@pytest.mark.parametrize("model_type", ["llama", "gpt2", "gemma3_text", "opt", "qwen2"])
def test_smoothing_keeps_fp_outputs(model_type, token_batch):
    model = _randomize_norms(tiny_model(model_type))
    with torch.no_grad():
        ref = model(input_ids=token_batch).logits
    spec = get_spec(model)
    before = collect_input_absmax(model, token_batch, spec)
    report = smooth_model(model, token_batch, alpha=0.5)
    with torch.no_grad():
        out = model(input_ids=token_batch).logits
    assert report["smoothed_pairs"] == 2 * len(spec.norm_linears)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    # The migration must actually have changed something: per-channel activation ranges get flatter.
    after = collect_input_absmax(model, token_batch, spec)
    key = (0, spec.norm_linears[0][0])
    ratio = lambda m: float(m.max() / m.median())  # noqa: E731
    assert ratio(after[key]) < ratio(before[key])


def test_smoothing_factors_formula():
    act = torch.tensor([4.0, 1.0, 0.0])
    w1 = torch.tensor([[1.0, 2.0, 1.0]])
    w2 = torch.tensor([[-4.0, 0.5, 1.0]])
    s = smoothing_factors(act, [w1, w2], alpha=0.5)
    # max|W| per column = [4, 2, 1]; s = sqrt(act) / sqrt(max|W|); silent channel keeps 1.
    torch.testing.assert_close(s, torch.tensor([1.0, (1.0 / 2.0) ** 0.5, 1.0]))


def test_smoothquant_method_quantizes(token_batch):
    model = _randomize_norms(tiny_model("llama"))
    report = quantize(model, "smoothquant", "w8a8", calib=token_batch, alpha=0.6)
    assert report["static_act_quantizers"] > 0
    # alpha reached the migration: the factors are those of alpha 0.6, not of the default 0.5
    at = {a: smooth_model(_randomize_norms(tiny_model("llama")), token_batch, alpha=a) for a in (0.5, 0.6)}
    assert report["smooth_scale_max"] == at[0.6]["smooth_scale_max"] != at[0.5]["smooth_scale_max"]
    assert any(isinstance(m, QuantLinear) for m in model.modules())
    assert torch.isfinite(model(input_ids=token_batch).logits).all()


def test_smoothquant_bad_input(token_batch):
    model = tiny_model("llama")
    with pytest.raises(CompactLMError, match="alpha"):
        smooth_model(model, token_batch, alpha=1.5)
    with pytest.raises(CompactLMError, match="calibration"):
        quantize(model, "smoothquant", "w8a8", calib=None)
    quantize(model, "rtn", "w4a16")
    with pytest.raises(CompactLMError, match="before quantizing"):
        smooth_model(model, token_batch)
    with pytest.raises(CompactLMError, match="post-norm"):
        smooth_model(tiny_model("bert"), token_batch)


def test_smoothquant_refuses_post_norm_opt(token_batch):
    model = _randomize_norms(tiny_model("opt", do_layer_norm_before=False))
    with torch.no_grad():
        ref = model(input_ids=token_batch).logits
    with pytest.raises(CompactLMError, match=r"smoothquant: this OPT model is post-norm \(do_layer_norm_before=False\)") as e:
        quantize(model, "smoothquant", "w8a8", calib=token_batch)
    assert "\n" not in str(e.value)
    with torch.no_grad():  # refused before touching the model
        assert torch.equal(model(input_ids=token_batch).logits, ref)
