"""Operators around the tables: documented out-of-range behaviour, range normalisation, softmax."""

import torch

from compactlm.lut.functions import (
    check_ops,
    lut_activation,
    lut_exp,
    lut_reciprocal,
    lut_rsqrt,
    lut_softmax,
    needed_functions,
)
import pytest

from compactlm.errors import CompactLMError
from compactlm.lut.table import table_error
from compactlm.lut.functions import get_target


@pytest.mark.parametrize("fn", ["gelu", "silu"])
def test_activation_uses_asymptotes_outside_interval(tables16, fn):
    table, f = tables16[fn], get_target(fn).fn
    x = torch.tensor([-1e4, -100.0, -8.5, 8.5, 100.0, 1e4], dtype=torch.float64)
    y = lut_activation(x, table)
    assert y.tolist() == [0.0, 0.0, 0.0, 8.5, 100.0, 1e4]
    # Everywhere on a wide grid the error stays at the in-interval level (plus silu's tail 2.7e-3).
    xs = torch.linspace(-60, 60, 100_001, dtype=torch.float64)
    err = float((lut_activation(xs, table) - f(xs)).abs().max())
    assert err <= 1.01 * max(table_error(table, f)["max_abs_err"], 2.7e-3)  # 1%: different grids


def test_exp_underflows_below_interval_and_is_nonnegative(tables16):
    table = tables16["exp"]
    x = torch.tensor([float("-inf"), -1e30, -16.5, -16.0, -3.0, 0.0])
    y = lut_exp(x, table)
    assert y[:3].tolist() == [0.0, 0.0, 0.0]
    assert (y >= 0).all()
    assert abs(float(y[-1]) - 1.0) < 5e-3 and abs(float(y[-2]) - float(torch.exp(torch.tensor(-3.0)))) < 5e-3


@pytest.mark.parametrize("fn,op,exact", [("reciprocal", lut_reciprocal, torch.reciprocal),
                                          ("rsqrt", lut_rsqrt, torch.rsqrt)])
def test_range_normalisation_covers_every_magnitude(tables16, fn, op, exact):
    table = tables16[fn]
    # Relative error of the table on its interval bounds the relative error everywhere.
    m = torch.linspace(table.lo, table.hi, 200_001, dtype=torch.float64)
    rel_in = float(((table(m) - exact(m)) / exact(m)).abs().max())
    x = torch.logspace(-30, 30, 20001, dtype=torch.float64)
    rel = ((op(x, table) - exact(x)) / exact(x)).abs()
    assert float(rel.max()) <= rel_in * 1.01  # 1%: the grids differ
    # The table only ever sees mantissas inside its interval.
    seen = []
    op(x, lambda v: seen.append(v) or exact(v))
    assert float(seen[0].min()) >= table.lo and float(seen[0].max()) < table.hi


def test_softmax_close_to_exact_and_masked_rows(tables16):
    g = torch.Generator().manual_seed(0)
    s = torch.randn(2, 4, 8, 8, generator=g) * 3
    s[..., 5:] = torch.finfo(s.dtype).min  # masked keys
    s[0, 0, 0] = float("-inf")  # a fully masked row
    p = lut_softmax(s, tables16["exp"], tables16["reciprocal"])
    ref = torch.softmax(s[..., :5], -1)
    assert p[0, 0, 0].abs().max() == 0
    assert (p[..., 5:] == 0).all()
    keep = torch.ones(2, 4, 8, dtype=torch.bool)
    keep[0, 0, 0] = False
    assert float((p[..., :5] - ref)[keep].abs().max()) < 1e-2
    assert float((p.sum(-1)[keep] - 1).abs().max()) < 1e-2


def test_ops_validation():
    assert needed_functions("softmax,layernorm") == ("exp", "reciprocal", "rsqrt")
    assert check_ops(["gelu"]) == ("gelu",)
    with pytest.raises(CompactLMError, match="--ops"):
        check_ops("gelu,tanh")
    with pytest.raises(CompactLMError, match="--ops"):
        check_ops("")
