"""Export to (and import from) the compressed-tensors checkpoint format that vLLM serves.

A model whose block linears are :class:`~compactlm.quant.QuantLinear` is written as a Hugging Face
checkpoint whose ``config.json`` carries a compressed-tensors ``quantization_config`` and whose
quantized linears are stored on their integer grid:

* ``pack-quantized`` (codes packed into int32) for weight-only schemes and for W4A8 — the layout of
  vLLM's WNA16 and W4A8-int kernels;
* ``int-quantized`` (int8 codes) for W8A8, with the static per-tensor input scale / zero point;
* per-token dynamic input activations (W4A8) recorded as ``dynamic: true, strategy: token``;
* groups (``strategy: group``) when the scheme uses them.

The compressed-tensors library does the packing (``ModelCompressor``); this module only maps our
grid onto its conventions. compressed-tensors always uses a *signed* integer range
``[-2^(b-1), 2^(b-1)-1]``; our asymmetric grids are unsigned ``[0, 2^b-1]``, so asymmetric codes and
zero points are shifted by ``2^(b-1)`` on the way out and back in — the real values
``(q - z)·s`` are identical.

The importer :func:`load_compressed_tensors` reads a compressed-tensors checkpoint (ours or
llm-compressor's GPTQ / AWQ / SmoothQuant output) back into ``QuantLinear`` modules, so every
checkpoint is evaluated by the same fake-quant code path.

What the format cannot hold (8-bit k/v outputs quantized per token, GPT-2 ``Conv1D`` layers, a
non-integer grid) raises :class:`ExportUnsupported`; :func:`compactlm.export.export_model` then falls
back to a dequantized HF checkpoint. Schemes the format holds but vLLM has no kernel for (2/3-bit
weights, W4A8 with asymmetric weights, W8A8 with asymmetric weights) are exported and flagged
``vllm_servable: false`` with the reason.
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from pathlib import Path

import torch
from torch import nn

from compactlm.errors import CompactLMError
from compactlm.io import write_json
from compactlm.models.checkpoint import quant_linears
from compactlm.models.specs import get_spec, set_module
from compactlm.quant.activation import ActQuantizer
from compactlm.quant.linear import QuantLinear
from compactlm.quant.qweight import QuantizedWeight, code_dtype

log = logging.getLogger(__name__)

EXPORT_META = "compactlm_export.json"
PACKED = "pack-quantized"
INT = "int-quantized"


class ExportUnsupported(CompactLMError):
    """The model's quantization cannot be represented in the compressed-tensors format."""


def _offset(bits: int, symmetric: bool) -> int:
    """Shift from our code convention to compressed-tensors' signed range (0 for symmetric grids)."""
    return 0 if symmetric else 2 ** (bits - 1)


# --------------------------------------------------------------------------------------------
# QuantLinear -> compressed-tensors scheme
# --------------------------------------------------------------------------------------------


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
    off = _offset(q.bits, q.symmetric)
    with torch.no_grad():
        lin.weight_scale.copy_(q.weight_scale.to(lin.weight_scale.dtype).reshape(lin.weight_scale.shape))
        if hasattr(lin, "weight_zero_point"):
            zp = (q.weight_zero_point - off).reshape(lin.weight_zero_point.shape)
            lin.weight_zero_point.copy_(zp.to(lin.weight_zero_point.dtype))
        a = q.input_quantizer
        if a is not None and a.static:
            lin.input_scale.copy_(a.scale.reshape(1).to(lin.input_scale.dtype))
            if hasattr(lin, "input_zero_point"):
                a_off = _offset(a.bits, a.symmetric)
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


# --------------------------------------------------------------------------------------------
# compressed-tensors checkpoint -> QuantLinear
# --------------------------------------------------------------------------------------------


def is_compressed_tensors_checkpoint(path: str | os.PathLike) -> bool:
    """Whether ``path`` is an HF folder whose config carries a compressed-tensors quantization_config."""
    import json

    cfg = Path(path) / "config.json"
    if not cfg.is_file():
        return False
    try:
        qc = json.loads(cfg.read_text()).get("quantization_config") or {}
    except (json.JSONDecodeError, AttributeError):
        return False
    return qc.get("quant_method") == "compressed-tensors"


