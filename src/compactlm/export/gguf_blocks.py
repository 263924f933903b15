"""GGML block bytes written from a ``QuantizedWeight``'s own integer codes (no re-rounding).

Pure functions on numpy arrays; no model, file or tokenizer knowledge. Each row of a
``[C_out, C_in]`` weight is ``C_in / 32`` consecutive blocks of 32 weights (ggml's ``QK = 32``):

=======  ==============================================  ============================================
type     block (bytes)                                   weight
=======  ==============================================  ============================================
Q4_0     ``d`` fp16, 16 bytes of nibbles (18)            ``d · (q - 8)``, ``q`` in 0..15
Q4_1     ``d`` fp16, ``m`` fp16, 16 bytes of nibbles (20)  ``d · q + m``, ``q`` in 0..15
Q8_0     ``d`` fp16, 32 int8 (34)                        ``d · q``, ``q`` in -128..127
=======  ==============================================  ============================================

Nibble order (both 4-bit types): byte ``j`` of a block holds weight ``j`` in its low nibble and
weight ``j + 16`` in its high nibble.

Exact mappings from a grid ``w = (c - z) · s`` (per group, ``c`` the stored code):

* Q4_0 ← symmetric ``b ≤ 4`` bits (``z = 0``, ``c`` in ``[-2^(b-1), 2^(b-1) - 1]`` ⊂ ``[-8, 7]``):
  ``q = c + 8``, ``d = s``.
* Q4_1 ← any ``b ≤ 4`` grid: ``q = c - qmin`` (``qmin`` = 0 asymmetric, ``-2^(b-1)`` symmetric),
  ``d = s``, ``m = s · (qmin - z)`` — for asymmetric grids ``m = -s · z``.
* Q8_0 ← symmetric ``b ≤ 8`` bits: ``q = c``, ``d = s``; asymmetric ``b ≤ 7`` when every
  ``c - z`` lies in ``[-128, 127]``: ``q = c - z``, ``d = s``.

Groups must be a multiple of 32 (per channel included: ``C_in`` a multiple of 32); the group's
scale is repeated for each of its 32-blocks. The only change to the weights is the fp16 rounding
of ``d`` (and ``m``), measured by :func:`max_abs_error`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

QK = 32
QTYPES = ("q4_0", "q4_1", "q8_0")
BLOCK_BYTES = {"q4_0": 2 + QK // 2, "q4_1": 4 + QK // 2, "q8_0": 2 + QK}
FP16_MAX = float(np.finfo(np.float16).max)


class GridMismatch(ValueError):
    """The grid has no exact encoding in the requested block type (the message says why)."""


@dataclass
class Grid:
    """A weight grid as numpy arrays: ``w = (codes - zero_point) · scale`` per group of columns.

    Attributes:
        codes: ``[rows, cols]`` integer codes.
        scale: ``[rows, n_groups]`` float32.
        zero_point: ``[rows, n_groups]`` integers.
        bits, group_size, symmetric: As in ``QuantizedWeight``.
    """

    codes: np.ndarray
    scale: np.ndarray
    zero_point: np.ndarray
    bits: int
    group_size: int
    symmetric: bool

    @classmethod
    def from_qweight(cls, qw) -> "Grid":
        return cls(
            qw.int_weight.cpu().numpy().astype(np.int32), qw.scale.detach().cpu().float().numpy(),
            qw.zero_point.cpu().numpy().astype(np.int32), int(qw.bits), int(qw.group_size), bool(qw.symmetric),
        )

    @property
    def qmin(self) -> int:
        return -(2 ** (self.bits - 1)) if self.symmetric else 0

    def rows_taken(self, index: np.ndarray) -> "Grid":
        """The grid with its rows reordered by ``index`` (codes, scales and zero points alike)."""
        return Grid(self.codes[index], self.scale[index], self.zero_point[index], self.bits, self.group_size,
                    self.symmetric)

    def dequantize(self) -> np.ndarray:
        """``[rows, cols]`` float32 weight, computed as ``QuantizedWeight.dequantize`` does."""
        s = np.repeat(self.scale.astype(np.float32), self.group_size, axis=1)
        z = np.repeat(self.zero_point.astype(np.float32), self.group_size, axis=1)
        return (self.codes.astype(np.float32) - z) * s

    def dequantize_step(self) -> np.ndarray:
        """``[rows, cols]`` grid step ``|s|`` of every weight (to express errors in steps)."""
        return np.repeat(np.abs(self.scale.astype(np.float32)), self.group_size, axis=1)

    def per_block(self, x: np.ndarray) -> np.ndarray:
        """``[rows, n_groups]`` per-group values repeated to ``[rows, cols / 32]`` per-block values."""
        return np.repeat(x, self.group_size // QK, axis=1)


def exact_mapping_problem(grid: Grid, qtype: str) -> str | None:
    """Why ``grid`` cannot be written exactly as ``qtype`` (``None`` if it can)."""
    cols = grid.codes.shape[1]
    if qtype not in QTYPES:
        return f"unknown GGUF type {qtype!r}; choose one of {', '.join(QTYPES)}"
    if cols % QK:
        return f"input width {cols} is not a multiple of the {QK}-weight GGUF block"
    if grid.group_size % QK:
        return (f"group size {grid.group_size} is not a multiple of {QK}: a {QK}-block would need more than one "
                f"scale (quantize with groups of 32, e.g. --scheme gguf-{qtype})")
    desc = f"{grid.bits}-bit {'symmetric' if grid.symmetric else 'asymmetric'} grid"
    if qtype == "q4_0":
        if not grid.symmetric:
            return f"{desc}: Q4_0 has no zero point (d·(q-8)); use --type q4_1 or a symmetric scheme"
        if grid.bits > 4:
            return f"{desc} has more levels than Q4_0's 16; use --type q8_0"
    elif qtype == "q4_1":
        if grid.bits > 4:
            return f"{desc} has more levels than Q4_1's 16; use --type q8_0"
    else:
        if not grid.symmetric:
            if grid.bits >= 8:
                return f"{desc}: Q8_0 holds signed int8 without a zero point; use a symmetric 8-bit scheme"
            diff = grid.codes - np.repeat(grid.zero_point, grid.group_size, axis=1)
            if diff.size and (diff.min() < -128 or diff.max() > 127):
                return f"{desc}: code - zero_point spans [{diff.min()}, {diff.max()}], outside Q8_0's int8"
    if not np.all(np.isfinite(grid.scale)) or np.abs(grid.scale).max(initial=0.0) > FP16_MAX:
        return f"a scale is not finite or exceeds the fp16 range ({FP16_MAX:g}) of GGUF block scales"
    if qtype == "q4_1":
        m = np.abs(grid.scale * (grid.qmin - grid.zero_point)).max(initial=0.0)
        if m > FP16_MAX:
            return f"a block minimum -s·z exceeds the fp16 range ({FP16_MAX:g})"
    return None


def _nibbles(q: np.ndarray) -> np.ndarray:
    """``[rows, n_blocks, 32]`` values 0..15 to ``[rows, n_blocks, 16]`` bytes (j low, j+16 high)."""
    q = q.astype(np.uint8)
    return q[..., : QK // 2] | (q[..., QK // 2:] << np.uint8(4))


def _fp16_bytes(x: np.ndarray) -> np.ndarray:
    """``[rows, n_blocks]`` float to ``[rows, n_blocks, 2]`` little-endian fp16 bytes."""
    return x.astype("<f2")[..., None].view(np.uint8)


def encode_exact(grid: Grid, qtype: str) -> np.ndarray:
    """Block bytes ``[rows, cols / 32 · block_bytes]`` (uint8) holding ``grid``'s codes exactly.

    Raises:
        GridMismatch: the grid has no exact encoding in ``qtype`` (see :func:`exact_mapping_problem`).
    """
    problem = exact_mapping_problem(grid, qtype)
    if problem:
        raise GridMismatch(problem)
    rows, cols = grid.codes.shape
    nb = cols // QK
    codes = grid.codes.reshape(rows, nb, QK)
    d = grid.per_block(grid.scale).astype(np.float32)
    if qtype == "q4_0":
        parts = [_fp16_bytes(d), _nibbles(codes + 8)]
    elif qtype == "q4_1":
        m = grid.per_block(grid.scale * (grid.qmin - grid.zero_point).astype(np.float32))
        parts = [_fp16_bytes(d), _fp16_bytes(m), _nibbles(codes - grid.qmin)]
    else:
        z = grid.per_block(grid.zero_point).reshape(rows, nb, 1)
        q = (codes - z).astype(np.int8).view(np.uint8)
        parts = [_fp16_bytes(d), q]
    out = np.concatenate(parts, axis=-1)
    assert out.shape[-1] == BLOCK_BYTES[qtype]
    return np.ascontiguousarray(out.reshape(rows, nb * BLOCK_BYTES[qtype]))


def ggml_type(qtype: str):
    import gguf

    return {"q4_0": gguf.GGMLQuantizationType.Q4_0, "q4_1": gguf.GGMLQuantizationType.Q4_1,
            "q8_0": gguf.GGMLQuantizationType.Q8_0}[qtype]


def encode_lossy(weight: np.ndarray, qtype: str) -> np.ndarray:
    """Block bytes re-rounded from a float ``[rows, cols]`` weight by gguf's reference quantizer.

    Only for ``lossy=True`` exports of grids :func:`encode_exact` refuses; the codes are no longer ours.
    """
    import gguf

    if weight.shape[1] % QK:
        raise GridMismatch(f"input width {weight.shape[1]} is not a multiple of {QK}; no GGUF block type holds it")
    return gguf.quants.quantize(np.ascontiguousarray(weight, dtype=np.float32), ggml_type(qtype))


def decode(blocks: np.ndarray, qtype: str) -> np.ndarray:
    """gguf's own dequantizer of block bytes (the independent reference the tests and reports use)."""
    import gguf

    return gguf.quants.dequantize(blocks, ggml_type(qtype))


