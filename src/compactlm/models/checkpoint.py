"""Save and restore quantized models as compactlm run directories.

A run directory holds:

* ``model/`` — a plain HF checkpoint (config, safetensors, tokenizer) whose block linears carry the
  *dequantized* weights, so any HF tool can load it as a full-precision model;
* ``quant_state.safetensors`` — the integer grids (``<module>.int_weight``, ``.weight_scale``,
  ``.weight_zero_point``) and static activation ranges;
* ``quantization.json`` — per module: bits, group size, symmetry, activation quantizers;
* ``config.json`` (the resolved run config) and ``report.json`` (what the run measured),
  written by the command that made the run.

:func:`compactlm.models.load_model` on the directory rebuilds the exact ``QuantLinear`` modules.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers.pytorch_utils import Conv1D

from compactlm.errors import CompactLMError
from compactlm.io import read_json, write_json
from compactlm.models.specs import get_spec, set_module
from compactlm.quant.activation import ActQuantizer
from compactlm.quant.linear import QuantLinear
from compactlm.quant.qweight import QuantizedWeight

QUANT_META = "quantization.json"
QUANT_STATE = "quant_state.safetensors"
FORMAT_VERSION = 1


def is_quantized_run(path: str | os.PathLike) -> bool:
    return (Path(path) / QUANT_META).is_file()


def quant_linears(model: nn.Module) -> dict[str, QuantLinear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, QuantLinear)}


def _act_meta(q: ActQuantizer | None) -> dict | None:
    if q is None:
        return None
    return {"bits": q.bits, "granularity": q.granularity, "static": q.static, "symmetric": q.symmetric}


def _float_module(q: QuantLinear, conv1d: bool) -> nn.Module:
    """An ordinary ``nn.Linear`` (or GPT-2 ``Conv1D``) holding the dequantized weight."""
    w = q.weight.detach()
    if conv1d:
        m = Conv1D(q.out_features, q.in_features)
        m.weight.data.copy_(w.t())
        if q.bias is not None:
            m.bias.data.copy_(q.bias.detach())
        return m
    m = nn.Linear(q.in_features, q.out_features, bias=q.bias is not None)
    m.weight.data.copy_(w)
    if q.bias is not None:
        m.bias.data.copy_(q.bias.detach())
    return m


def save_quantized(model: nn.Module, tokenizer, out_dir: str | os.PathLike, extra_config: dict | None = None) -> Path:
    """Write ``model`` (with ``QuantLinear`` modules) into ``out_dir`` (see the module docstring).

    The caller owns atomicity of the directory (:func:`compactlm.io.atomic_dir`).
    """
    out = Path(out_dir)
    spec = get_spec(model)
    qls = quant_linears(model)
    if not qls:
        raise CompactLMError("save_quantized: the model has no quantized linear layers")
    state: dict[str, torch.Tensor] = {}
    modules: dict[str, dict] = {}
    for name, q in qls.items():
        modules[name] = {
            "bits": q.bits,
            "group_size": q.group_size,
            "symmetric": q.symmetric,
            "in_features": q.in_features,
            "out_features": q.out_features,
            "input": _act_meta(q.input_quantizer),
            "output": _act_meta(q.output_quantizer),
        }
        state.update(q.qweight.state_dict(prefix=f"{name}."))
        if q.input_quantizer is not None and q.input_quantizer.static:
            state[f"{name}.input_scale"] = q.input_quantizer.scale.detach().reshape(1)
            state[f"{name}.input_zero_point"] = q.input_quantizer.zero_point.detach().reshape(1)
    # Swap in float modules for the HF checkpoint, then swap back.
    for name, q in qls.items():
        set_module(model, name, _float_module(q, spec.conv1d))
    try:
        model.save_pretrained(out / "model")
    finally:
        for name, q in qls.items():
            set_module(model, name, q)
    if tokenizer is not None:
        tokenizer.save_pretrained(out / "model")
    save_file({k: v.contiguous().cpu() for k, v in state.items()}, str(out / QUANT_STATE))
    write_json(out / QUANT_META, {"format_version": FORMAT_VERSION, "modules": modules, **(extra_config or {})})
    return out


def _act_from_meta(meta: dict | None) -> ActQuantizer | None:
    if meta is None:
        return None
    return ActQuantizer(meta["bits"], meta["granularity"], meta["static"], meta["symmetric"])


def restore_quantized(model: nn.Module, run_dir: str | os.PathLike) -> nn.Module:
    """Replace the linears of a freshly loaded ``model`` by the ``QuantLinear``s stored in ``run_dir``."""
    run_dir = Path(run_dir)
    meta = read_json(run_dir / QUANT_META)
    state_path = run_dir / QUANT_STATE
    if not state_path.is_file():
        raise CompactLMError(f"--model: {run_dir} lacks {QUANT_STATE}; the run is incomplete or corrupt")
    try:
        state = load_file(str(state_path))
    except Exception as e:  # safetensors raises its own error types for truncated files
        raise CompactLMError(f"--model: {state_path} is unreadable ({e})") from e
    device = next(model.parameters()).device
    for name, m in meta["modules"].items():
        try:
            qw = QuantizedWeight(
                state[f"{name}.int_weight"], state[f"{name}.scale"], state[f"{name}.zero_point"],
                m["bits"], m["group_size"], m["symmetric"],
            )
        except KeyError as e:
            raise CompactLMError(f"--model: {state_path} misses {e.args[0]}; the run is corrupt") from e
        original = model.get_submodule(name)
        bias = getattr(original, "bias", None)
        q = QuantLinear(qw, bias, _act_from_meta(m["input"]), _act_from_meta(m["output"]))
        if q.input_quantizer is not None and q.input_quantizer.static:
            q.input_quantizer.scale.copy_(state[f"{name}.input_scale"].reshape(()))
            q.input_quantizer.zero_point.copy_(state[f"{name}.input_zero_point"].reshape(()))
        set_module(model, name, q.to(device))
    return model
