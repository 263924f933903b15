import pytest
import torch

from compactlm.errors import CompactLMError
from compactlm.quant import (
    ActQuantizer,
    QuantizedWeight,
    QuantLinear,
    fake_quant,
    minmax_qparams,
    qrange,
    round_ste,
    weight_qparams,
)


@pytest.mark.parametrize("bits,sym", [(2, False), (3, False), (4, False), (4, True), (8, True), (8, False)])
@pytest.mark.parametrize("group", [None, 16])
def test_codes_lie_on_the_grid_and_error_is_bounded(bits, sym, group):
    w = torch.randn(12, 64)
    scale, zp = weight_qparams(w, bits, group, sym)
    qw = QuantizedWeight.from_float(w, scale, zp, bits, group, sym)
    qw.validate()
    qmin, qmax = qrange(bits, sym)
    assert qw.int_weight.min() >= qmin and qw.int_weight.max() <= qmax
    n_groups = 1 if group is None else 64 // group
    assert qw.scale.shape == (12, n_groups) and qw.zero_point.shape == (12, n_groups)
    # min/max range covers every weight, so rounding error is at most half a step
    err = (qw.dequantize() - w).abs()
    step = qw.scale.repeat_interleave(qw.group_size, dim=1)
    assert torch.all(err <= step / 2 + 1e-6)


def test_groups_get_their_own_ranges():
    w = torch.cat([torch.randn(4, 32) * 0.01, torch.randn(4, 32) * 10], dim=1)
    s, _ = weight_qparams(w, 4, 32, False)
    assert torch.all(s[:, 1] > 100 * s[:, 0])


def test_lp_clip_search_never_worse_than_minmax_in_lp():
    torch.manual_seed(1)
    w = torch.randn(32, 128)
    w[0, 0] = 12.0  # an outlier that min/max wastes range on
    errs = {}
    for clip in ("minmax", "lp"):
        s, z = weight_qparams(w, 3, None, False, clip=clip)
        qw = QuantizedWeight.from_float(w, s, z, 3, None, False)
        errs[clip] = (qw.dequantize() - w).abs().pow(2.4).sum(dim=1)
    assert torch.all(errs["lp"] <= errs["minmax"] + 1e-4)
    assert errs["lp"].sum() < errs["minmax"].sum()


def test_group_size_must_divide_input_width():
    with pytest.raises(CompactLMError, match="group size 48 does not divide the input width 64"):
        weight_qparams(torch.randn(4, 64), 4, 48, False)


def test_round_ste_passes_gradients_straight_through():
    x = torch.tensor([0.2, 1.7, -2.4], requires_grad=True)
    y = round_ste(x)
    y.sum().backward()
    assert torch.equal(y, torch.tensor([0.0, 2.0, -2.0]))
    assert torch.equal(x.grad, torch.ones(3))


def test_fake_quant_matches_quantize_dequantize_and_symmetric_zero_point():
    x = torch.linspace(-3, 5, 101)
    s, z = minmax_qparams(x.min(), x.max(), 4, symmetric=True)
    assert float(z) == 0.0
    y = fake_quant(x, s, z, 4, True)
    assert len(torch.unique(y)) <= 16


def test_per_token_activation_quantizer_uses_each_rows_range():
    q = ActQuantizer(8, "token")
    x = torch.stack([torch.linspace(-1, 1, 64), torch.linspace(-100, 100, 64)])
    y = q(x)
    assert (y[0] - x[0]).abs().max() < 0.01  # small row not crushed by the big one
    assert (y[1] - x[1]).abs().max() < 0.5


def test_static_quantizer_calibrates_then_freezes():
    q = ActQuantizer(8, "tensor", static=True)
    with pytest.raises(CompactLMError, match="calibration"):
        q(torch.randn(3))
    q.start_observing()
    x = torch.randn(4, 16)
    assert torch.equal(q(x), x)
    q.finish_observing()
    assert q.calibrated
    y = q(torch.full((2,), 1e6))  # out-of-range inputs clamp to the calibrated range
    assert torch.all(y <= x.max() + q.scale)


