"""CPU kernels: PyTorch's int4 (``_weight_int4pack_mm_for_cpu``) and int8 (``_weight_int8pack_mm``) matmuls.

The int4 op computes ``x @ Wᵀ`` with ``W[n, k] = (u[n, k] - 8) · S[k // g, n, 0] + S[k // g, n, 1]`` for
4-bit ``u`` in ``[0, 15]``. Our grid is ``W = s · (q - z)``; storing ``u = q - qmin + c`` with
``c = 8 - 2^(b-1)`` (2/3-bit codes centred in the 4-bit container) it maps exactly with ``scale = s`` and
``zero = s · (8 - c + qmin - z)``: asymmetric and symmetric 2/3/4-bit grids alike. Centring keeps
``u - 8`` and the zero term small, so their bfloat16 rounding does not cancel into a large error.
Scales and zero terms are passed in bfloat16 (the ops take them in the activation dtype, and bf16
is their only vectorised one on x86): a relative rounding of at most 2^-9 per channel or group, the
same order as the bf16 rounding of every activation. Applying an fp32 per-channel scale to the
output instead costs three extra tensor operations per layer, ~10% of a SmolLM2 decode step
(measured), for no measurable accuracy.
"""

from __future__ import annotations

import torch

from compactlm.quant.kernels.base import Kernel, LayerGrid
from compactlm.quant.primitives import qrange

INT4_GROUPS = (256, 128, 64, 32)  # what the op accepts; largest first for per-channel grids
_RECOVER_ROWS = 1024  # identity rows per call when reading codes back out of the int4 packing


def _int4_group(grid: LayerGrid) -> int | None:
    if grid.per_channel:
        return next((g for g in INT4_GROUPS if grid.in_features % g == 0), None)
    return grid.group_size if grid.group_size in INT4_GROUPS else None


class Int4CPU(Kernel):
    """2/3/4-bit weights, per channel or groups of 32/64/128/256, bfloat16 activations."""

    name = "int4-cpu"

    @classmethod
    def unsupported(cls, grid: LayerGrid, device_type: str) -> str | None:
        if device_type != "cpu":
            return "CPU only"
        if not hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu"):
            return "this torch build has no _weight_int4pack_mm_for_cpu"
        if grid.bits > 4:
            return f"{grid.bits}-bit codes (needs 4 or fewer)"
        if grid.out_features % 16:
            return f"output width {grid.out_features} is not a multiple of 16"
        if _int4_group(grid) is None:
            if grid.per_channel:
                return f"input width {grid.in_features} has no divisor in {INT4_GROUPS}"
            return f"group size {grid.group_size} is not one of {sorted(INT4_GROUPS)}"
        return None

    def __init__(self, grid: LayerGrid, codes: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor):
        super().__init__(grid, codes, scale, zero_point)
        self.qmin = qrange(grid.bits, grid.symmetric)[0]
        self.centre = 8 - 2 ** (grid.bits - 1)
        self.group = _int4_group(grid)
        u = (codes.to(torch.int32) - self.qmin + self.centre).contiguous()  # (N, K) in [0, 15]
        self.packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(u, 2)
        offset = 8 - self.centre + self.qmin - zero_point.float()  # (N, n_groups), integers
        sz = torch.stack((scale.float(), scale.float() * offset), dim=-1)  # (N, n_groups, 2)
        if grid.per_channel:  # a per-channel grid is a group grid with repeated scales
            sz = sz.repeat_interleave(grid.in_features // self.group, dim=1)
        self.scales_zeros = sz.transpose(0, 1).contiguous().to(torch.bfloat16)  # (K / g, N, 2)

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(x.to(torch.bfloat16), self.packed, self.group, self.scales_zeros)
        return y.to(x.dtype)

    def codes(self) -> torch.Tensor:
        """Read the codes back through the op itself: unit scales, zero 0 and identity rows give ``u - 8``."""
        n, k = self.grid.out_features, self.grid.in_features
        unit = torch.zeros(k // self.group, n, 2, dtype=torch.bfloat16)
        unit[..., 0] = 1
        cols = []
        for start in range(0, k, _RECOVER_ROWS):
            rows = min(_RECOVER_ROWS, k - start)
            eye = torch.zeros(rows, k, dtype=torch.bfloat16)
            eye[torch.arange(rows), start + torch.arange(rows)] = 1
            cols.append(torch.ops.aten._weight_int4pack_mm_for_cpu(eye, self.packed, self.group, unit))  # (rows, N)
        u = torch.cat(cols).t().float().round() + 8  # (N, K)
        codes = u.to(torch.int16) + self.qmin - self.centre
        return codes.to(torch.int8 if self.grid.symmetric else torch.uint8)

    def dense_weight(self, dtype: torch.dtype) -> torch.Tensor | None:
        return None  # the packing is CPU-specific: only the op can read it cheaply


class Int8CPU(Kernel):
    """Symmetric 8-bit per-channel weights, bfloat16 activations and scales."""

    name = "int8-cpu"

    @classmethod
    def unsupported(cls, grid: LayerGrid, device_type: str) -> str | None:
        if device_type != "cpu":
            return "CPU only"
        if not hasattr(torch, "_weight_int8pack_mm"):
            return "this torch build has no _weight_int8pack_mm"
        if grid.bits != 8 or not grid.symmetric:
            return "needs symmetric 8-bit codes"
        if not grid.per_channel:
            return "needs a per-channel grid"
        return None

    def __init__(self, grid: LayerGrid, codes: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor):
        super().__init__(grid, codes, scale, zero_point)
        self.q = codes.to(torch.int8).contiguous()  # (N, K)
        self.scale = scale[:, 0].float().contiguous()  # (N,) fp32, for the dense path
        self.scale_bf16 = self.scale.to(torch.bfloat16)

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        return torch._weight_int8pack_mm(x.to(torch.bfloat16), self.q, self.scale_bf16).to(x.dtype)

    def codes(self) -> torch.Tensor:
        return self.q

    def dense_weight(self, dtype: torch.dtype) -> torch.Tensor | None:
        return (self.q.to(torch.float32) * self.scale[:, None]).to(dtype)
