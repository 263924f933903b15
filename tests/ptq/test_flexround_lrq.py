"""FlexRound and LRQ quantizers and methods (tiny random models)."""

from pathlib import Path

import pytest
import torch

from compactlm.api import quantize
from compactlm.errors import CompactLMError
from compactlm.models.tiny import tiny_model
from compactlm.ptq.flexround import FlexRoundQuantizer
from compactlm.ptq.lrq import LRQConfig, LRQQuantizer
from compactlm.ptq.rtn import RTNConfig, quantize_weight_rtn
from compactlm.quant.activation import act_quantizer_for
from compactlm.quant.linear import QuantLinear
from compactlm.quant.primitives import qrange
from compactlm.quant.scheme import parse_scheme


@pytest.fixture
def calib():
    return torch.randint(2, 128, (4, 24), generator=torch.Generator().manual_seed(1))


def _qlinears(model):
    return {n: m for n, m in model.named_modules() if isinstance(m, QuantLinear)}


def _paired(a, b):
    """``(name, qa, qb)`` for the QuantLinears of two models, which must be the same non-empty set."""
    qa, qb = _qlinears(a), _qlinears(b)
    assert qa and qa.keys() == qb.keys()
    return [(n, qa[n], qb[n]) for n in qa]


@pytest.mark.parametrize("scheme", ["w4a16", "w3a16-g16", "w8a8", "w2a16-g32"])
@pytest.mark.parametrize("clip", ["minmax", "lp"])
def test_zero_initialised_quantizers_are_rtn(scheme, clip):
    s = parse_scheme(scheme)
    w = torch.randn(48, 64)
    rtn = quantize_weight_rtn(w, s, RTNConfig(clip=clip))
    for quantizer in (FlexRoundQuantizer(w, s, clip), LRQQuantizer(w, s, rank=8, clip=clip)):
        baked = quantizer.to_qweight(w)
        assert torch.equal(baked.int_weight, rtn.int_weight)
        assert torch.equal(baked.scale, rtn.scale)
        assert torch.equal(baked.zero_point, rtn.zero_point)
        assert torch.equal(quantizer(w), rtn.dequantize())


@pytest.mark.parametrize("method", ["flexround", "lrq"])
@pytest.mark.parametrize("model_type", ["llama", "gpt2"])
def test_zero_iterations_equal_rtn_model(method, model_type, calib):
    ours, ref = tiny_model(model_type), tiny_model(model_type)
    quantize(ours, method, "w4a16", calib=calib, iters=0)
    quantize(ref, "rtn", "w4a16")
    for n, a, b in _paired(ours, ref):
        assert torch.equal(a.int_weight, b.int_weight) and torch.equal(a.weight_scale, b.weight_scale), n
    with torch.no_grad():
        assert torch.equal(ours(input_ids=calib).logits, ref(input_ids=calib).logits)


@pytest.mark.parametrize("method", ["flexround", "lrq"])
def test_trained_weights_lie_on_the_grid(method, calib):
    model = tiny_model("llama")
    quantize(model, method, "w3a16-g32", calib=calib, iters=10, lr=3e-2)
    rtn = tiny_model("llama")
    quantize(rtn, "rtn", "w3a16-g32")
    changed = 0
    for name, q, r in _paired(model, rtn):
        qw = q.qweight
        qw.validate()
        qmin, qmax = qrange(3, False)
        assert qw.int_weight.min() >= qmin and qw.int_weight.max() <= qmax
        assert torch.equal(q.weight, (qw.int_weight.float() - qw.zero_point.repeat_interleave(32, 1)) *
                           qw.scale.repeat_interleave(32, 1))
        assert torch.equal(qw.zero_point, r.weight_zero_point), name  # zero point fixed after init
        changed += int((q.int_weight != r.int_weight).sum())
    assert changed > 0  # learning moved some weights to another integer


@pytest.mark.parametrize("scheme", ["w4a16", "w3a16-g16", "w4a16-sym"])
def test_trained_quantizer_forward_matches_baked_grid(scheme):
    """Bit for bit: the engine computes the next block's input with the trained quantizer's forward."""
    s = parse_scheme(scheme)
    w = torch.randn(32, 64)
    for q in (LRQQuantizer(w, s, rank=4, generator=torch.Generator().manual_seed(0)), FlexRoundQuantizer(w, s)):
        with torch.no_grad():
            for p in q.parameters():
                p.normal_(std=0.1)
        assert torch.equal(q(w), q.to_qweight(w).dequantize())


