"""NN-LUT tables on disk: JSON (float) and fixed-point integer tables for hardware.

Float format (``<dir>/<fn>.json``)::

    {"format": "compactlm-lut/float", "fn": "gelu", "method": "nn-lut", "entries": 16,
     "range": [lo, hi], "breakpoints": [N-1 floats], "slopes": [N], "intercepts": [N], "meta": {...}}

Fixed-point format (``<dir>/<fn>.q<bits>.json``): every number is a signed ``bits``-bit integer
``v`` meaning ``v / 2^frac`` (Q-format ``Q<int>.<frac>`` with ``int + frac = bits - 1`` plus sign):

* ``x`` and ``breakpoints`` share one format (``in_frac``), so the bucket search is an integer
  compare; ``in_frac`` is the largest that still holds the interval ``[lo, hi]``;
* ``slopes`` use ``slope_frac``, the largest that holds the largest slope magnitude;
* ``intercepts`` and the output share ``icpt_frac`` (= ``out_frac``), the largest that holds both the
  largest intercept and the largest output on ``[lo, hi]`` (a piecewise-linear function peaks at
  an end or a breakpoint, so these are checked);
* evaluation: ``p = slope_q[k]·x_q`` (a ``2·bits``-bit product with ``slope_frac + in_frac``
  fractional bits) is shifted right with rounding by ``slope_frac + in_frac - icpt_frac`` and
  added to ``intercept_q[k]``; the output has ``out_frac = icpt_frac`` fractional bits
  (saturated to ``bits`` bits). Inputs outside the representable range saturate.

Stated error (:func:`fixed_point_bound`, checked by the tests): on ``[lo, hi]`` the integer table
differs from the float table it came from by at most

    2·S·2^-in_frac + X·2^-slope_frac + 2·2^-out_frac

with ``S`` the largest slope magnitude and ``X = max(|lo|, |hi|) + 2^-in_frac``: input rounding
(``S·2^-(in_frac+1)``), a bucket flip next to a rounded breakpoint (the table is continuous, so at
most ``S·2^-in_frac`` more), slope rounding (≤ one LSB of the slope times ``|x|``), intercept and
product rounding (one LSB and half an LSB of the output). For 16-bit 16-entry tables it is about
2.5e-3 for GELU / SiLU / exp and 5e-4 for 1/x and 1/√x; the measured added error is about a
third of the bound (``bench/results/lut.md``).

``exp``/``reciprocal``/``rsqrt`` keep their float wrappers (underflow to 0, exponent
normalisation = shifts), which are exact in hardware; only the table is fixed point.
:func:`fixed_point_error` measures the error the integer table adds over the float one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from compactlm.errors import CompactLMError
from compactlm.io import read_json, write_json
from compactlm.lut.functions import TARGETS, get_target
from compactlm.lut.table import LUT

log = logging.getLogger(__name__)

FLOAT_FORMAT = "compactlm-lut/float"
FIXED_FORMAT = "compactlm-lut/fixed-point"
_DEFAULTS_VERSION = 1  # bump when the fitting procedure changes, to refresh cached default tables


def _frac_bits(max_abs: float, bits: int) -> int:
    """Largest number of fractional bits whose signed ``bits``-bit range holds ``max_abs``."""
    if max_abs <= 0:
        return bits - 1
    int_bits = max(0, math.floor(math.log2(max_abs)) + 1)
    return bits - 1 - int_bits


def _to_int(values, frac: int, bits: int) -> list[int]:
    q = torch.round(torch.tensor(values, dtype=torch.float64) * 2.0**frac)
    lim = 2 ** (bits - 1)
    return q.clamp(-lim, lim - 1).to(torch.int64).tolist()


@dataclass(frozen=True)
class FixedPointLUT:
    """An integer table (see the module docstring for the arithmetic).

    Attributes:
        bits: Width of every stored integer and of the input / output.
        in_frac, slope_frac, icpt_frac: Fractional bits of input & breakpoints, slopes, intercepts.
        breakpoints, slopes, intercepts: The integer tables (``N-1``, ``N``, ``N``).
    """

    fn: str
    bits: int
    in_frac: int
    slope_frac: int
    icpt_frac: int
    breakpoints: tuple[int, ...]
    slopes: tuple[int, ...]
    intercepts: tuple[int, ...]
    lo: float
    hi: float
    method: str = "nn-lut"
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def entries(self) -> int:
        return len(self.slopes)

    @property
    def out_frac(self) -> int:
        return self.icpt_frac

    def quantize_input(self, x: torch.Tensor) -> torch.Tensor:
        """Float input → saturated ``bits``-bit integers (int64 tensor) with ``in_frac`` fraction bits."""
        lim = 2 ** (self.bits - 1)
        return torch.round(x.to(torch.float64) * 2.0**self.in_frac).clamp(-lim, lim - 1).to(torch.int64)

    def evaluate_int(self, x_q: torch.Tensor) -> torch.Tensor:
        """Integer evaluation: ``x_q`` (int64, ``in_frac``) → ``y_q`` (int64, ``out_frac``), saturated."""
        key = str(x_q.device)
        if key not in self._cache:
            self._cache[key] = tuple(torch.tensor(v, dtype=torch.int64, device=x_q.device)
                                     for v in (self.breakpoints, self.slopes, self.intercepts))
        d, s, t = self._cache[key]
        k = torch.bucketize(x_q, d, right=True)
        prod = s[k] * x_q  # slope_frac + in_frac fractional bits
        shift = self.slope_frac + self.in_frac - self.icpt_frac
        if shift > 0:
            prod = (prod + (1 << (shift - 1))) >> shift  # round half up
        elif shift < 0:
            prod = prod << (-shift)
        lim = 2 ** (self.bits - 1)
        return (prod + t[k]).clamp(-lim, lim - 1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Float in, float out, through the integer arithmetic (usable wherever a :class:`LUT` is)."""
        y = self.evaluate_int(self.quantize_input(x)).to(torch.float64) / 2.0**self.out_frac
        return y.to(x.dtype)

    def to_dict(self) -> dict:
        q = lambda frac: f"Q{self.bits - 1 - frac}.{frac}"  # noqa: E731
        return {
            "format": FIXED_FORMAT,
            "fn": self.fn,
            "method": self.method,
            "entries": self.entries,
            "range": [self.lo, self.hi],
            "bits": self.bits,
            "in_frac": self.in_frac,
            "slope_frac": self.slope_frac,
            "icpt_frac": self.icpt_frac,
            "out_frac": self.out_frac,
            "q_formats": {"input_breakpoints": q(self.in_frac), "slopes": q(self.slope_frac),
                          "intercepts": q(self.icpt_frac), "output": q(self.out_frac)},
            "breakpoints": list(self.breakpoints),
            "slopes": list(self.slopes),
            "intercepts": list(self.intercepts),
        }

    @classmethod
    def from_dict(cls, d: dict) -> "FixedPointLUT":
        try:
            return cls(
                fn=str(d["fn"]), bits=int(d["bits"]), in_frac=int(d["in_frac"]), slope_frac=int(d["slope_frac"]),
                icpt_frac=int(d["icpt_frac"]), breakpoints=tuple(int(v) for v in d["breakpoints"]),
                slopes=tuple(int(v) for v in d["slopes"]), intercepts=tuple(int(v) for v in d["intercepts"]),
                lo=float(d["range"][0]), hi=float(d["range"][1]), method=str(d.get("method", "nn-lut")),
            )
        except (KeyError, TypeError, IndexError, ValueError) as e:
            raise CompactLMError(f"table: not a compactlm fixed-point LUT ({type(e).__name__}: {e})") from e


