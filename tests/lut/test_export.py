"""JSON and fixed-point tables: round trips, stated error bound, use inside a model."""

import pytest
import torch

from compactlm.errors import CompactLMError
from compactlm.io import read_json
from compactlm.lut.apply import apply_luts
from compactlm.lut.export import (
    FixedPointLUT,
    default_luts,
    fixed_point_bound,
    fixed_point_error,
    load_luts,
    save_luts,
    to_fixed_point,
)
from compactlm.lut.functions import TARGETS
from compactlm.lut.table import uniform_lut
from compactlm.models.tiny import tiny_model


def test_float_round_trip_is_exact(tables16, tmp_path):
    paths = save_luts(tmp_path, tables16, fixed_bits=16)
    assert len(paths) == 2 * len(tables16)
    back = load_luts(tmp_path)
    assert back == tables16
    x = torch.linspace(-20, 20, 10001, dtype=torch.float64)
    for f in tables16:
        assert torch.equal(back[f](x), tables16[f](x))


@pytest.mark.parametrize("bits", [8, 12, 16])
def test_fixed_point_round_trip_and_stated_bound(tables16, tmp_path, bits):
    save_luts(tmp_path, tables16, fixed_bits=bits)
    fixed = load_luts(tmp_path, fixed_bits=bits)
    assert set(fixed) == set(tables16)
    for f, table in tables16.items():
        q = fixed[f]
        assert isinstance(q, FixedPointLUT) and q == to_fixed_point(table, bits)
        d = read_json(tmp_path / f"{f}.q{bits}.json")
        lim = 2 ** (bits - 1)
        assert all(-lim <= v < lim for k in ("breakpoints", "slopes", "intercepts") for v in d[k])
        assert d["q_formats"]["output"] == f"Q{bits - 1 - q.out_frac}.{q.out_frac}"
        for t in (table, uniform_lut(TARGETS[f].fn, 16, table.lo, table.hi, f)):
            qt = to_fixed_point(t, bits)
            err = fixed_point_error(t, qt)
            assert err["added_max_abs_err"] <= fixed_point_bound(qt), (f, t.method, bits)
    if bits == 16:  # the 16-bit integer tables add little to the approximation error
        for f, table in tables16.items():
            assert fixed_point_bound(fixed[f]) < 3e-3


def test_fixed_point_output_does_not_saturate_inside_interval(tables16):
    q = to_fixed_point(tables16["gelu"], 16)
    y = q(torch.tensor([8.0, 7.5, -8.0], dtype=torch.float64))
    assert abs(float(y[0]) - 8.0) < 1e-2 and abs(float(y[1]) - 7.5) < 1e-2


def test_integer_evaluation_is_integer(tables16):
    q = to_fixed_point(tables16["exp"], 12)
    x_q = q.quantize_input(torch.linspace(-16, 0, 101))
    y_q = q.evaluate_int(x_q)
    assert x_q.dtype == torch.int64 and y_q.dtype == torch.int64
    assert int(y_q.max()) < 2 ** 11


def test_fixed_point_tables_drive_a_model(tables16, token_batch):
    model = tiny_model("bert")
    fixed = {f: to_fixed_point(t, 16) for f, t in tables16.items()}
    with torch.no_grad():
        ref = model(input_ids=token_batch).logits
        with apply_luts(model, fixed) as h:
            out = model(input_ids=token_batch).logits
        assert h.replaced == {"gelu": 2, "layernorm": 5, "softmax": 2}
    assert float((out - ref).abs().max()) < 0.05 and not torch.equal(out, ref)


def test_load_errors(tmp_path):
    with pytest.raises(CompactLMError, match="does not exist"):
        load_luts(tmp_path / "missing")
    (tmp_path / "other.json").write_text("{}")
    with pytest.raises(CompactLMError, match="no float tables"):
        load_luts(tmp_path)
    with pytest.raises(CompactLMError, match="no fixed-point tables"):
        load_luts(tmp_path, fixed_bits=16)
    with pytest.raises(CompactLMError, match="--bits"):
        to_fixed_point(uniform_lut(torch.exp, 4, -1, 0, "exp"), 2)


def test_default_tables_are_cached(tmp_cache):
    a = default_luts(("reciprocal",), entries=4)
    files = list((tmp_cache / "lut").glob("reciprocal-n4-*.json"))
    assert len(files) == 1
    assert default_luts(("reciprocal",), entries=4) == a
