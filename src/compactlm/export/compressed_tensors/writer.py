"""Write a model whose block linears are :class:`~compactlm.quant.QuantLinear` as a compressed-tensors
checkpoint (the format vLLM serves).

The checkpoint is a Hugging Face folder whose ``config.json`` carries a compressed-tensors
``quantization_config`` and whose quantized linears are stored on their integer grid:

* ``pack-quantized`` (codes packed into int32) for weight-only schemes and for W4A8 — the layout of
  vLLM's WNA16 and W4A8-int kernels;
* ``int-quantized`` (int8 codes) for W8A8, with the static per-tensor input scale / zero point;
* per-token dynamic input activations (W4A8) recorded as ``dynamic: true, strategy: token``;
* groups (``strategy: group``) when the scheme uses them.

The compressed-tensors library does the packing (``ModelCompressor``); this module only maps our
grid onto its conventions (signed codes: :func:`~.convention.code_offset`).

What the format cannot hold (8-bit k/v outputs quantized per token, GPT-2 ``Conv1D`` layers, a
non-integer grid) raises :class:`~.convention.ExportUnsupported`; :func:`compactlm.export.export_model`
then falls back to a dequantized HF checkpoint. Schemes the format holds but vLLM has no kernel for
(2/3-bit weights, W4A8 with asymmetric weights, W8A8 with asymmetric weights) are exported and
flagged ``vllm_servable: false`` with the reason.
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from pathlib import Path

import torch
from torch import nn

from compactlm.errors import CompactLMError
from compactlm.export.compressed_tensors.convention import EXPORT_META, INT, PACKED, ExportUnsupported, code_offset
from compactlm.io import write_json
from compactlm.models.checkpoint import quant_linears
from compactlm.models.specs import get_spec, set_module
from compactlm.quant.activation import ActQuantizer
from compactlm.quant.linear import QuantLinear

log = logging.getLogger(__name__)


def _weight_args(q: QuantLinear):
    from compressed_tensors.quantization import QuantizationArgs

    per_channel = q.group_size == q.in_features
    return QuantizationArgs(
        num_bits=q.bits,
        type="int",
        symmetric=q.symmetric,
        strategy="channel" if per_channel else "group",
        group_size=None if per_channel else q.group_size,
    )


def _input_args(a: ActQuantizer):
    from compressed_tensors.quantization import QuantizationArgs

    return QuantizationArgs(
        num_bits=a.bits,
        type="int",
        symmetric=a.symmetric,
        strategy=a.granularity,  # "tensor" | "token"
        dynamic=not a.static,
    )


def scheme_key(q: QuantLinear) -> tuple:
    """Hashable description of a QuantLinear's quantization (modules with equal keys share a config group)."""
    a = q.input_quantizer
    act = None if a is None else (a.bits, a.granularity, a.static, a.symmetric)
    group = None if q.group_size == q.in_features else q.group_size
    return (q.bits, group, q.symmetric, act)


def check_exportable(name: str, q: nn.Module) -> None:
    """Raise :class:`ExportUnsupported` naming the reason if ``q`` has no compressed-tensors form."""
    if not isinstance(q, QuantLinear):
        raise ExportUnsupported(f"{name}: not a QuantLinear")
    if q.output_quantizer is not None:
        raise ExportUnsupported(
            f"{name}: 8-bit k/v outputs quantized per token (-kv8) have no compressed-tensors form "
            "(its kv_cache_scheme is per-tensor static, vLLM only serves FP8 k/v caches)"
        )
    a = q.input_quantizer
    if a is not None and a.static and not a.calibrated:
        raise ExportUnsupported(f"{name}: static input quantizer was never calibrated")


def vllm_support(key: tuple) -> str | None:
    """``None`` if vLLM has a compressed-tensors kernel for this scheme, else the reason it has not.

    Based on vLLM's scheme selection (``CompressedTensorsConfig._get_scheme_from_parts``): WNA16 for
    4/8-bit weights (zero points allowed), W8A8-int8 and W4A8-int need symmetric weights.
    """
    bits, group, symmetric, act = key
    if act is None:
        return None if bits in (4, 8) else f"vLLM's weight-only kernels take 4- or 8-bit weights, not {bits}-bit"
    a_bits, granularity, static, _ = act
    if a_bits != 8:
        return f"vLLM has no integer kernel for {a_bits}-bit activations"
    if not symmetric:
        return f"vLLM's W{bits}A8 integer kernels need symmetric weights (use a -sym scheme)"
    if bits == 8:
        if granularity == "tensor" and not static:
            return "vLLM's W8A8 kernel takes static per-tensor or dynamic per-token activations"
        return None
    if bits == 4:
        return None if granularity == "token" and not static else "vLLM's W4A8 kernel needs per-token dynamic activations"
    return f"vLLM has no W{bits}A8 integer kernel"


def _format_for(key: tuple) -> str:
    bits, _, _, act = key
    return INT if act is not None and bits == 8 else PACKED