def test_quant_linear_matches_dequantized_matmul():
    w = torch.randn(6, 32)
    s, z = weight_qparams(w, 4, 8, False)
    qw = QuantizedWeight.from_float(w, s, z, 4, 8, False)
    layer = QuantLinear(qw, torch.randn(6))
    x = torch.randn(3, 32)
    assert torch.allclose(layer(x), x @ qw.dequantize().T + layer.bias, atol=1e-5)


def test_quant_linear_cache_follows_in_place_grid_changes():
    from compactlm.ptq.rtn import quantize_weight_rtn
    from compactlm.quant import QuantLinear
    from compactlm.quant.scheme import QuantScheme

    torch.manual_seed(0)
    w = torch.randn(8, 16)
    scheme = QuantScheme.parse("w4a16")
    q = QuantLinear(quantize_weight_rtn(w, scheme))
    x = torch.randn(3, 16)
    y0 = q(x)
    assert torch.equal(q(x), y0)
    q.weight_scale.mul_(2)  # in-place edit of the grid must not serve a stale weight
    assert torch.allclose(q(x), 2 * y0, atol=1e-5)
    q.int_weight = q.int_weight.clone().fill_(q.int_weight.max())  # replaced buffer
    assert torch.allclose(q(x), torch.nn.functional.linear(x, q.qweight.dequantize(x.dtype)))


def test_signed_max_matches_the_gguf_packages_q4_0_quantizer():
    """RTN with clip="signed-max" chooses llama.cpp's Q4_0 codes and scales (gguf's numpy reference)."""
    import numpy as np
    from gguf import GGMLQuantizationType
    from gguf.quants import quantize as gguf_quantize

    from compactlm.quant.qweight import QuantizedWeight

    torch.manual_seed(0)
    w = torch.randn(16, 256)
    scale, zp = weight_qparams(w, 4, 32, True, clip="signed-max")
    qw = QuantizedWeight.from_float(w, scale, zp, 4, 32, True)
    blocks = gguf_quantize(w.numpy(), GGMLQuantizationType.Q4_0).reshape(16, 8, 18)  # (rows, blocks, 2 + 16)
    d_ref = blocks[..., :2].copy().view(np.float16)[..., 0]
    nib = blocks[..., 2:]
    codes_ref = np.concatenate([nib & 15, nib >> 4], axis=-1).astype(np.int32) - 8  # (rows, blocks, 32)
    np.testing.assert_array_equal(scale.numpy().astype(np.float16), d_ref)
    same = (qw.int_weight.reshape(16, 8, 32).numpy() == codes_ref).mean()
    assert same > 0.999  # only exact half-way ties may round differently (trunc(x + 8.5) vs round-half-even)
    # the element of largest magnitude of every group sits on the -8 code; min/max never uses it
    wg = w.reshape(16, 8, 32)
    idx = wg.abs().argmax(-1, keepdim=True)
    assert (qw.int_weight.reshape(16, 8, 32).gather(-1, idx) == -8).all()
    s_mm, z_mm = weight_qparams(w, 4, 32, True)
    err = lambda s, z: (QuantizedWeight.from_float(w, s, z, 4, 32, True).dequantize() - w).pow(2).mean()  # noqa: E731
    assert err(scale, zp) < err(s_mm, z_mm)


def test_signed_max_refuses_asymmetric_grids():
    with pytest.raises(CompactLMError, match="signed-max.*symmetric"):
        weight_qparams(torch.randn(4, 32), 4, 32, False, clip="signed-max")


# ----------------------------------------------------------------------------- 2-D clip search (issue 14)


@pytest.mark.parametrize("bits, group_size", [(3, None), (4, None), (2, 16), (3, 32)])
@pytest.mark.parametrize("seed", range(4))
def test_lp2d_is_never_worse_than_minmax_or_the_1d_search(bits, group_size, seed):
    from compactlm.quant.primitives import lp_error, to_groups

    g = torch.Generator().manual_seed(seed)
    # heavy-tailed, skewed rows (where a shifted zero point pays) and a constant row
    w = torch.randn(24, 64, generator=g).exp() - torch.rand(24, 1, generator=g) * 2  # log-normal, shifted
    w[0] = 0.5
    wg = to_groups(w, group_size)
    errs = {}
    for clip in ("minmax", "lp", "lp2d"):
        s, z = weight_qparams(w, bits, group_size, False, clip=clip)
        errs[clip] = lp_error(wg, s, z, bits, False)
    assert (errs["lp2d"] <= errs["lp"]).all() and (errs["lp"] <= errs["minmax"]).all()
    assert (errs["lp2d"] < errs["lp"]).any()  # the zero-point shift finds something on skewed rows


