"""Real low-bit matmuls for :class:`~compactlm.quant.QuantLinear`, chosen per layer and device.

A kernel takes the deployed grid of one layer (packed codes, per-group scale, integer zero point),
repacks it once into the layout its matmul wants (that layout may depend on the CPU: it lives in
memory only, never on disk) and computes ``y = x @ Ŵᵀ``. Which kernel serves a layer depends on its
grid and device; :func:`select_kernel` returns the first that accepts it, or the reasons why none
did, and the layer then dequantizes on every call.

Kernels (all PyTorch's own ops; nothing here is a hand-written GEMM):

* ``int4-cpu``: 2/3/4-bit codes (exact in the 4-bit container), per channel or groups of
  32/64/128/256, through ``aten._weight_int4pack_mm_for_cpu``;
* ``int8-cpu``: symmetric 8-bit per-channel codes through ``aten._weight_int8pack_mm``.

Both run their inner product in bfloat16 activations (the ops' vectorised path on x86; fp32 takes a
scalar path ~15x slower), and cast back to the caller's dtype.
"""

from __future__ import annotations

from compactlm.quant.kernels.base import Kernel, LayerGrid
from compactlm.quant.kernels.cpu import Int4CPU, Int8CPU

KERNELS: tuple[type[Kernel], ...] = (Int4CPU, Int8CPU)


def select_kernel(grid: LayerGrid, device_type: str) -> tuple[type[Kernel] | None, str]:
    """The first kernel that serves ``grid`` on ``device_type``, and why the others did not.

    Returns:
        ``(kernel class, "")`` or ``(None, "int4-cpu: <reason>; int8-cpu: <reason>")``.
    """
    reasons = []
    for k in KERNELS:
        why = k.unsupported(grid, device_type)
        if why is None:
            return k, ""
        reasons.append(f"{k.name}: {why}")
    return None, "; ".join(reasons)


__all__ = ["KERNELS", "Kernel", "LayerGrid", "Int4CPU", "Int8CPU", "select_kernel"]
