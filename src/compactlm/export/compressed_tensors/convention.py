"""Conventions shared by the compressed-tensors writer, importer and reload check.

compressed-tensors always uses a *signed* integer range ``[-2^(b-1), 2^(b-1)-1]``; our asymmetric
grids are unsigned ``[0, 2^b-1]``, so asymmetric codes and zero points are shifted by ``2^(b-1)``
on the way out and back in (:func:`code_offset`) — the real values ``(q - z)·s`` are identical.
"""

from __future__ import annotations

from compactlm.errors import CompactLMError

EXPORT_META = "compactlm_export.json"
PACKED = "pack-quantized"
INT = "int-quantized"


class ExportUnsupported(CompactLMError):
    """The model's quantization cannot be represented in the compressed-tensors format."""


def code_offset(bits: int, symmetric: bool) -> int:
    """Shift from our code convention to compressed-tensors' signed range (0 for symmetric grids)."""
    return 0 if symmetric else 2 ** (bits - 1)
