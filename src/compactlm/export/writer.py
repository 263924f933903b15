"""``export_model``: write a quantized model in a deployable format, falling back when it can't.

Formats:

* ``compressed-tensors`` — integer checkpoint vLLM serves (:mod:`compactlm.export.compressed_tensors`);
* ``dequantized`` — a compactlm run directory: ``model/`` is a plain HF checkpoint holding the
  dequantized weights (its ``config.json`` records the quantization under
  ``compactlm_quantization``), beside ``quantization.json`` and ``quant_state.safetensors`` so
  :func:`compactlm.models.load_model` restores the exact ``QuantLinear`` modules.

A model the compressed-tensors format cannot hold (e.g. ``-kv8``, GPT-2 ``Conv1D``) is written
``dequantized`` with a warning naming the reason.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from torch import nn

from compactlm.errors import CompactLMError
from compactlm.export.compressed_tensors import EXPORT_META, ExportUnsupported, export_compressed_tensors
from compactlm.io import atomic_dir, read_json, write_json

log = logging.getLogger(__name__)

FORMATS = ("compressed-tensors", "dequantized")


def write_dequantized(model: nn.Module, tokenizer, out_dir: str | os.PathLike, reason: str | None = None) -> dict:
    """Write a run directory whose ``model/`` is a dequantized HF checkpoint (see module docstring)."""
    from compactlm.models import save_quantized
    from compactlm.models.checkpoint import QUANT_META

    out = Path(out_dir)
    save_quantized(model, tokenizer, out, extra_config={"export_format": "dequantized"})
    meta = read_json(out / QUANT_META)
    config_path = out / "model" / "config.json"
    config = read_json(config_path)
    config["compactlm_quantization"] = {
        "note": "weights are dequantized from an integer grid; ../quantization.json and "
        "../quant_state.safetensors hold the grid and the activation quantizers",
        "reason": reason,
        "modules": meta["modules"],
    }
    write_json(config_path, config)
    report = {"format": "dequantized", "reason": reason, "vllm_servable": False,
              "vllm_notes": ["dequantized weights: vLLM serves them as a full-precision model"]}
    write_json(out / EXPORT_META, report)
    return report


def export_model(
    model: nn.Module, tokenizer, out_dir: str | os.PathLike, format: str = "compressed-tensors", overwrite: bool = False
) -> dict:
    """Export a quantized model into ``out_dir`` (written atomically).

    Args:
        model: Model whose block linears are ``QuantLinear``.
        tokenizer: Saved with the checkpoint (may be ``None``).
        out_dir: Folder to create.
        format: ``"compressed-tensors"`` or ``"dequantized"``.
        overwrite: Replace an existing ``out_dir``.

    Returns:
        The export report (also written to ``<out_dir>/compactlm_export.json``).

    Raises:
        CompactLMError: unknown format, or the model is not quantized.
    """
    if format not in FORMATS:
        raise CompactLMError(f"--format: unknown export format {format!r}; choose one of {', '.join(FORMATS)}")
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        if format == "dequantized":
            return write_dequantized(model, tokenizer, tmp)
        try:
            return export_compressed_tensors(model, tokenizer, tmp)
        except ExportUnsupported as e:
            log.warning("export: compressed-tensors cannot hold this model (%s); writing a dequantized "
                        "HF checkpoint with the quantization recorded in its config instead", e)
            for child in tmp.iterdir():
                shutil.rmtree(child) if child.is_dir() else child.unlink()
            return write_dequantized(model, tokenizer, tmp, reason=str(e))
