"""The deployed, CPU-independent storage of integer weight codes.

Codes ``q`` of a ``b``-bit grid are stored as unsigned offsets ``u = q - qmin`` (so symmetric and
asymmetric grids share one layout):

* ``b <= 4``: two codes per byte along the input dimension, element ``2j`` in the low nibble and
  ``2j + 1`` in the high nibble (2- and 3-bit codes live exactly in the 4-bit container);
  ``[C_out, C_in]`` codes become ``[C_out, ceil(C_in / 2)]`` uint8;
* ``5 <= b <= 8``: one byte per code, ``[C_out, C_in]`` uint8.

The layout is plain bytes with no dependence on the CPU's instruction set; kernels repack it into
their own (CPU-specific) layouts at load time (:mod:`compactlm.quant.kernels`), never on disk.
"""

from __future__ import annotations

import torch

from compactlm.errors import CompactLMError
from compactlm.quant.primitives import qrange


def nibble_packed(bits: int) -> bool:
    """Whether ``bits``-bit codes are stored two per byte."""
    return bits <= 4


def packed_shape(c_out: int, c_in: int, bits: int) -> tuple[int, int]:
    """Shape of the uint8 tensor that holds ``[c_out, c_in]`` codes."""
    return (c_out, (c_in + 1) // 2) if nibble_packed(bits) else (c_out, c_in)


def pack_codes(codes: torch.Tensor, bits: int, symmetric: bool) -> torch.Tensor:
    """Pack ``[C_out, C_in]`` integer codes of a ``bits``-bit grid into uint8 (module docstring layout)."""
    if not 1 <= bits <= 8:
        raise CompactLMError(f"pack_codes: bits must be 1..8, got {bits}")
    qmin, qmax = qrange(bits, symmetric)
    u = codes.to(torch.int16) - qmin
    if u.numel() and (int(u.min()) < 0 or int(u.max()) > qmax - qmin):
        raise CompactLMError(f"pack_codes: codes outside the {bits}-bit grid [{qmin}, {qmax}]")
    u = u.to(torch.uint8)
    if not nibble_packed(bits):
        return u.contiguous()
    if u.shape[1] % 2:
        u = torch.nn.functional.pad(u, (0, 1))
    return (u[:, 0::2] | (u[:, 1::2] << 4)).contiguous()


def unpack_codes(packed: torch.Tensor, bits: int, symmetric: bool, c_in: int) -> torch.Tensor:
    """Inverse of :func:`pack_codes`: ``[C_out, c_in]`` codes, int8 when symmetric, uint8 otherwise."""
    qmin, _ = qrange(bits, symmetric)
    if nibble_packed(bits):
        u = torch.stack((packed & 0x0F, packed >> 4), dim=-1).reshape(packed.shape[0], -1)[:, :c_in]
    else:
        u = packed
    if symmetric:
        return (u.to(torch.int16) + qmin).to(torch.int8)
    return u.to(torch.uint8)  # qmin = 0


def zero_point_storage(zero_point: torch.Tensor) -> torch.Tensor:
    """Zero points as int16 (every grid of up to 8 bits fits; 4 bytes -> 2 per group)."""
    z = zero_point.round()
    if z.numel() and (float(z.min()) < -(2**15) or float(z.max()) >= 2**15):
        raise CompactLMError("zero points outside int16; the grid is corrupt")
    return z.to(torch.int16)
