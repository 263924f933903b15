"""N-entry piecewise-linear look-up tables (NN-LUT, Yu et al., DAC 2022, arXiv 2112.02191).

A table holds ``N-1`` sorted breakpoints ``d_1 ≤ … ≤ d_{N-1}`` and, for each of the ``N``
segments, a slope and an intercept. Evaluation is one compare-tree lookup and one multiply-add:

    k = #{j : d_j ≤ x}            (bucket of x, 0 … N-1)
    y = slope[k]·x + intercept[k]

:func:`from_network` converts a one-hidden-layer ReLU network
``f(x) = Σ_i m_i·ReLU(w_i·x + b_i) + c`` *exactly* into such a table: unit ``i`` switches at
``d_i = -b_i/w_i`` (active right of it when ``w_i > 0``, left of it when ``w_i < 0``), and on a
segment with active set ``A`` the network is linear with ``slope = Σ_{i∈A} m_i·w_i`` and
``intercept = Σ_{i∈A} m_i·b_i + c``. :func:`uniform_lut` is the baseline: breakpoints evenly spaced
on the interval, each segment interpolating the true function at its two ends. :func:`lstsq_lut`
keeps those breakpoints but chooses the knot values by least squares (the ablation that separates
"better values" from "better breakpoints").

Out-of-interval inputs: the end segments extend linearly (the table equals the network on all of
ℝ). Operators that need something else (exp underflow to 0, exponent normalisation of 1/x and
1/√x) do it around the lookup, in :mod:`compactlm.lut.functions`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from compactlm.errors import CompactLMError


@dataclass(frozen=True)
class LUT:
    """A piecewise-linear table for one scalar function.

    Attributes:
        fn: Name of the approximated function (a key of :data:`compactlm.lut.functions.TARGETS`).
        breakpoints: ``N-1`` sorted breakpoints.
        slopes: ``N`` per-segment slopes.
        intercepts: ``N`` per-segment intercepts.
        lo, hi: Interval the table was built for.
        method: ``"nn-lut"``, ``"uniform"``, ``"lstsq"``, ``"nn-lut-init"`` or ``"nn-lut-calibrated"``.
        meta: Free-form provenance (seed, steps, fit loss...), saved with the table.
    """

    fn: str
    breakpoints: tuple[float, ...]
    slopes: tuple[float, ...]
    intercepts: tuple[float, ...]
    lo: float
    hi: float
    method: str = "nn-lut"
    meta: dict = field(default_factory=dict, compare=False)
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self):
        n = len(self.slopes)
        if n < 1 or len(self.intercepts) != n or len(self.breakpoints) != n - 1:
            raise CompactLMError(
                f"table {self.fn}: expected N slopes, N intercepts and N-1 breakpoints, got "
                f"{len(self.slopes)}, {len(self.intercepts)}, {len(self.breakpoints)}"
            )
        if any(a > b for a, b in zip(self.breakpoints, self.breakpoints[1:])):
            raise CompactLMError(f"table {self.fn}: breakpoints must be sorted")

    @property
    def entries(self) -> int:
        """Number of segments ``N``."""
        return len(self.slopes)

    def tensors(self, device=None, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(breakpoints [N-1], slopes [N], intercepts [N])`` on ``device`` / ``dtype`` (cached)."""
        key = (str(device), dtype)
        if key not in self._cache:
            self._cache[key] = tuple(
                torch.tensor(v, dtype=dtype, device=device) for v in (self.breakpoints, self.slopes, self.intercepts)
            )
        return self._cache[key]

    def bucket(self, x: torch.Tensor) -> torch.Tensor:
        """Segment index ``k = #{j : d_j ≤ x}`` of every element (same shape as ``x``, int64)."""
        d, _, _ = self.tensors(x.device, x.dtype)
        return torch.bucketize(x, d, right=True)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """``slope[k]·x + intercept[k]``, elementwise; same shape and dtype as ``x``."""
        d, s, t = self.tensors(x.device, x.dtype)
        k = torch.bucketize(x, d, right=True)
        return s[k] * x + t[k]

    def to_dict(self) -> dict:
        return {
            "fn": self.fn,
            "method": self.method,
            "entries": self.entries,
            "range": [self.lo, self.hi],
            "breakpoints": list(self.breakpoints),
            "slopes": list(self.slopes),
            "intercepts": list(self.intercepts),
            "meta": dict(self.meta),
        }

    @classmethod
    def from_dict(cls, d: dict) -> "LUT":
        try:
            return cls(
                fn=str(d["fn"]),
                breakpoints=tuple(float(v) for v in d["breakpoints"]),
                slopes=tuple(float(v) for v in d["slopes"]),
                intercepts=tuple(float(v) for v in d["intercepts"]),
                lo=float(d["range"][0]),
                hi=float(d["range"][1]),
                method=str(d.get("method", "nn-lut")),
                meta=dict(d.get("meta", {})),
            )
        except (KeyError, TypeError, IndexError, ValueError) as e:
            raise CompactLMError(f"table: not a compactlm LUT ({type(e).__name__}: {e})") from e