def _check_import_scheme(name: str, scheme) -> None:
    w = scheme.weights
    if w is None:
        raise CompactLMError(f"--model: {name} has activation-only quantization; compactlm needs an integer weight grid")
    if str(w.type) not in ("int", "QuantizationType.INT") and getattr(w.type, "value", w.type) != "int":
        raise CompactLMError(f"--model: {name} uses {w.type} weights; only integer grids can be imported")
    strategy = getattr(w.strategy, "value", w.strategy)
    if strategy not in ("channel", "group", "tensor"):
        raise CompactLMError(f"--model: {name} uses weight strategy {strategy!r}; supported: channel, group, tensor")
    actorder = getattr(w.actorder, "value", w.actorder)
    if actorder == "group":
        raise CompactLMError(
            f"--model: {name} was quantized with activation ordering 'group' (permuted groups, weight_g_idx); "
            "re-quantize with actorder='static' or None"
        )
    if scheme.output_activations is not None:
        raise CompactLMError(f"--model: {name} quantizes output activations; not supported by the importer")
    a = scheme.input_activations
    if a is not None:
        a_strategy = getattr(a.strategy, "value", a.strategy)
        if getattr(a.type, "value", a.type) != "int" or a_strategy not in ("tensor", "token"):
            raise CompactLMError(
                f"--model: {name} has {a.type} {a_strategy} input activations; supported: int per tensor / per token"
            )
        if a.dynamic not in (True, False):
            raise CompactLMError(f"--model: {name} has locally dynamic activations ({a.dynamic}); not supported")


def _quant_linear_from_state(name: str, state: dict[str, torch.Tensor], scheme, fmt: str) -> QuantLinear:
    """Build a ``QuantLinear`` from one module's compressed tensors (local names ``weight_packed``...).

    The library's compressor unpacks the codes and dequantizes them in float32 with float32 scales;
    since ``w = (q - z)·s`` exactly up to float rounding, ``round(w / s) + z`` gives back the
    integer codes bit-exactly.
    """
    from compressed_tensors.compressors import BaseCompressor

    _check_import_scheme(name, scheme)
    if "weight_g_idx" in state:
        raise CompactLMError(f"--model: {name} carries weight_g_idx (activation ordering); not supported")
    state = {k: (v.float() if v.is_floating_point() else v) for k, v in state.items()}
    w_args = scheme.weights
    dense = state if fmt == "dense" else BaseCompressor.get_value_from_registry(fmt).decompress(state, scheme)
    w = dense["weight"].float()
    c_out, c_in = w.shape
    bits, symmetric = w_args.num_bits, bool(w_args.symmetric)
    strategy = getattr(w_args.strategy, "value", w_args.strategy)
    group = c_in if strategy in ("channel", "tensor") else int(w_args.group_size)
    n_groups = c_in // group
    scale = dense["weight_scale"].float().reshape(-1, n_groups).expand(c_out, n_groups)
    zp = dense.get("weight_zero_point")
    zp = torch.zeros_like(scale) if (symmetric or zp is None) else zp.float().reshape(-1, n_groups).expand(c_out, n_groups)
    zp = zp.round()
    off = _offset(bits, symmetric)
    codes = torch.round(w / scale.repeat_interleave(group, dim=1)) + zp.repeat_interleave(group, dim=1) + off
    qw = QuantizedWeight(
        int_weight=codes.to(code_dtype(symmetric)),
        scale=scale.contiguous().clone(),
        zero_point=(zp + off).to(torch.int32).contiguous(),
        bits=bits,
        group_size=group,
        symmetric=symmetric,
    )
    qw.validate()
    act = None
    a_args = scheme.input_activations
    if a_args is not None:
        granularity = getattr(a_args.strategy, "value", a_args.strategy)
        act = ActQuantizer(a_args.num_bits, granularity, static=not a_args.dynamic, symmetric=bool(a_args.symmetric))
        if not a_args.dynamic:
            act.scale.copy_(state["input_scale"].float().reshape(()))
            izp = state.get("input_zero_point")
            if not a_args.symmetric and izp is not None:
                act.zero_point.copy_(izp.float().reshape(()).round() + _offset(a_args.num_bits, False))
    return QuantLinear(qw, state.get("bias"), act)


