"""Target non-linearities of NN-LUT and the operators that evaluate them through tables.

NN-LUT (Yu et al., DAC 2022, arXiv 2112.02191) replaces every non-linear operation of a
transformer by a piecewise-linear look-up table (:mod:`compactlm.lut.table`). The tables
approximate five scalar functions, each on a fixed interval:

================  =====================  ===============  ======================================
name              f(x)                   fitted interval  used by
================  =====================  ===============  ======================================
``gelu``          x·Φ(x)                 [-8, 8]          MLP activation (BERT, GPT-2, Gemma)
``silu``          x·σ(x)                 [-8, 8]          MLP activation (Llama, Qwen2)
``exp``           e^x                    [-16, 0]         softmax numerator, after max-subtraction
``reciprocal``    1/x                    [1, 2]           softmax normalisation
``rsqrt``         1/√x                   [1, 4]           LayerNorm / RMSNorm
================  =====================  ===============  ======================================

Out-of-interval inputs (the behaviour the tests pin down):

* ``gelu`` / ``silu``: outside ``[lo, hi] = [-8, 8]`` the operator returns the asymptotes, ``0``
  below and ``x`` above (one compare and a select in hardware), instead of extending the table's
  end segments (an end slope of 1.006 would drift by 0.1 at x = 24). The extra error is the
  function's distance from its asymptote at the interval ends: ``|gelu(±8) - asymptote| < 1e-14``,
  ``|silu(±8) - asymptote| = 8·σ(-8) ≈ 2.7e-3``. The bare :class:`~compactlm.lut.table.LUT`
  itself extends its end segments linearly (it is exactly the ReLU network on all of ℝ).
* ``exp``: inputs are ``x - max(x) ≤ 0``; anything below the interval (including masked scores)
  underflows to exactly 0, and outputs are clamped to ``≥ 0``.
* ``reciprocal`` / ``rsqrt``: range normalisation (exponent extraction) maps every positive input
  into the interval, so the table never sees anything else. With ``x = m·2^e``:
  ``1/x = (1/m)·2^-e`` for ``m ∈ [1, 2)`` and ``1/√x = (1/√m)·2^(-e/2)`` for ``m ∈ [1, 4)`` with
  ``e`` even. The power-of-two rescale is a shift in hardware (``torch.ldexp`` here).
  Non-positive inputs are outside the domain; norms always add ``eps > 0``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from compactlm.errors import CompactLMError


@dataclass(frozen=True)
class Target:
    """A scalar function NN-LUT approximates.

    Attributes:
        name: Key used everywhere (tables, JSON, CLI).
        fn: The exact function, elementwise on a tensor.
        lo, hi: Interval the network is fitted on (and errors are measured on).
        monotone: ``+1`` increasing, ``-1`` decreasing on the interval, ``0`` neither.
    """

    name: str
    fn: Callable[[torch.Tensor], torch.Tensor]
    lo: float
    hi: float
    monotone: int = 0


def _gelu(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.gelu(x)


def _silu(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.silu(x)


TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        Target("gelu", _gelu, -8.0, 8.0, 0),
        Target("silu", _silu, -8.0, 8.0, 0),
        Target("exp", torch.exp, -16.0, 0.0, +1),
        Target("reciprocal", torch.reciprocal, 1.0, 2.0, -1),
        Target("rsqrt", torch.rsqrt, 1.0, 4.0, -1),
    )
}

# Which tables each replaceable operation needs.
OP_FUNCTIONS: dict[str, tuple[str, ...]] = {
    "gelu": ("gelu",),
    "silu": ("silu",),
    "softmax": ("exp", "reciprocal"),
    "layernorm": ("rsqrt",),
    "rmsnorm": ("rsqrt",),
}
ALL_OPS: tuple[str, ...] = tuple(OP_FUNCTIONS)


def get_target(name: str) -> Target:
    """The :class:`Target` called ``name``.

    Raises:
        CompactLMError: unknown name (the message lists the known ones).
    """
    if name not in TARGETS:
        raise CompactLMError(f"--fn: unknown function {name!r}; known: {', '.join(TARGETS)}")
    return TARGETS[name]


def check_ops(ops) -> tuple[str, ...]:
    """Validate a list of operation names (``gelu``, ``silu``, ``softmax``, ``layernorm``, ``rmsnorm``)."""
    if isinstance(ops, str):
        ops = [o for o in ops.split(",") if o]
    ops = tuple(ops)
    bad = [o for o in ops if o not in OP_FUNCTIONS]
    if bad or not ops:
        raise CompactLMError(f"--ops: unknown operation(s) {bad or ops}; choose from {', '.join(ALL_OPS)}")
    return ops


def needed_functions(ops) -> tuple[str, ...]:
    """Table names needed by ``ops``, without duplicates, in a fixed order."""
    names = {f for op in check_ops(ops) for f in OP_FUNCTIONS[op]}
    return tuple(n for n in TARGETS if n in names)


# ---------------------------------------------------------------------------------------------
# Operators evaluated through tables. ``table`` is anything with ``__call__(x) -> y`` (a LUT).


def lut_activation(x: torch.Tensor, table) -> torch.Tensor:
    """GELU / SiLU from a table on ``[lo, hi]``; ``0`` below and ``x`` above the interval (asymptotes)."""
    lo, hi = table.lo, table.hi
    y = table(x.clamp(min=lo, max=hi))
    return torch.where(x > hi, x, torch.where(x < lo, torch.zeros_like(y), y))


def lut_exp(x: torch.Tensor, table) -> torch.Tensor:
    """``e^x`` for ``x ≤ 0``: inputs below the table's interval underflow to 0."""
    lo = table.lo
    y = table(x.clamp(min=lo, max=0.0)).clamp(min=0.0)
    return torch.where(x < lo, torch.zeros_like(y), y)