def to_fixed_point(table: LUT, bits: int = 16) -> FixedPointLUT:
    """Quantise a float table to ``bits``-bit integers (formats chosen as in the module docstring)."""
    if not 4 <= bits <= 32:
        raise CompactLMError(f"--bits: expected 4..32, got {bits}")
    in_frac = _frac_bits(max(abs(table.lo), abs(table.hi)), bits)
    slope_frac = _frac_bits(max(abs(v) for v in table.slopes), bits)
    knots = torch.tensor([table.lo, table.hi, *(d for d in table.breakpoints if table.lo < d < table.hi)],
                         dtype=torch.float64)
    peak = float(table(knots).abs().max())
    icpt_frac = _frac_bits(max(peak, *(abs(v) for v in table.intercepts)), bits)
    return FixedPointLUT(
        fn=table.fn, bits=bits, in_frac=in_frac, slope_frac=slope_frac, icpt_frac=icpt_frac,
        breakpoints=tuple(_to_int(table.breakpoints, in_frac, bits)),
        slopes=tuple(_to_int(table.slopes, slope_frac, bits)),
        intercepts=tuple(_to_int(table.intercepts, icpt_frac, bits)),
        lo=table.lo, hi=table.hi, method=table.method,
    )


def fixed_point_bound(fixed: FixedPointLUT) -> float:
    """Worst-case ``|integer table - float table|`` on ``[lo, hi]`` (derivation in the module docstring)."""
    lsb_in, lsb_slope, lsb_out = (2.0 ** -f for f in (fixed.in_frac, fixed.slope_frac, fixed.out_frac))
    S = max(abs(v) for v in fixed.slopes) * lsb_slope
    X = max(abs(fixed.lo), abs(fixed.hi)) + lsb_in
    return 2 * S * lsb_in + X * lsb_slope + 2 * lsb_out


