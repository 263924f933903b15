"""Weight fake-quantizers for training (QAT, encoder QAT, SDQ), each ending on a ``QuantizedWeight``.

The interface every quantizer implements (:class:`WeightQuantizer`; a learned-rounding method such as
FlexRound / LRQ implements the same three methods and plugs into
:class:`compactlm.quant.fake.FakeQuantLinear`):

* ``forward(w) -> Ŵ``: the fake-quantized weight, same shape as the latent ``w`` ``[C_out, C_in]``,
  differentiable (straight-through estimator, STE: ``∂Ŵ/∂W = 1`` inside the clipping range; learned
  parameters of the quantizer get their own gradients);
* ``to_qweight(w) -> QuantizedWeight``: ``w`` baked onto the integer grid, with
  ``to_qweight(w).dequantize() == forward(w)`` (so the deployed ``QuantLinear`` computes what
  training saw);
* ``latent(w)``: the tensor the STE passes the gradient to (``w`` after the optional pre-clip); the
  Quant-Noise mix of :mod:`compactlm.quant.fake` keeps it where a block is not quantized.

* **TWN** ternary (Li et al., "Ternary Weight Networks", 2016; TSLD and TernaryBERT use it), per
  output channel (= per row), or per tensor, with an optional symmetric pre-clip ``W_c = clamp(W, ±c)``::

      Δ = 0.7 · mean|W_c|,   α = mean(|W_c| where |W_c| > Δ),   Ŵ = α · sign(W_c) · 1[|W_c| > Δ]

  (:func:`twn_ternarize`, :class:`TWNQuantizer`); codes {−1, 0, 1} on the signed 2-bit grid.
* **PACT+** learnable clip (Choi et al. 2018, PACT; the "+" of the TSLD code: the clip is per row
  and scaled from the weights): ``α = γ · mean|W_row|`` with ``γ`` learned (initialised so that
  ``α`` starts at TWN's value for 2 bits, at ``max|W_row|`` otherwise); ``s = α / q_max``,
  ``Ŵ = s · clamp(round(W / s), −q_max, q_max)`` with ``q_max = 1`` for ternary, ``2^(b−1) − 1``
  otherwise (so the ternary threshold is ``α/2``, uniform rounding); ``γ`` gets the PACT/LSQ gradient through the STE (:class:`PACTQuantizer`).
* **LSQ** learned step size (Esser et al., ICLR 2020): ``Ŵ = s · clamp(round(W / s), −q_max, q_max)``
  with ``s`` per row (or group) learned, initialised to ``2·mean|W| / √q_max``, gradient scaled
  by ``g = 1/√(N·q_max)`` (``N`` weights per step) (:class:`LSQQuantizer`).
* **min/max** asymmetric (or symmetric) ``b``-bit uniform per output channel or per group of ``G``
  input columns, range recomputed from ``W`` each step (:class:`MinMaxQuantizer`, the 4-bit baseline
  of TSLD), built on :func:`compactlm.quant.weight_qparams` / :func:`~compactlm.quant.fake_quant`.
  With a symmetric grid and a pre-clip it is the encoders' uniform quantizer (Kim et al., EMNLP 2022,
  after TernaryBERT): ``W_c = clamp(W, ±c)``, ``s = max|W_c| / (2^(b−1) − 1)`` per row,
  ``Ŵ = s · round(W_c / s)``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from compactlm.errors import CompactLMError
from compactlm.quant.primitives import expand_groups, fake_quant, round_ste, to_groups, weight_qparams
from compactlm.quant.qweight import QuantizedWeight, code_dtype

TWN_RATIO = 0.7
GRANULARITIES = ("channel", "row", "tensor")


def _check_per(per: str) -> str:
    if per not in GRANULARITIES:
        raise CompactLMError(f"per: ternary granularity must be one of {', '.join(GRANULARITIES)}, got {per!r}")
    return "tensor" if per == "tensor" else "channel"


def _pre_clip(w: torch.Tensor, clip: float | None) -> torch.Tensor:
    return w if clip is None else w.clamp(-clip, clip)


def twn_ternarize(w: torch.Tensor, per: str = "channel", clip: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """TWN codes and scale of a weight matrix (no gradient).

    Args:
        w: ``[C_out, C_in]`` weight (linear) or ``[V, C]`` (embedding rows).
        per: ``"channel"`` / ``"row"`` (one α per row) or ``"tensor"`` (one α for the matrix).
        clip: Optional symmetric pre-clip ``c`` (TernaryBERT / EMNLP'22 encoders use 2.5).

    Returns:
        ``(codes, alpha)``: codes in {−1, 0, 1} ``[C_out, C_in]`` (float), ``alpha`` ``[C_out, 1]``
        (the same value on every row for ``per="tensor"``).
    """
    per = _check_per(per)
    w = _pre_clip(w.detach().float(), clip)
    absw = w.abs()
    if per == "tensor":
        delta = TWN_RATIO * absw.mean()
        keep = absw > delta
        alpha = (absw * keep).sum() / keep.sum().clamp_min(1)
        alpha = alpha.expand(w.shape[0], 1).clone()
    else:
        delta = TWN_RATIO * absw.mean(dim=1, keepdim=True)  # (C_out, 1)
        keep = absw > delta
        alpha = (absw * keep).sum(dim=1, keepdim=True) / keep.sum(dim=1, keepdim=True).clamp_min(1)
    return torch.sign(w) * keep, alpha


def _ste(w: torch.Tensor, w_hat: torch.Tensor) -> torch.Tensor:
    """``w_hat`` forward (bit-exact), identity gradient to ``w`` backward."""
    return w_hat.detach() + (w - w.detach())


def _qweight(codes: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | None, bits: int,
             group_size: int, symmetric: bool) -> QuantizedWeight:
    qw = QuantizedWeight(
        int_weight=codes.round().to(code_dtype(symmetric)),
        scale=scale.detach().float().clone(),
        zero_point=(torch.zeros_like(scale) if zero_point is None else zero_point).detach().round().to(torch.int32),
        bits=bits,
        group_size=group_size,
        symmetric=symmetric,
    )
    qw.validate()
    return qw


class WeightQuantizer(nn.Module):
    """Base class of every training-time weight quantizer (module docstring: the interface).

    Attributes:
        bits: Bits of the integer grid :meth:`to_qweight` ends on.
    """

    bits: int

    def forward(self, w: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        """``Ŵ`` ``[C_out, C_in]`` with a gradient to ``w`` (and to the quantizer's own parameters)."""
        raise NotImplementedError

    def to_qweight(self, w: torch.Tensor) -> QuantizedWeight:  # pragma: no cover - abstract
        """``w`` ``[C_out, C_in]`` on the integer grid; ``dequantize()`` equals ``forward(w)``."""
        raise NotImplementedError

    def latent(self, w: torch.Tensor) -> torch.Tensor:
        """The latent weight the STE passes the gradient to (``w`` itself unless pre-clipped)."""
        return w

    def describe(self) -> str:
        return self.extra_repr() or type(self).__name__


class TWNQuantizer(WeightQuantizer):
    """Ternary weights (TWN) per channel/row or per tensor, optional pre-clip; STE."""

    def __init__(self, per: str = "channel", clip: float | None = None):
        super().__init__()
        self.per = _check_per(per)
        self.clip = clip
        self.bits = 2

    def extra_repr(self) -> str:
        return f"ternary per {self.per}" + (f", clip ±{self.clip}" if self.clip is not None else "")

    def latent(self, w: torch.Tensor) -> torch.Tensor:
        return _pre_clip(w, self.clip)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        codes, alpha = twn_ternarize(w, self.per, self.clip)
        w_c = _pre_clip(w, self.clip)
        return _ste(w_c, (codes * alpha).to(w.dtype))

    def to_qweight(self, w: torch.Tensor) -> QuantizedWeight:
        codes, alpha = twn_ternarize(w, self.per, self.clip)
        return _qweight(codes, alpha, None, 2, w.shape[1], symmetric=True)


def _sym_qmax(bits: int) -> int:
    """Largest code of a restricted symmetric grid: 1 (ternary) at 2 bits, ``2^(b−1) − 1`` otherwise."""
    return 1 if bits == 2 else 2 ** (bits - 1) - 1


class _LearnedStep(WeightQuantizer):
    """Shared forward of PACT+ and LSQ: ``Ŵ = s · clamp(round_ste(W / s), −q_max, q_max)``, ``s`` per group."""

    def __init__(self, bits: int, group_size: int | None):
        super().__init__()
        self.bits = bits
        self.group_size = group_size
        self.qmax = _sym_qmax(bits)

    def step(self, w: torch.Tensor) -> torch.Tensor:  # (C_out, n_groups)
        raise NotImplementedError

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        s = self.step(w)[..., None]  # (C_out, n_groups, 1)
        wg = to_groups(w, self.group_size)
        q = torch.clamp(round_ste(wg / s), -self.qmax, self.qmax)
        return (q * s).reshape(w.shape).to(w.dtype)

    def to_qweight(self, w: torch.Tensor) -> QuantizedWeight:
        with torch.no_grad():
            s = self.step(w)
            wg = to_groups(w.detach().float(), self.group_size)
            q = torch.clamp(torch.round(wg / s[..., None]), -self.qmax, self.qmax).reshape(w.shape)
        return _qweight(q, s, None, self.bits, wg.shape[-1], symmetric=True)


class PACTQuantizer(_LearnedStep):
    """PACT+ learnable clip ``α = γ · mean|W_group|`` (``γ`` per group learned); ternary at 2 bits."""

    def __init__(self, w: torch.Tensor, bits: int = 2, group_size: int | None = None):
        super().__init__(bits, group_size)
        wg = to_groups(w.detach().float(), group_size)
        mean_abs = wg.abs().mean(-1).clamp_min(1e-8)  # (C_out, n_groups)
        if bits == 2:  # start at the TWN scale
            delta = TWN_RATIO * mean_abs[..., None]
            keep = wg.abs() > delta
            alpha0 = (wg.abs() * keep).sum(-1) / keep.sum(-1).clamp_min(1)
        else:
            alpha0 = wg.abs().amax(-1)
        self.gamma = nn.Parameter((alpha0 / mean_abs).to(w.dtype))

    def extra_repr(self) -> str:
        return f"PACT+ {self.bits}-bit, learned clip per {'channel' if self.group_size is None else f'g{self.group_size}'}"

    def step(self, w: torch.Tensor) -> torch.Tensor:
        mean_abs = to_groups(w, self.group_size).abs().mean(-1).detach()
        return (self.gamma * mean_abs).clamp_min(1e-8) / self.qmax


class LSQQuantizer(_LearnedStep):
    """LSQ: learned step size ``s`` per group, gradient scale ``1/√(N·q_max)``."""

    def __init__(self, w: torch.Tensor, bits: int = 2, group_size: int | None = None):
        super().__init__(bits, group_size)
        wg = to_groups(w.detach().float(), group_size)
        self.grad_scale = 1.0 / math.sqrt(wg.shape[-1] * self.qmax)
        self.s = nn.Parameter((2 * wg.abs().mean(-1) / math.sqrt(self.qmax)).clamp_min(1e-8).to(w.dtype))

    def extra_repr(self) -> str:
        return f"LSQ {self.bits}-bit, step per {'channel' if self.group_size is None else f'g{self.group_size}'}"

    def step(self, w: torch.Tensor) -> torch.Tensor:
        g = self.grad_scale
        s = self.s * g + (self.s - self.s * g).detach()  # value s, gradient g·∂L/∂s
        return s.clamp_min(1e-8)


class MinMaxQuantizer(WeightQuantizer):
    """``b``-bit uniform min/max per output channel or group (asymmetric by default), optional
    symmetric pre-clip ``W_c = clamp(W, ±clip)``; STE on ``W_c``."""

    def __init__(self, bits: int = 4, group_size: int | None = None, symmetric: bool = False,
                 clip: float | None = None):
        super().__init__()
        self.bits = bits
        self.group_size = group_size
        self.symmetric = symmetric
        self.clip = clip

    def extra_repr(self) -> str:
        g = "channel" if self.group_size is None else f"g{self.group_size}"
        clip = f", clip ±{self.clip}" if self.clip is not None else ""
        return f"{self.bits}-bit {'sym' if self.symmetric else 'asym'} min/max per {g}{clip}"

    def latent(self, w: torch.Tensor) -> torch.Tensor:
        return _pre_clip(w, self.clip)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        w = self.latent(w)
        scale, zp = weight_qparams(w, self.bits, self.group_size, self.symmetric)  # (C_out, n_groups), detached
        g = to_groups(w, self.group_size).shape[-1]
        return fake_quant(w, expand_groups(scale, g).to(w.dtype), expand_groups(zp, g).to(w.dtype), self.bits,
                          self.symmetric)

    def to_qweight(self, w: torch.Tensor) -> QuantizedWeight:
        w = self.latent(w.detach())
        scale, zp = weight_qparams(w, self.bits, self.group_size, self.symmetric)
        return QuantizedWeight.from_float(w, scale, zp, self.bits, self.group_size, self.symmetric)


QUANTIZERS = ("twn", "pact", "lsq", "minmax")


def make_weight_quantizer(
    kind: str, w: torch.Tensor, bits: int, group_size: int | None = None, symmetric: bool = False,
    per: str = "channel", clip: float | None = None,
) -> WeightQuantizer:
    """Build a quantizer for weight ``w`` ``[C_out, C_in]``.

    Args:
        kind: ``"twn"`` (ternary, needs ``bits == 2``), ``"pact"``, ``"lsq"`` or ``"minmax"``.
        bits: Weight bits.
        group_size: Input columns per group (``None``: per output channel); min/max, PACT+ and LSQ.
        symmetric: Grid of ``"minmax"`` (PACT+/LSQ are always symmetric, TWN is ternary).
        per: TWN granularity (``"channel"``/``"row"`` or ``"tensor"``).
        clip: Symmetric pre-clip of TWN and min/max (PACT+ and LSQ learn their own clip).

    Raises:
        CompactLMError: a quantizer that does not fit the bits / group size, or a pre-clip on PACT+/LSQ.
    """
    if clip is not None and kind in ("pact", "lsq"):
        raise CompactLMError(f"--clip: {kind} learns its own clipping range; drop --clip or use twn/minmax")
    if clip is not None and not clip > 0:
        raise CompactLMError(f"--clip: expected a positive pre-clip, got {clip}")
    if kind == "twn":
        if bits != 2:
            raise CompactLMError(f"--quantizer: twn is ternary (2-bit schemes only), the scheme has {bits} bits")
        if group_size is not None:
            raise CompactLMError("--quantizer: twn is per channel or per tensor; drop the -g<N> suffix")
        return TWNQuantizer(per, clip)
    if kind == "pact":
        return PACTQuantizer(w, bits, group_size)
    if kind == "lsq":
        return LSQQuantizer(w, bits, group_size)
    if kind == "minmax":
        return MinMaxQuantizer(bits, group_size, symmetric, clip)
    raise CompactLMError(f"--quantizer: expected one of {', '.join(QUANTIZERS)}, got {kind!r}")