def from_network(w: torch.Tensor, b: torch.Tensor, m: torch.Tensor, c: float, fn: str, lo: float, hi: float,
                 method: str = "nn-lut", meta: dict | None = None) -> LUT:
    """Exact conversion of ``Σ_i m_i·ReLU(w_i·x + b_i) + c`` into a table.

    Args:
        w, b, m: ``[N-1]`` first-layer weights, biases and output weights.
        c: Output bias.

    Returns:
        A table with ``N`` entries (units with ``w_i = 0`` are constants folded into ``c``, each
        removes one breakpoint).
    """
    w, b, m = (t.detach().to(torch.float64).flatten() for t in (w, b, m))
    c = float(c)
    const = w == 0
    c += float((m[const] * b[const].clamp(min=0)).sum())
    w, b, m = w[~const], b[~const], m[~const]
    d, order = torch.sort(-b / w)
    w, b, m = w[order], b[order], m[order]
    n = len(d)
    # One representative point per segment; the active set is constant inside a segment.
    if n:
        inner = (d[:-1] + d[1:]) / 2
        reps = torch.cat([d[:1] - 1.0, inner, d[-1:] + 1.0])
    else:
        reps = torch.zeros(1, dtype=torch.float64)
    active = (w[None, :] * reps[:, None] + b[None, :]) > 0  # [N, N-1]
    # A zero-width segment (coincident breakpoints) is never selected by the lookup.
    slopes = (active * (m * w)[None, :]).sum(1) + 0.0
    intercepts = (active * (m * b)[None, :]).sum(1) + c
    return LUT(fn, tuple(d.tolist()), tuple(slopes.tolist()), tuple(intercepts.tolist()), float(lo), float(hi),
               method=method, meta=dict(meta or {}))


def uniform_lut(fn, entries: int, lo: float, hi: float, name: str | None = None) -> LUT:
    """Baseline table: ``entries`` equal segments on ``[lo, hi]`` interpolating ``fn`` at their ends.

    Args:
        fn: The exact function (elementwise on a float64 tensor).
        entries: ``N``; breakpoints are the ``N-1`` interior knots ``lo + (hi-lo)·j/N``.
    """
    if entries < 1:
        raise CompactLMError(f"--entries: must be ≥ 1, got {entries}")
    knots = torch.linspace(lo, hi, entries + 1, dtype=torch.float64)
    y = fn(knots)
    slopes = (y[1:] - y[:-1]) / (knots[1:] - knots[:-1])
    intercepts = y[:-1] - slopes * knots[:-1]
    return LUT(name or getattr(fn, "__name__", "f"), tuple(knots[1:-1].tolist()), tuple(slopes.tolist()),
               tuple(intercepts.tolist()), float(lo), float(hi), method="uniform")


def lstsq_lut(fn, entries: int, lo: float, hi: float, name: str | None = None, points: int = 10_001) -> LUT:
    """Least-squares table on uniform breakpoints: the ablation between :func:`uniform_lut` and NN-LUT.

    The same ``N`` equal segments as :func:`uniform_lut`, but instead of interpolating ``fn`` at
    the knots, the ``N+1`` knot values ``v_0 … v_N`` of a *continuous* piecewise-linear function
    are chosen to minimise ``Σ_p (g(x_p) - fn(x_p))²`` over ``points`` evenly spaced ``x_p`` on
    ``[lo, hi]`` (hat-function basis, one linear least-squares solve). Continuous, like a table
    converted from a ReLU network, so the two differ only in where the breakpoints sit and how
    they were found.

    Args:
        fn: The exact function (elementwise on a float64 tensor).
        entries: ``N``; breakpoints are the ``N-1`` interior knots ``lo + (hi-lo)·j/N``.
        points: Evenly spaced least-squares points on ``[lo, hi]`` (ends included).
    """
    if entries < 1:
        raise CompactLMError(f"--entries: must be ≥ 1, got {entries}")
    if points < entries + 1:
        raise CompactLMError(f"points: need at least entries+1 = {entries + 1} least-squares points, got {points}")
    knots = torch.linspace(lo, hi, entries + 1, dtype=torch.float64)
    x = torch.linspace(lo, hi, points, dtype=torch.float64)
    values = _hat_lstsq(knots, x, fn(x))
    slopes = (values[1:] - values[:-1]) / (knots[1:] - knots[:-1])
    intercepts = values[:-1] - slopes * knots[:-1]
    return LUT(name or getattr(fn, "__name__", "f"), tuple(knots[1:-1].tolist()), tuple(slopes.tolist()),
               tuple(intercepts.tolist()), float(lo), float(hi), method="lstsq",
               meta={"lstsq_points": points, "knot_values": values.tolist()})


def _hat_lstsq(knots: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Knot values of the continuous piecewise-linear least-squares fit of ``(x, y)`` on ``knots``."""
    k = torch.bucketize(x, knots[1:-1], right=True)  # segment of each point, 0 … N-1
    t = (x - knots[k]) / (knots[k + 1] - knots[k])  # position inside the segment, 0 … 1
    basis = torch.zeros(len(x), len(knots), dtype=torch.float64)
    rows = torch.arange(len(x))
    basis[rows, k] = 1 - t
    basis[rows, k + 1] += t
    return torch.linalg.lstsq(basis, y[:, None], driver="gelsd").solution[:, 0]


def table_error(table: LUT, fn, lo: float | None = None, hi: float | None = None, points: int = 100_001) -> dict:
    """Max and mean absolute error of ``table`` against ``fn`` on a dense grid of ``[lo, hi]``."""
    lo = table.lo if lo is None else lo
    hi = table.hi if hi is None else hi
    x = torch.linspace(lo, hi, points, dtype=torch.float64)
    err = (table(x) - fn(x)).abs()
    return {"max_abs_err": float(err.max()), "mean_abs_err": float(err.mean())}
