"""``QuantizedWeight``: the integer grid every PTQ and QAT method ends on.

Whatever produced the integers (RTN, GPTQ, FlexRound, LRQ, ternary QAT), export and kernels see
only ``int_weight``, ``scale`` and ``zero_point``: ``W ≈ (int_weight - zero_point) · scale`` with
parameters per output channel and group.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from compactlm.errors import CompactLMError
from compactlm.quant.primitives import expand_groups, group_size_for, qrange, quantize, to_groups


def code_dtype(symmetric: bool) -> torch.dtype:
    """Storage type of integer codes: signed for symmetric grids, unsigned for asymmetric ones."""
    return torch.int8 if symmetric else torch.uint8


@dataclass
class QuantizedWeight:
    """A weight matrix on a uniform integer grid.

    Attributes:
        int_weight: ``[C_out, C_in]`` codes in ``qrange(bits, symmetric)``: int8 when symmetric,
            uint8 when asymmetric (so 8-bit asymmetric grids fit).
        scale: ``[C_out, n_groups]`` float step sizes.
        zero_point: ``[C_out, n_groups]`` int32 zero points (0 when symmetric).
        bits: Grid bits.
        group_size: Input columns per group (``C_in`` for per channel).
        symmetric: Signed grid with zero point 0.
    """

    int_weight: torch.Tensor
    scale: torch.Tensor
    zero_point: torch.Tensor
    bits: int
    group_size: int
    symmetric: bool

    @classmethod
    def from_float(
        cls,
        w: torch.Tensor,
        scale: torch.Tensor,
        zero_point: torch.Tensor,
        bits: int,
        group_size: int | None,
        symmetric: bool,
    ) -> "QuantizedWeight":
        """Round ``w`` ``[C_out, C_in]`` onto the grid given by per-group ``scale``/``zero_point``."""
        g = group_size_for(w.shape[1], group_size)
        wg = to_groups(w.detach().float(), g)
        q = quantize(wg, scale[..., None].float(), zero_point[..., None].float(), bits, symmetric)
        return cls(
            int_weight=q.reshape(w.shape).to(code_dtype(symmetric)),
            scale=scale.detach().float().clone(),
            zero_point=zero_point.detach().round().to(torch.int32),
            bits=bits,
            group_size=g,
            symmetric=symmetric,
        )

    @property
    def shape(self) -> torch.Size:
        return self.int_weight.shape

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """``[C_out, C_in]`` real weight."""
        scale = expand_groups(self.scale, self.group_size)
        zp = expand_groups(self.zero_point, self.group_size)
        return ((self.int_weight.to(torch.float32) - zp) * scale).to(dtype)

    def validate(self) -> None:
        """Check shapes and that every code lies on the grid."""
        qmin, qmax = qrange(self.bits, self.symmetric)
        c_out, c_in = self.int_weight.shape
        n_groups = c_in // self.group_size
        if tuple(self.scale.shape) != (c_out, n_groups) or tuple(self.zero_point.shape) != (c_out, n_groups):
            raise CompactLMError(
                f"QuantizedWeight: scale/zero_point must be [{c_out}, {n_groups}], "
                f"got {list(self.scale.shape)} / {list(self.zero_point.shape)}"
            )
        lo, hi = int(self.int_weight.min()), int(self.int_weight.max())
        if lo < qmin or hi > qmax:
            raise CompactLMError(f"QuantizedWeight: codes span [{lo}, {hi}], outside the {self.bits}-bit grid")

    def state_dict(self, prefix: str = "") -> dict[str, torch.Tensor]:
        return {
            f"{prefix}int_weight": self.int_weight,
            f"{prefix}scale": self.scale,
            f"{prefix}zero_point": self.zero_point,
        }
