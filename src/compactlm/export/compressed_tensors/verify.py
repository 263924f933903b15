"""Check an exported compressed-tensors checkpoint by reloading it with transformers and comparing logits
against the fake-quant model it came from."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from torch import nn

from compactlm.errors import CompactLMError
from compactlm.export.compressed_tensors.convention import PACKED

log = logging.getLogger(__name__)


def has_asymmetric_packed_weights(quantization_config: dict) -> bool:
    """Whether a compressed-tensors ``quantization_config`` stores asymmetric ``pack-quantized`` weights."""
    default_fmt = quantization_config.get("format")
    for group in (quantization_config.get("config_groups") or {}).values():
        weights = group.get("weights") or {}
        if (group.get("format") or default_fmt) == PACKED and weights and not weights.get("symmetric", True):
            return True
    return False


def _is_packed_zero_point_failure(error: BaseException, quantization_config: dict) -> bool:
    """The known compressed-tensors 0.20 failure: asymmetric packed zero points reload with a size mismatch."""
    return (
        isinstance(error, RuntimeError)
        and "mismatched_sizes" in str(error)
        and has_asymmetric_packed_weights(quantization_config)
    )


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__


def transformers_reload_error(model: nn.Module, out_dir: str | os.PathLike, input_ids: torch.Tensor) -> dict:
    """Reload an exported checkpoint with transformers + compressed-tensors and compare logits.

    transformers' default (compressed) loading path is tried first: it re-applies the activation
    quantization (static per-tensor / dynamic per-token) from the config. With compressed-tensors
    0.20 that path cannot load *asymmetric packed* weights (zero points on the meta device are not
    packed: transformers reports a size mismatch), so exactly that failure falls back to
    ``CompressedTensorsConfig(dequantize=True)``, which decompresses the same integer grid at load
    time but runs activations in full precision. Any other failure is an error.

    Args:
        model: The fake-quant model that was exported.
        out_dir: The exported checkpoint.
        input_ids: ``(B, T)`` token ids to compare on.

    Returns:
        ``{"max_abs_logit_diff", "max_abs_logit", "loader"}``; ``loader`` is ``"compressed"`` or
        ``"dequantize"``.

    Raises:
        CompactLMError: transformers cannot reload the checkpoint (naming the loader and the cause).
    """
    import json

    import transformers as T

    device = next(model.parameters()).device
    with torch.no_grad():
        ref = model(input_ids=input_ids.to(device)).logits.float().cpu()
    qc = json.loads((Path(out_dir) / "config.json").read_text()).get("quantization_config") or {}
    loader = "compressed"
    try:
        try:
            hf = T.AutoModelForCausalLM.from_pretrained(out_dir)
        except Exception as e:  # noqa: BLE001 - only the known failure falls back
            if not _is_packed_zero_point_failure(e, qc):
                raise
            log.info("asymmetric packed weights: reloading %s with dequantize=True", out_dir)
            loader = "dequantize"
            hf = T.AutoModelForCausalLM.from_pretrained(
                out_dir, quantization_config=T.CompressedTensorsConfig(dequantize=True)
            )
    except Exception as e:  # noqa: BLE001 - reported as one line naming the checkpoint
        raise CompactLMError(
            f"--verify: transformers cannot reload {out_dir} ({loader} loader): {_first_line(e)}"
        ) from e
    with torch.no_grad():
        out = hf.eval()(input_ids=input_ids.cpu()).logits.float()
    return {
        "max_abs_logit_diff": float((out - ref).abs().max()),
        "max_abs_logit": float(ref.abs().max()),
        "loader": loader,
    }
