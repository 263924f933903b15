"""Read a compressed-tensors checkpoint (ours or llm-compressor's GPTQ / AWQ / SmoothQuant output) back
into :class:`~compactlm.quant.QuantLinear` modules, so every checkpoint is evaluated by the same
fake-quant code path; schemes with no integer-grid form are refused with one line naming the module.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from torch import nn

from compactlm.errors import CompactLMError
from compactlm.export.compressed_tensors.convention import code_offset
from compactlm.models.specs import get_spec, set_module
from compactlm.quant.activation import ActQuantizer
from compactlm.quant.linear import QuantLinear
from compactlm.quant.qweight import QuantizedWeight, code_dtype

log = logging.getLogger(__name__)


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
    off = code_offset(bits, symmetric)
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
                act.zero_point.copy_(izp.float().reshape(()).round() + code_offset(a_args.num_bits, False))
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