def load_compressed_tensors(
    path: str | os.PathLike,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    auto_class=None,
) -> nn.Module:
    """Load a compressed-tensors checkpoint with its quantized linears as ``QuantLinear`` modules.

    Works for checkpoints written by :func:`export_compressed_tensors` and by llm-compressor
    (GPTQ, AWQ, SmoothQuant + W8A8...), so both evaluate through the same fake-quant path. The
    model is built from its config and the safetensors are read directly (transformers'
    compressed-tensors loader is bypassed: with compressed-tensors 0.20 it cannot load packed
    asymmetric zero points); config groups are matched to modules with compressed-tensors' own
    target matching.

    Args:
        path: HF folder with a compressed-tensors ``quantization_config``.
        dtype: Dtype of the non-quantized parameters and of activations.
        device: Where to put the model.
        auto_class: transformers auto class (default ``AutoModelForCausalLM``).

    Returns:
        The model in eval mode, its quantized linears replaced by ``QuantLinear`` (integer codes,
        scales and zero points read from the checkpoint; static input ranges restored).

    Raises:
        CompactLMError: not a compressed-tensors checkpoint, or a scheme the importer cannot map.
    """
    import transformers as T
    from compressed_tensors.quantization import QuantizationConfig
    from compressed_tensors.utils.match import match_named_modules
    from safetensors.torch import load_file

    path = Path(path)
    if not is_compressed_tensors_checkpoint(path):
        raise CompactLMError(f"--model: {path} is not a compressed-tensors checkpoint (no quantization_config)")
    config = T.AutoConfig.from_pretrained(path)
    qc = config.quantization_config
    qc = dict(qc if isinstance(qc, dict) else qc.to_dict())
    qcfg = QuantizationConfig.model_validate(qc)
    if qcfg.kv_cache_scheme is not None:
        raise CompactLMError(f"--model: {path} quantizes the k/v cache; the importer does not support kv_cache_scheme")
    del config.quantization_config
    config.compactlm_imported_from = qc
    get_spec(config.model_type)  # clear error for unsupported architectures
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise CompactLMError(f"--model: {path} has no .safetensors weights")
    state: dict[str, torch.Tensor] = {}
    for f in files:
        state.update(load_file(str(f)))
    model = (auto_class or T.AutoModelForCausalLM).from_config(config, dtype=dtype)
    assigned: dict[str, object] = {}
    for scheme in qcfg.config_groups.values():
        for name, module in match_named_modules(model, scheme.targets, qcfg.ignore):
            if isinstance(module, nn.Linear):
                assigned.setdefault(name, scheme)
    if not assigned:
        raise CompactLMError(f"--model: {path} declares compressed-tensors quantization but no linear matched it")
    default_fmt = getattr(qcfg.format, "value", qcfg.format) or "dense"
    for name, scheme in assigned.items():
        fmt = getattr(scheme.format, "value", scheme.format) or default_fmt
        if fmt == "mixed-precision":
            raise CompactLMError(f"--model: {name} has no per-module format in a mixed-precision checkpoint")
        prefix = f"{name}."
        local = {k[len(prefix):]: state.pop(k) for k in list(state) if k.startswith(prefix) and "." not in k[len(prefix):]}
        set_module(model, name, _quant_linear_from_state(name, local, scheme, fmt).to(dtype=dtype))
    result = model.load_state_dict(state, strict=False)
    if result.unexpected_keys:
        raise CompactLMError(f"--model: {path} holds tensors the model does not have: {result.unexpected_keys[:3]}")
    tied = set(getattr(model, "_tied_weights_keys", None) or [])
    ours = tuple(f"{n}." for n in assigned)  # QuantLinear buffers, filled from the compressed tensors above
    missing = [k for k in result.missing_keys if not (k.startswith(ours) or k in tied)]
    if missing:
        raise CompactLMError(f"--model: {path} lacks weights for {missing[:3]}")
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    log.info("loaded %s: %d compressed-tensors linears as QuantLinear", path, len(assigned))
    return model.to(device=device).eval()


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