def max_abs_error(blocks: np.ndarray, qtype: str, reference: np.ndarray, step: np.ndarray | None = None) -> float:
    """Largest ``|decode(blocks) - reference|`` (the fp16 rounding of ``d``/``m``, or the lossy re-rounding).

    With ``step`` (the grid step of each weight) the error is in steps: ``|error| / step``.
    """
    if reference.size == 0:
        return 0.0
    err = np.abs(decode(blocks, qtype).astype(np.float64) - reference.astype(np.float64))
    if step is not None:
        err = err / np.maximum(step.astype(np.float64), np.finfo(np.float32).tiny)
    return float(err.max())


def llama_qk_row_order(rows: int, n_head: int) -> np.ndarray:
    """Row index that turns HF's rotate-half Q/K layout into llama.cpp's interleaved one.

    ``new[i] = old[order[i]]``: within each head of ``hd`` rows, row ``2j`` is old row ``j`` and row
    ``2j + 1`` is old row ``j + hd/2`` (llama.cpp's ``permute``, applied to row indices so that codes,
    scales, zero points and biases move together). ``n_head`` is the head count of this projection
    (``num_key_value_heads`` for k_proj).
    """
    if rows % n_head or (rows // n_head) % 2:
        raise GridMismatch(f"{rows} rows do not split into {n_head} heads of even size")
    hd = rows // n_head
    return np.arange(rows).reshape(n_head, 2, hd // 2).swapaxes(1, 2).reshape(rows)
