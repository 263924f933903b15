"""FlexRound: learnable rounding by element-wise division (Lee et al., ICML 2023, arXiv 2306.00317).

METHODS.md §1.2. A weight ``W`` ``[C_out, C_in]`` is quantized as

    Ŵ = s1 · (clamp(round_ste(W / (s1 ⊙ S2 ⊙ s3)) + z, qmin, qmax) − z)

with the common step size ``s1`` (per output channel, or per group of ``G`` inputs), a full
matrix ``S2 = exp(log_S2)`` ``[C_out, C_in]`` and a row vector ``s3 = exp(log_s3)`` ``[C_out, 1]``.
All scales live in log space; ``log_S2`` and ``log_s3`` start at 0 and ``s1`` starts at the RTN
step size (min/max or Lp clip search), so the initial quantizer *is* RTN. ``s1`` is parametrised
as ``s1_init · exp(log_s1_delta)`` (the same log-space parameter shifted by a constant, so Adam
sees identical updates) which keeps the initial grid bit-identical to RTN. The zero point ``z`` is
fixed after initialisation. After reconstruction the weight is a plain integer grid with step
``s1``: ``S2`` and ``s3`` only decide which integer each weight rounds to.

:class:`LogScaleRounding` holds everything FlexRound and LRQ share; subclasses only define the
log-divisor ``D`` ``[C_out, C_in]`` (FlexRound: ``log_S2 + log_s3``; LRQ: ``L·U + r·1ᵀ + 1·cᵀ``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from compactlm.ptq.engine import ReconstructionConfig, reconstruct
from compactlm.quant.primitives import expand_groups, group_size_for, qrange, round_ste_fused, weight_qparams
from compactlm.quant.qweight import QuantizedWeight, code_dtype
from compactlm.quant.scheme import QuantScheme
from compactlm.quant.weight_quantizers import WeightQuantizer


class LogScaleRounding(WeightQuantizer):
    """``Ŵ = s1 · (clamp(round_ste(W / (s1 · exp(D))) + z, qmin, qmax) − z)``.

    A :class:`~compactlm.quant.weight_quantizers.WeightQuantizer`: the reconstruction engine trains
    it inside the toolkit's one :class:`~compactlm.quant.fake.FakeQuantLinear`, which holds the
    (frozen) weight ``W`` and passes it to :meth:`forward` / :meth:`to_qweight`. Only the
    log-scales are learned; ``W`` gets no gradient here.

    Args:
        weight: ``[C_out, C_in]`` full-precision weight (initialises ``s1`` and ``z``; not stored).
        scheme: Weight bits, group size and symmetry.
        clip: ``s1`` initialisation: ``"minmax"``, ``"lp"``, ``"lp2d"``, ``"signed-max"`` or
            ``"act-mse"`` (:func:`~compactlm.quant.primitives.weight_qparams`).
        col_weight: ``[C_in]`` mean squared input per column (``clip="act-mse"`` only; the engine
            measures it on the block's calibration inputs).
    """

    def __init__(self, weight: torch.Tensor, scheme: QuantScheme, clip: str = "minmax",
                 col_weight: torch.Tensor | None = None):
        super().__init__()
        self.bits = scheme.w_bits
        self.symmetric = scheme.w_symmetric
        self.group_size = group_size_for(weight.shape[1], scheme.w_group_size)
        self.shape = tuple(weight.shape)  # (C_out, C_in)
        s1, z = weight_qparams(weight, self.bits, self.group_size, self.symmetric, clip=clip, col_weight=col_weight)
        self.register_buffer("s1_init", s1)  # (C_out, n_groups)
        self.register_buffer("zero_point", z)  # (C_out, n_groups), fixed
        self.log_s1_delta = nn.Parameter(torch.zeros_like(s1))  # log s1 = log s1_init + log_s1_delta

    def log_divisor(self) -> torch.Tensor:
        """``D`` such that the rounding divisor is ``s1 · exp(D)``; ``[C_out, C_in]`` (broadcastable)."""
        raise NotImplementedError

    def s1(self) -> torch.Tensor:
        """Step size ``[C_out, n_groups]``."""
        return self.s1_init * torch.exp(self.log_s1_delta)

    def _codes(self, w: torch.Tensor, ste: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        # s1 and z are repeated to [C_out, C_in] (not broadcast per group): broadcasting gives the
        # same values but sums log_s1_delta's gradient in another order (different last bits)
        qmin, qmax = qrange(self.bits, self.symmetric)
        s1 = expand_groups(self.s1(), self.group_size)  # (C_out, C_in)
        z = expand_groups(self.zero_point, self.group_size)
        x = w.float() / (s1 * torch.exp(self.log_divisor()))
        q = torch.clamp((round_ste_fused(x) if ste else torch.round(x)) + z, qmin, qmax)
        return q, s1, z

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        """Fake-quantized ``w`` ``[C_out, C_in]``, differentiable w.r.t. all log-scales."""
        q, s1, z = self._codes(w, ste=True)
        return (q - z) * s1

    @torch.no_grad()
    def to_qweight(self, w: torch.Tensor) -> QuantizedWeight:
        """``w`` on the integer grid of step ``s1``; ``dequantize()`` equals :meth:`forward` bit for bit."""
        q, _, _ = self._codes(w, ste=False)
        return QuantizedWeight(
            int_weight=q.to(code_dtype(self.symmetric)),
            scale=self.s1().detach().float().clone(),
            zero_point=self.zero_point.round().to(torch.int32),
            bits=self.bits,
            group_size=self.group_size,
            symmetric=self.symmetric,
        )


class FlexRoundQuantizer(LogScaleRounding):
    """FlexRound: ``D = log_S2 + log_s3`` with ``log_S2`` ``[C_out, C_in]``, ``log_s3`` ``[C_out, 1]``, both 0 at init."""

    def __init__(self, weight: torch.Tensor, scheme: QuantScheme, clip: str = "minmax",
                 col_weight: torch.Tensor | None = None):
        super().__init__(weight, scheme, clip, col_weight)
        self.log_S2 = nn.Parameter(torch.zeros_like(weight, dtype=torch.float32))
        self.log_s3 = nn.Parameter(torch.zeros(self.shape[0], 1))

    def log_divisor(self) -> torch.Tensor:
        return self.log_S2 + self.log_s3


@dataclass(frozen=True)
class FlexRoundConfig(ReconstructionConfig):
    """Options of FlexRound (all shared with the reconstruction engine).

    The default learning rate is higher than the paper's 5e-4..3e-3 because CPU budgets allow
    ~100 iterations per block instead of 5000.
    """

    lr: float = 3e-3


def apply_flexround(model: nn.Module, scheme: QuantScheme, config: FlexRoundConfig, calib: torch.Tensor | None = None) -> dict:
    """Quantize ``model`` in place with FlexRound (see module docstring)."""
    return reconstruct(model, scheme, calib, config,
                       lambda name, w, gen, col_weight=None: FlexRoundQuantizer(w, scheme, config.clip, col_weight), "flexround")