@pytest.mark.parametrize("bits", [2, 3])
def test_lp2d_pruning_finds_the_unpruned_optimum(bits):
    from compactlm.quant.primitives import _lp_search_1d, _lp_search_2d, _lp_search_2d_reference, to_groups

    wg = to_groups(torch.randn(16, 48, generator=torch.Generator().manual_seed(3)) ** 3, None)
    _, _, ref = _lp_search_2d_reference(wg, bits, 2.4, 100)
    s1, z1, e1 = _lp_search_1d(wg, bits, False, 2.4, 100, 0.8)
    _, _, best = _lp_search_2d(wg, bits, 2.4, 100, s1, z1, e1)
    assert torch.allclose(best, torch.minimum(ref, e1), rtol=1e-5, atol=0)


def test_lp2d_on_a_symmetric_grid_is_the_1d_search():
    w = torch.randn(8, 32, generator=torch.Generator().manual_seed(0))
    for a, b in zip(weight_qparams(w, 4, None, True, clip="lp2d"), weight_qparams(w, 4, None, True, clip="lp")):
        assert torch.equal(a, b)


def test_lp2d_is_available_to_rtn_and_reconstruction():
    from compactlm.ptq.engine import ReconstructionConfig
    from compactlm.ptq.rtn import RTNConfig, quantize_weight_rtn
    from compactlm.quant.scheme import parse_scheme

    ReconstructionConfig(clip="lp2d").check()
    w = torch.randn(8, 32, generator=torch.Generator().manual_seed(0))
    q = quantize_weight_rtn(w, parse_scheme("w3a16"), RTNConfig(clip="lp2d"))
    s, z = weight_qparams(w, 3, None, False, clip="lp2d")
    assert torch.equal(q.scale, s) and torch.equal(q.zero_point.float(), z)


def test_round_ste_fused_matches_round_ste_in_values_and_gradient():
    from compactlm.quant.primitives import round_ste, round_ste_fused

    x = (torch.randn(1000, generator=torch.Generator().manual_seed(0)) * 7).requires_grad_(True)
    a, b = round_ste(x), round_ste_fused(x)
    assert torch.equal(a, b)
    up = torch.randn(1000)
    ga, = torch.autograd.grad((a * up).sum(), x)
    gb, = torch.autograd.grad((b * up).sum(), x)
    assert torch.equal(ga, gb)


@pytest.mark.parametrize("symmetric,base", [(True, "signed-max"), (False, "minmax")])
def test_act_mse_never_worse_than_its_start_on_the_weighted_objective(symmetric, base):
    """``clip="act-mse"`` minimises sum_j E[x_j^2] (w_j - Q(w_j))^2 per group: never above the
    signed-max / min-max scale it starts from, and below it for skewed column weights."""
    from compactlm.quant.primitives import dequantize, quantize, to_groups

    g = torch.Generator().manual_seed(3)
    w = torch.randn(48, 96, generator=g)
    col = torch.rand(96, generator=g) ** 4 * 10  # a few columns matter most, as activation outliers do

    def objective(scale, zp):
        wg, s, z = to_groups(w, 32), scale[..., None], zp[..., None]
        err = (dequantize(quantize(wg, s, z, 4, symmetric), s, z) - wg) ** 2
        return (to_groups(col[None], 32)[0][None] * err).sum(-1)  # (C_out, n_groups)

    start = objective(*weight_qparams(w, 4, 32, symmetric, clip=base))
    ours = objective(*weight_qparams(w, 4, 32, symmetric, clip="act-mse", col_weight=col))
    assert (ours <= start * (1 + 1e-6)).all()
    assert ours.sum() < 0.9 * start.sum()


def test_act_mse_needs_column_weights():
    with pytest.raises(CompactLMError, match="act-mse.*calibration"):
        weight_qparams(torch.randn(4, 32), 4, 32, True, clip="act-mse")
    with pytest.raises(CompactLMError, match="act-mse"):
        weight_qparams(torch.randn(4, 32), 4, 32, True, clip="act-mse", col_weight=torch.ones(16))
