"""The NN-LUT ablation tables: least squares on uniform breakpoints, and the network before training."""

import pytest
import torch

from compactlm.errors import CompactLMError
from compactlm.lut.fit import FitConfig, fit_lut, initial_lut, initial_network, network_from_meta
from compactlm.lut.functions import TARGETS, get_target
from compactlm.lut.table import lstsq_lut, table_error, uniform_lut


def _dense(lo, hi, n=50_001):
    return torch.linspace(lo, hi, n, dtype=torch.float64)


def test_lstsq_table_of_a_linear_function_is_exact():
    table = lstsq_lut(lambda x: 3.0 * x - 2.0, 8, -1.0, 5.0, name="line")
    assert table.method == "lstsq" and table.entries == 8
    assert torch.allclose(torch.tensor(table.slopes, dtype=torch.float64), torch.full((8,), 3.0, dtype=torch.float64),
                          atol=1e-10, rtol=0)
    x = _dense(-1.0, 5.0)
    assert torch.allclose(table(x), 3.0 * x - 2.0, atol=1e-10, rtol=0)


def test_lstsq_recovers_a_piecewise_linear_function_on_its_knots():
    knots = torch.linspace(-2.0, 2.0, 5, dtype=torch.float64)  # 4 segments: interior knots -1, 0, 1
    values = torch.tensor([0.5, -1.0, 2.0, 2.5, -3.0], dtype=torch.float64)

    def pwl(x):
        k = torch.bucketize(x, knots[1:-1], right=True)
        t = (x - knots[k]) / (knots[k + 1] - knots[k])
        return values[k] * (1 - t) + values[k + 1] * t

    table = lstsq_lut(pwl, 4, -2.0, 2.0, points=4001)
    assert table.breakpoints == pytest.approx([-1.0, 0.0, 1.0])
    assert table.meta["knot_values"] == pytest.approx(values.tolist(), abs=1e-9)
    x = _dense(-2.0, 2.0)
    assert torch.allclose(table(x), pwl(x), atol=1e-9, rtol=0)


@pytest.mark.parametrize("fn", list(TARGETS))
def test_lstsq_has_lower_squared_error_than_interpolation_on_the_same_breakpoints(fn):
    # Same function class (continuous, same knots); least squares is the L2 optimum of it.
    t = get_target(fn)
    x = torch.linspace(t.lo, t.hi, 10_001, dtype=torch.float64)
    uni, lsq = uniform_lut(t.fn, 16, t.lo, t.hi, fn), lstsq_lut(t.fn, 16, t.lo, t.hi, fn)
    assert lsq.breakpoints == pytest.approx(uni.breakpoints)
    mse_uni = float(((uni(x) - t.fn(x)) ** 2).mean())
    mse_lsq = float(((lsq(x) - t.fn(x)) ** 2).mean())
    assert mse_lsq < 0.9 * mse_uni


def test_lstsq_table_is_continuous_at_its_breakpoints():
    t = get_target("gelu")
    table = lstsq_lut(t.fn, 16, t.lo, t.hi, "gelu")
    s, c, d = (torch.tensor(v, dtype=torch.float64) for v in (table.slopes, table.intercepts, table.breakpoints))
    assert torch.allclose(s[:-1] * d + c[:-1], s[1:] * d + c[1:], atol=1e-9, rtol=0)


def test_lstsq_rejects_bad_sizes():
    with pytest.raises(CompactLMError, match="--entries"):
        lstsq_lut(torch.exp, 0, -1.0, 0.0)
    with pytest.raises(CompactLMError, match="points"):
        lstsq_lut(torch.exp, 16, -1.0, 0.0, points=10)


@pytest.mark.parametrize("fn", ["gelu", "exp", "rsqrt"])
def test_initial_table_equals_the_untrained_network(fn):
    t = get_target(fn)
    table = initial_lut(fn, 16)
    assert table.method == "nn-lut-init" and table.entries == 16 and table.meta["fit"]["steps"] == 0
    net, mse = initial_network(t, 16)
    x = _dense(t.lo - 5, t.hi + 5)
    with torch.no_grad():
        assert torch.allclose(table(x), net(x), atol=1e-10, rtol=0)
        assert torch.allclose(network_from_meta(table)(x), net(x), atol=1e-12, rtol=0)
    assert table.meta["mse"] == pytest.approx(mse)


def test_initial_table_is_where_training_starts():
    # Zero Adam steps leave the initial breakpoints; fit_network's final least-squares solve of m, c
    # reproduces the initial output layer, so the two tables agree.
    init, zero = initial_lut("silu", 8), fit_lut("silu", 8, steps=0)
    x = _dense(-8.0, 8.0)
    assert init.breakpoints == pytest.approx(zero.breakpoints, abs=1e-12)
    assert torch.allclose(init(x), zero(x), atol=1e-8, rtol=0)


def test_training_moves_the_breakpoints_and_lowers_the_training_mse():
    init = initial_lut("gelu", 16, FitConfig(seed=0))
    trained = fit_lut("gelu", 16, steps=200)
    assert max(abs(a - b) for a, b in zip(init.breakpoints, trained.breakpoints)) > 1e-3
    assert trained.meta["mse"] < init.meta["mse"]


def test_initial_lut_rejects_too_few_entries():
    with pytest.raises(CompactLMError, match="--entries"):
        initial_lut("gelu", 1)
