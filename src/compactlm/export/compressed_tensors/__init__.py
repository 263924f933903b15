"""Export to (and import from) the compressed-tensors checkpoint format that vLLM serves.

* :mod:`.writer` — :func:`export_compressed_tensors`: ``QuantLinear`` grids -> ``pack-quantized`` /
  ``int-quantized`` checkpoint, with vLLM servability per config group;
* :mod:`.importer` — :func:`load_compressed_tensors`: any compressed-tensors checkpoint (ours,
  llm-compressor's) -> ``QuantLinear`` modules, and the checks of which schemes map onto our grid;
* :mod:`.verify` — :func:`transformers_reload_error`: reload with transformers, compare logits;
* :mod:`.convention` — the format names, the signed-code offset, :class:`ExportUnsupported`.
"""

from compactlm.export.compressed_tensors.convention import EXPORT_META, INT, PACKED, ExportUnsupported, code_offset
from compactlm.export.compressed_tensors.importer import is_compressed_tensors_checkpoint, load_compressed_tensors
from compactlm.export.compressed_tensors.verify import has_asymmetric_packed_weights, transformers_reload_error
from compactlm.export.compressed_tensors.writer import (
    check_exportable,
    export_compressed_tensors,
    scheme_key,
    vllm_support,
)

__all__ = [
    "EXPORT_META", "INT", "PACKED", "ExportUnsupported", "code_offset", "check_exportable", "export_compressed_tensors",
    "has_asymmetric_packed_weights", "is_compressed_tensors_checkpoint", "load_compressed_tensors", "scheme_key",
    "transformers_reload_error", "vllm_support",
]