def fixed_point_error(table: LUT, fixed: FixedPointLUT, points: int = 100_001) -> dict:
    """Errors on a dense grid of the table's interval.

    Returns:
        ``max_abs_err`` / ``mean_abs_err`` of the integer table against the true function and
        ``added_max_abs_err`` / ``added_mean_abs_err`` against the float table it came from.
    """
    f = get_target(table.fn).fn
    x = torch.linspace(table.lo, table.hi, points, dtype=torch.float64)
    y_fixed = fixed(x)
    err, added = (y_fixed - f(x)).abs(), (y_fixed - table(x)).abs()
    return {"max_abs_err": float(err.max()), "mean_abs_err": float(err.mean()),
            "added_max_abs_err": float(added.max()), "added_mean_abs_err": float(added.mean())}


def table_from_dict(d: dict):
    """A :class:`LUT` or :class:`FixedPointLUT` from its JSON dict."""
    return FixedPointLUT.from_dict(d) if d.get("format") == FIXED_FORMAT else LUT.from_dict(d)


def save_luts(out_dir: str | Path, tables: dict, fixed_bits: int | None = 16) -> list[Path]:
    """Write ``<fn>.json`` (float) and, if ``fixed_bits``, ``<fn>.q<bits>.json`` for every table."""
    out_dir = Path(out_dir)
    written = []
    for fn, table in tables.items():
        written.append(write_json(out_dir / f"{fn}.json", {"format": FLOAT_FORMAT, **table.to_dict()}))
        if fixed_bits:
            written.append(write_json(out_dir / f"{fn}.q{fixed_bits}.json", to_fixed_point(table, fixed_bits).to_dict()))
    return written


def load_luts(path: str | Path, fixed_bits: int | None = None) -> dict:
    """Tables from a directory written by :func:`save_luts` (or one JSON file).

    Args:
        fixed_bits: Load the ``<fn>.q<bits>.json`` integer tables instead of the float ones.

    Raises:
        CompactLMError: the path holds no table of the requested kind.
    """
    path = Path(path)
    if path.is_file():
        files = [path]
    elif path.is_dir():
        pattern = f"*.q{fixed_bits}.json" if fixed_bits else "*.json"
        files = sorted(p for p in path.glob(pattern) if fixed_bits or ".q" not in p.name)
    else:
        raise CompactLMError(f"--tables: {path} does not exist (write tables with `compactlm lut fit --out`)")
    tables = {}
    for f in files:
        d = read_json(f)
        if d.get("format") not in (FLOAT_FORMAT, FIXED_FORMAT):
            continue
        t = table_from_dict(d)
        tables[t.fn] = t
    if not tables:
        raise CompactLMError(f"--tables: no {'fixed-point' if fixed_bits else 'float'} tables in {path}")
    return tables


def default_luts(fns=tuple(TARGETS), entries: int = 16, seed: int = 0) -> dict:
    """NN-LUT tables fitted with the default settings, cached under ``$COMPACTLM_CACHE/lut``."""
    from compactlm.cache import cache_dir
    from compactlm.lut.fit import FitConfig, fit_lut

    config = FitConfig(seed=seed)
    tables = {}
    for fn in fns:
        t = get_target(fn)
        key = json.dumps([_DEFAULTS_VERSION, fn, t.lo, t.hi, entries, config.__dict__], sort_keys=True)
        path = cache_dir("lut") / f"{fn}-n{entries}-{hashlib.sha1(key.encode()).hexdigest()[:10]}.json"
        if path.is_file():
            tables[fn] = LUT.from_dict(read_json(path))
            continue
        log.info("fitting the default %d-entry %s table (cached in %s)", entries, fn, path.parent)
        tables[fn] = fit_lut(fn, entries, config)
        write_json(path, {"format": FLOAT_FORMAT, **tables[fn].to_dict()})
    return tables