GOLDEN = Path(__file__).parent / "data" / "log_scale_rounding_golden.safetensors"


def _golden_cases():
    from safetensors.torch import load_file

    cases: dict[str, dict] = {}
    for key, value in load_file(GOLDEN).items():
        case, name = key.split("|")
        cases.setdefault(case, {})[name] = value
    return cases


@pytest.mark.parametrize("case", sorted(_golden_cases()))
def test_quantizers_match_golden_values_of_the_previous_implementation(case):
    """FlexRound / LRQ as WeightQuantizers (W passed in, not stored) give the same Ŵ, gradients and
    baked grid as before the move, bit for bit; the golden file was produced by the implementation
    of commit c2d817d (quantizer holding W, ``forward()`` / ``bake()``) with fixed seeds."""
    g = _golden_cases()[case]
    method, scheme, clip = case.split("/")
    w, s = g["w"], parse_scheme(scheme)
    q = FlexRoundQuantizer(w, s, clip) if method == "flexround" else LRQQuantizer(w, s, rank=3, clip=clip)
    with torch.no_grad():
        for name, p in q.named_parameters():
            p.copy_(g[f"param.{name}"])
    w_hat = q(w)
    (w_hat * g["upstream"]).sum().backward()
    assert torch.equal(w_hat, g["w_hat"])
    for name, p in q.named_parameters():
        assert torch.equal(p.grad, g[f"grad.{name}"]), name
    baked = q.to_qweight(w)
    for name in ("int_weight", "scale", "zero_point"):
        assert torch.equal(getattr(baked, name), g[name]), name
    assert not torch.equal(baked.int_weight, quantize_weight_rtn(w, s, RTNConfig(clip=clip)).int_weight)  # not RTN


def test_reconstruction_trains_the_one_fake_quant_linear(calib, monkeypatch):
    """During reconstruction every block linear is quant.fake.FakeQuantLinear around the method's
    quantizer; W stays frozen and the optimiser gets the quantizer's parameters only."""
    from compactlm.ptq import engine
    from compactlm.quant.fake import FakeQuantLinear

    seen = []
    real_train = engine._train_block

    def spy(runner, index, n_blocks, block, params, *args, **kwargs):
        fq = [m for m in block.modules() if isinstance(m, FakeQuantLinear)]
        quantizer_params = {id(p) for m in fq for p in m.weight_quantizer.parameters()}
        seen.append((len(fq), all(not m.weight.requires_grad for m in fq), {id(p) for p in params} == quantizer_params,
                     all(isinstance(m.weight_quantizer, LRQQuantizer) for m in fq)))
        return real_train(runner, index, n_blocks, block, params, *args, **kwargs)

    monkeypatch.setattr(engine, "_train_block", spy)
    model = tiny_model("llama")
    quantize(model, "lrq", "w4a16", calib=calib, iters=1)
    assert seen == [(7, True, True, True)] * 2
    assert not any(isinstance(m, FakeQuantLinear) for m in model.modules())  # all deployed as QuantLinear


def test_learned_parameter_counts(calib):
    flex, lrq = tiny_model("llama"), tiny_model("llama")
    rf = quantize(flex, "flexround", "w4a16", calib=calib, iters=1)
    rl = quantize(lrq, "lrq", "w4a16", calib=calib, iters=1, rank=4)
    # llama tiny block: q,o 64x64; k,v 32x64; gate,up 128x64; down 64x128 (per channel: 1 group)
    shapes = [(64, 64), (32, 64), (32, 64), (64, 64), (128, 64), (128, 64), (64, 128)]
    per_block_flex = sum(o * i + o + o for o, i in shapes)
    per_block_lrq = sum(4 * (o + i) + o + i + o for o, i in shapes)
    assert rf["learned_params"] == 2 * per_block_flex
    assert rl["learned_params"] == 2 * per_block_lrq
    assert rl["learned_params"] < rf["learned_params"]


def test_default_rank_is_a_quarter_of_the_smaller_side():
    assert LRQConfig().rank_for(1536, 576) == 144
    assert LRQConfig(rank_ratio=0.5).rank_for(32, 64) == 16
    assert LRQConfig(rank=7).rank_for(32, 64) == 7