def lut_reciprocal(x: torch.Tensor, table) -> torch.Tensor:
    """``1/x`` for ``x > 0`` via ``x = m·2^e``, ``m ∈ [1, 2)``: ``1/x = T(m)·2^-e``."""
    mantissa, exponent = torch.frexp(x)  # x = mantissa·2^exponent, mantissa ∈ [0.5, 1)
    m = mantissa * 2.0  # ∈ [1, 2)
    e = exponent - 1
    return torch.ldexp(table(m), -e)


def lut_rsqrt(x: torch.Tensor, table) -> torch.Tensor:
    """``1/√x`` for ``x > 0`` via ``x = m·2^e``, ``m ∈ [1, 4)``, ``e`` even: ``T(m)·2^(-e/2)``."""
    mantissa, exponent = torch.frexp(x)
    m = mantissa * 2.0
    e = exponent - 1
    odd = (e % 2) != 0  # fold an odd exponent into the mantissa: m ∈ [2, 4)
    m = torch.where(odd, m * 2.0, m)
    e = torch.where(odd, e - 1, e)
    return torch.ldexp(table(m), -torch.div(e, 2, rounding_mode="floor"))


def lut_softmax(scores: torch.Tensor, exp_table, recip_table, dim: int = -1) -> torch.Tensor:
    """Softmax with both non-linearities from tables: ``T_exp(x - max) · T_recip(Σ T_exp)``.

    Args:
        scores: Attention scores (any shape, masked entries very negative or ``-inf``).
        dim: Dimension to normalise over.
    """
    x = scores.float()
    peak = x.amax(dim=dim, keepdim=True)
    peak = torch.where(torch.isfinite(peak), peak, torch.zeros_like(peak))
    numer = lut_exp(x - peak, exp_table)
    denom = numer.sum(dim=dim, keepdim=True)
    denom = torch.where(denom > 0, denom, torch.ones_like(denom))  # a fully masked row stays 0
    return (numer * lut_reciprocal(denom, recip_table)).to(scores.dtype)
