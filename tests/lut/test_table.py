"""Table conversion, baseline, fit quality and monotonicity."""

import pytest
import torch

from compactlm.errors import CompactLMError
from compactlm.lut.fit import fit_lut, network_from_meta
from compactlm.lut.functions import TARGETS, get_target
from compactlm.lut.table import LUT, from_network, table_error, uniform_lut


def _dense(lo=-50.0, hi=50.0, n=200_001):
    return torch.linspace(lo, hi, n, dtype=torch.float64)


@pytest.mark.parametrize("seed", range(5))
def test_random_network_converts_exactly(seed):
    g = torch.Generator().manual_seed(seed)
    units = 15
    w = torch.randn(units, generator=g, dtype=torch.float64)
    w[3] = 0.0  # a constant unit folds into c
    b = torch.randn(units, generator=g, dtype=torch.float64) * 3
    m = torch.randn(units, generator=g, dtype=torch.float64)
    c = 0.7
    table = from_network(w, b, m, c, "gelu", -8, 8)
    assert table.entries == units  # one breakpoint fewer for the w=0 unit
    x = _dense()
    net = torch.relu(x[:, None] * w + b) @ m + c
    assert torch.allclose(table(x), net, atol=1e-10, rtol=0)


@pytest.mark.parametrize("fn", list(TARGETS))
def test_fitted_table_equals_its_network_on_dense_points(tables16, fn):
    table = tables16[fn]
    assert table.entries == 16 and table.method == "nn-lut"
    net = network_from_meta(table)
    x = _dense(table.lo - 10, table.hi + 10)
    with torch.no_grad():
        assert torch.allclose(table(x), net(x), atol=1e-10, rtol=0)


def test_breakpoints_and_buckets():
    table = LUT("f", (0.0, 1.0), (1.0, 2.0, 3.0), (0.0, 0.0, -1.0), -1.0, 2.0)
    x = torch.tensor([-1.0, 0.0, 0.5, 1.0, 2.0])
    assert table.bucket(x).tolist() == [0, 1, 1, 2, 2]  # a breakpoint starts its right segment
    assert table(x).tolist() == [-1.0, 0.0, 1.0, 2.0, 5.0]


@pytest.mark.parametrize("fn", list(TARGETS))
def test_nn_lut_beats_uniform_at_16_entries(tables16, fn):
    t = get_target(fn)
    nn_err = table_error(tables16[fn], t.fn)
    uni_err = table_error(uniform_lut(t.fn, 16, t.lo, t.hi, fn), t.fn)
    assert nn_err["max_abs_err"] < uni_err["max_abs_err"]
    assert nn_err["mean_abs_err"] < uni_err["mean_abs_err"]


def test_more_entries_fit_better():
    errs = [table_error(fit_lut("gelu", n, steps=0), get_target("gelu").fn)["max_abs_err"] for n in (8, 16, 32)]
    assert errs[0] > errs[1] > errs[2]
    assert errs[1] < 1e-2


def test_uniform_interpolates_at_knots():
    t = get_target("exp")
    table = uniform_lut(t.fn, 8, t.lo, t.hi, "exp")
    knots = torch.linspace(t.lo, t.hi, 9, dtype=torch.float64)
    assert torch.allclose(table(knots), torch.exp(knots), atol=1e-12)
    assert table.method == "uniform" and table.entries == 8


@pytest.mark.parametrize("fn", [f for f, t in TARGETS.items() if t.monotone])
def test_tables_monotone_where_function_is(tables16, fn):
    t = get_target(fn)
    x = torch.linspace(t.lo, t.hi, 20001, dtype=torch.float64)
    for table in (tables16[fn], uniform_lut(t.fn, 16, t.lo, t.hi, fn), fit_lut(fn, 8, steps=0)):
        dy = torch.diff(table(x)) * t.monotone
        assert float(dy.min()) >= -1e-12, (fn, table.method)


def test_fit_is_deterministic_and_config_is_recorded():
    a, b = fit_lut("silu", 8, steps=20, seed=3), fit_lut("silu", 8, steps=20, seed=3)
    assert a == b
    assert a.meta["fit"]["steps"] == 20 and a.meta["mse"] >= 0


def test_dict_round_trip(tables16):
    t = tables16["rsqrt"]
    assert LUT.from_dict(t.to_dict()) == t


def test_bad_inputs_raise_user_errors():
    with pytest.raises(CompactLMError, match="--fn"):
        fit_lut("tanh")
    with pytest.raises(CompactLMError, match="--entries"):
        fit_lut("gelu", 1)
    with pytest.raises(CompactLMError, match="sorted"):
        LUT("f", (1.0, 0.0), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), 0, 1)
    with pytest.raises(CompactLMError, match="N-1 breakpoints"):
        LUT("f", (0.0,), (1.0,), (0.0,), 0, 1)
    with pytest.raises(CompactLMError, match="not a compactlm LUT"):
        LUT.from_dict({"fn": "gelu"})