def _ct_linear(q: QuantLinear, scheme) -> nn.Linear:
    """An ``nn.Linear`` carrying our grid as compressed-tensors qparams (status FROZEN, ready to compress)."""
    from compressed_tensors.quantization import QuantizationStatus
    from compressed_tensors.quantization.lifecycle.initialize import initialize_module_for_quantization

    dtype = q.bias.dtype if q.bias is not None else q.weight_scale.dtype
    lin = nn.Linear(q.in_features, q.out_features, bias=q.bias is not None, dtype=dtype, device=q.int_weight.device)
    with torch.no_grad():
        lin.weight.copy_(q.qweight.dequantize(torch.float32).to(dtype))
        if q.bias is not None:
            lin.bias.copy_(q.bias)
    initialize_module_for_quantization(lin, scheme)
    off = code_offset(q.bits, q.symmetric)
    with torch.no_grad():
        lin.weight_scale.copy_(q.weight_scale.to(lin.weight_scale.dtype).reshape(lin.weight_scale.shape))
        if hasattr(lin, "weight_zero_point"):
            zp = (q.weight_zero_point - off).reshape(lin.weight_zero_point.shape)
            lin.weight_zero_point.copy_(zp.to(lin.weight_zero_point.dtype))
        a = q.input_quantizer
        if a is not None and a.static:
            lin.input_scale.copy_(a.scale.reshape(1).to(lin.input_scale.dtype))
            if hasattr(lin, "input_zero_point"):
                a_off = code_offset(a.bits, a.symmetric)
                lin.input_zero_point.copy_((a.zero_point.round() - a_off).reshape(1).to(lin.input_zero_point.dtype))
    lin.quantization_status = QuantizationStatus.FROZEN
    return lin


def export_compressed_tensors(model: nn.Module, tokenizer, out_dir: str | os.PathLike) -> dict:
    """Write ``model`` (block linears are ``QuantLinear``) as a compressed-tensors checkpoint.

    The model is modified only temporarily (its ``QuantLinear`` modules are swapped back).
    The caller owns atomicity of ``out_dir`` (:func:`compactlm.io.atomic_dir`).

    Args:
        model: Quantized HF model.
        tokenizer: Saved beside the weights when not ``None``.
        out_dir: Folder to write (``config.json``, ``model.safetensors``, tokenizer files,
            ``compactlm_export.json``).

    Returns:
        Report: ``format`` (compressed-tensors format of the checkpoint), ``groups`` (scheme per
        config group with its module count), ``vllm_servable`` and ``vllm_notes``.

    Raises:
        ExportUnsupported: some layer's quantization has no compressed-tensors form.
    """
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.quantization import QuantizationScheme

    qls = quant_linears(model)
    if not qls:
        raise CompactLMError("export: the model has no quantized linear layers; quantize it first (compactlm quantize)")
    if get_spec(model).conv1d:
        raise ExportUnsupported(
            "export: GPT-2 Conv1D layers are not nn.Linear; compressed-tensors cannot pack them"
        )
    for name, q in qls.items():
        check_exportable(name, q)
    by_key: dict[tuple, list[str]] = defaultdict(list)
    for name, q in qls.items():
        by_key[scheme_key(q)].append(name)
    schemes = {}
    for key, names in by_key.items():
        q = qls[names[0]]
        schemes[key] = QuantizationScheme(
            targets=["Linear"] if len(by_key) == 1 else names,
            weights=_weight_args(q),
            input_activations=None if q.input_quantizer is None else _input_args(q.input_quantizer),
            format=_format_for(key),
        )
    out = Path(out_dir)
    temp = {name: _ct_linear(q, schemes[scheme_key(q)]) for name, q in qls.items()}
    compressor = None
    try:
        for name, lin in temp.items():
            set_module(model, name, lin)
        compressor = ModelCompressor.from_pretrained_model(model)
        compressor.compress_model(model)
        model.save_pretrained(out)
        compressor.update_config(str(out))
    finally:
        if compressor is not None:
            compressor.remove_decompression_hook(model)
        for name, q in qls.items():
            set_module(model, name, q)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    notes = {}
    groups = []
    for key, names in by_key.items():
        reason = vllm_support(key)
        bits, group, symmetric, act = key
        groups.append({
            "modules": len(names), "format": _format_for(key), "weight_bits": bits, "group_size": group,
            "weight_symmetric": symmetric,
            "input": None if act is None else dict(zip(("bits", "granularity", "static", "symmetric"), act)),
            "vllm_servable": reason is None,
        })
        if reason:
            notes[_format_for(key)] = reason
    report = {
        "format": "compressed-tensors",
        "compression_format": compressor.quantization_config.format,
        "groups": groups,
        "vllm_servable": not notes,
        "vllm_notes": sorted(set(notes.values())),
    }
    write_json(out / EXPORT_META, report)
    for reason in report["vllm_notes"]:
        log.warning("export: %s holds a valid compressed-tensors checkpoint, but %s", out, reason)
    return report