def test_rank_larger_than_the_matrix_is_rejected(calib):
    with pytest.raises(CompactLMError, match="--rank"):
        quantize(tiny_model("llama"), "lrq", "w4a16", calib=calib, rank=65)
    with pytest.raises(CompactLMError, match="--rank-ratio"):
        quantize(tiny_model("llama"), "lrq", "w4a16", calib=calib, rank_ratio=1.5)


def test_rank_too_large_for_one_linear_fails_before_any_change(calib):
    """The check runs over every linear first: no block is half-quantized (nor smoothed) on error."""
    model = tiny_model("llama")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    sides = sorted({min(m.weight.shape) for m in model.modules() if isinstance(m, torch.nn.Linear)})
    with pytest.raises(CompactLMError, match=r"--rank \d+ is outside .* block 0"):
        quantize(model, "lrq", "w4a16", calib=calib, rank=sides[-1], smooth_alpha=0.5)
    assert not _qlinears(model)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("model_type", ["llama", "gpt2"])
def test_w8a8_static_activations_are_calibrated_and_trained_under(model_type, calib):
    model = tiny_model(model_type)
    report = quantize(model, "lrq", "w8a8", calib=calib, iters=3)
    qls = _qlinears(model)
    assert qls and all(q.input_quantizer.static and q.input_quantizer.calibrated for q in qls.values())
    assert all(q.qweight.symmetric and q.bits == 8 for q in qls.values())
    with torch.no_grad():
        assert torch.isfinite(model(input_ids=calib).logits).all()
    assert report["blocks"][0]["loss_before"] > 0


@pytest.mark.parametrize("model_type", ["llama", "gpt2"])
def test_w4a8_reconstructs_weight_only_then_quantizes_tokens(model_type, calib):
    """LRQ's W4A8 recipe: same grid as W4A16, per-token 8-bit inputs at evaluation."""
    a8, a16 = tiny_model(model_type), tiny_model(model_type)
    quantize(a8, "lrq", "w4a8", calib=calib, iters=3)
    quantize(a16, "lrq", "w4a16", calib=calib, iters=3)
    for n, q8, q16 in _paired(a8, a16):
        assert torch.equal(q8.int_weight, q16.int_weight), n
        assert q8.input_quantizer.granularity == "token" and not q8.input_quantizer.static
        q16.input_quantizer = act_quantizer_for(parse_scheme("w4a8"))
    with torch.no_grad():
        assert torch.equal(a8(input_ids=calib).logits, a16(input_ids=calib).logits)


def test_w4a8_kv8_with_activations_in_reconstruction(calib):
    model = tiny_model("llama")
    quantize(model, "flexround", "w4a8-kv8", calib=calib, iters=2, recon_act_quant=True)
    qls = _qlinears(model)
    assert qls["model.layers.0.self_attn.k_proj"].output_quantizer is not None
    assert qls["model.layers.0.self_attn.q_proj"].output_quantizer is None


@pytest.mark.parametrize("method", ["flexround", "lrq"])
def test_act_mse_init_gets_each_linears_input_second_moment(method, calib, monkeypatch):
    """With ``clip="act-mse"`` the engine hands every quantizer its linear's mean squared input per
    column, measured on the block's calibration inputs; RTN (no calibration) refuses it in one line."""
    from compactlm.ptq import flexround, lrq

    got = []
    for mod, cls in ((flexround, "FlexRoundQuantizer"), (lrq, "FlexRoundQuantizer"), (lrq, "LRQQuantizer")):
        real = getattr(mod, cls)

        class Spy(real):
            def __init__(self, weight, *args, **kwargs):
                col = kwargs.get("col_weight", args[-1] if args else None)
                got.append((tuple(weight.shape), None if col is None else tuple(col.shape),
                            None if col is None else bool((col >= 0).all() and col.sum() > 0)))
                super().__init__(weight, *args, **kwargs)

        monkeypatch.setattr(mod, cls, Spy)
    model = tiny_model("llama")
    report = quantize(model, method, "w4a16-g32-sym", calib=calib, iters=2, clip="act-mse")
    assert len(got) == 14 and all(c == (shape[1],) and ok for shape, c, ok in got), got
    assert all(b["loss_after"] > 0 for b in report["blocks"])
    with pytest.raises(CompactLMError, match="act-mse"):
        quantize(tiny_model("llama"), "rtn", "w4a16-g32-sym", clip="act-mse")
