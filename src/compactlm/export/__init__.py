"""Deployable exports of quantized models: compressed-tensors (vLLM), dequantized HF checkpoints, GGUF (llama.cpp)."""

from compactlm.export.compressed_tensors import (
    ExportUnsupported,
    export_compressed_tensors,
    is_compressed_tensors_checkpoint,
    load_compressed_tensors,
    transformers_reload_error,
)
from compactlm.export.gguf import export_gguf
from compactlm.export.writer import FORMATS, export_model, write_dequantized

__all__ = [
    "FORMATS", "ExportUnsupported", "export_compressed_tensors", "export_gguf", "export_model", "is_compressed_tensors_checkpoint",
    "load_compressed_tensors", "transformers_reload_error", "write_dequantized",
]
