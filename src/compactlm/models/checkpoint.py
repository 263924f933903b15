"""Save and restore quantized models as compactlm run directories.

A run directory (format 2) holds:

* ``model/`` — the model's config, generation config and tokenizer, and ``model.safetensors`` with
  the tensors that are *not* quantized (embeddings, norms, heads), in ``unquantized_dtype``
  (bfloat16 by default); with ``dequantized=True`` it is instead a full plain HF checkpoint whose
  quantized linears carry their dequantized weights, for tools that want one;
* ``quant_state.safetensors`` — per quantized linear ``<module>.weight_packed`` (codes packed as in
  :mod:`compactlm.quant.packing`), ``.weight_scale`` (fp32), ``.weight_zero_point`` (int16),
  ``.bias`` and static activation ranges;
* ``quantization.json`` — format version, per module: bits, group size, symmetry, activation quantizers;
* ``config.json`` (the resolved run config) and ``report.json`` (what the run measured),
  written by the command that made the run.

:func:`load_quantized_run` builds the model with its parameters on the meta device, puts the
``QuantLinear`` modules in place from the packed grids and loads only the unquantized tensors, so no
full-precision copy of a quantized weight is ever materialised. Format-1 run directories (full
dequantized ``model/`` and unpacked ``int_weight`` codes) still load.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from transformers.pytorch_utils import Conv1D

from compactlm.errors import CompactLMError
from compactlm.io import read_json, write_json
from compactlm.memory import release_freed_memory
from compactlm.models.specs import get_spec, set_module
from compactlm.quant.activation import ActQuantizer
from compactlm.quant.linear import QuantLinear, quant_linears
from compactlm.quant.qweight import QuantizedWeight

QUANT_META = "quantization.json"
QUANT_STATE = "quant_state.safetensors"
WEIGHTS = "model.safetensors"
FORMAT_VERSION = 2

__all__ = ["QUANT_META", "QUANT_STATE", "FORMAT_VERSION", "is_quantized_run", "quant_linears", "save_quantized",
           "load_quantized_run"]


def is_quantized_run(path: str | os.PathLike) -> bool:
    return (Path(path) / QUANT_META).is_file()


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
    else:
        m = nn.Linear(q.in_features, q.out_features, bias=q.bias is not None)
        m.weight.data.copy_(w)
    if q.bias is not None:
        m.bias.data.copy_(q.bias.detach())
    return m


def _unquantized_state(model: nn.Module, skip: tuple[str, ...], dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    """Parameters and persistent buffers outside ``skip`` prefixes, tied duplicates dropped."""
    state, seen = {}, set()
    for name, t in model.state_dict().items():
        if name.startswith(skip):
            continue
        key = (t.data_ptr(), t.shape, t.dtype)
        if t.numel() and key in seen:  # tied weights (lm_head = embed_tokens) are stored once
            continue
        seen.add(key)
        if dtype is not None and t.is_floating_point():
            t = t.to(dtype)
        state[name] = t.detach().contiguous().cpu()
    return state


def save_quantized(
    model: nn.Module,
    tokenizer,
    out_dir: str | os.PathLike,
    extra_config: dict | None = None,
    unquantized_dtype: torch.dtype | None = torch.bfloat16,
    dequantized: bool = False,
) -> Path:
    """Write ``model`` (with ``QuantLinear`` modules) into ``out_dir`` (see the module docstring).

    Args:
        unquantized_dtype: dtype of the float tensors that are not quantized (``None``: as in the model).
        dequantized: Make ``model/`` a full plain HF checkpoint with dequantized weights.

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
        state[f"{name}.weight_packed"] = q.packed_codes()
        state[f"{name}.weight_scale"] = q.weight_scale.float()
        state[f"{name}.weight_zero_point"] = q.weight_zero_point
        if q.bias is not None:
            state[f"{name}.bias"] = q.bias.detach().float()
        if q.input_quantizer is not None and q.input_quantizer.static:
            state[f"{name}.input_scale"] = q.input_quantizer.scale.detach().float().reshape(1)
            state[f"{name}.input_zero_point"] = q.input_quantizer.zero_point.detach().float().reshape(1)
    (out / "model").mkdir(parents=True, exist_ok=True)
    if dequantized:
        for name, q in qls.items():
            set_module(model, name, _float_module(q, spec.conv1d))
        try:
            model.save_pretrained(out / "model")
        finally:
            for name, q in qls.items():
                set_module(model, name, q)
    else:
        config = copy.deepcopy(model.config)
        config.architectures = [type(model).__name__]  # as save_pretrained records it: the head to rebuild
        config.save_pretrained(out / "model")
        if getattr(model, "generation_config", None) is not None and model.can_generate():
            model.generation_config.save_pretrained(out / "model")
        weights = _unquantized_state(model, tuple(f"{n}." for n in qls), unquantized_dtype)
        save_file(weights, str(out / "model" / WEIGHTS), metadata={"format": "pt"})
    if tokenizer is not None:
        tokenizer.save_pretrained(out / "model")
    save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(out / QUANT_STATE))
    meta = {"format_version": FORMAT_VERSION, "checkpoint": "dequantized" if dequantized else "packed",
            "unquantized_dtype": str(unquantized_dtype).replace("torch.", "") if unquantized_dtype else None,
            "modules": modules, **(extra_config or {})}
    write_json(out / QUANT_META, meta)
    return out


def _act_from_meta(meta: dict | None) -> ActQuantizer | None:
    if meta is None:
        return None
    return ActQuantizer(meta["bits"], meta["granularity"], meta["static"], meta["symmetric"])


def _read_safetensors(path: Path, keys: "set[str] | None" = None) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file (only ``keys`` when given), with a one-line error if unreadable."""
    try:
        with safe_open(str(path), framework="pt") as f:
            names = [k for k in f.keys() if keys is None or k in keys]
            return {k: f.get_tensor(k) for k in names}
    except Exception as e:  # safetensors raises its own error types for truncated / foreign files
        raise CompactLMError(f"--model: {path} is unreadable ({str(e).splitlines()[0]})") from e


def _quant_linear(name: str, m: dict, state: dict[str, torch.Tensor], version: int, state_path: Path) -> QuantLinear:
    try:
        if version >= 2:
            q = QuantLinear.from_packed(
                state[f"{name}.weight_packed"], state[f"{name}.weight_scale"], state[f"{name}.weight_zero_point"],
                m["bits"], m["group_size"], m["symmetric"], m["in_features"], state.get(f"{name}.bias"),
            )
        else:
            qw = QuantizedWeight(state[f"{name}.int_weight"], state[f"{name}.scale"], state[f"{name}.zero_point"],
                                 m["bits"], m["group_size"], m["symmetric"])
            q = QuantLinear(qw, state.get(f"{name}.bias"))
    except KeyError as e:
        raise CompactLMError(f"--model: {state_path} misses {e.args[0]}; the run is corrupt") from e
    q.input_quantizer = _act_from_meta(m["input"])
    q.output_quantizer = _act_from_meta(m["output"])
    if q.input_quantizer is not None and q.input_quantizer.static:
        q.input_quantizer.scale.copy_(state[f"{name}.input_scale"].reshape(()))
        q.input_quantizer.zero_point.copy_(state[f"{name}.input_zero_point"].reshape(()))
    return q


def load_quantized_run(run_dir: str | os.PathLike, auto_class, config, dtype: torch.dtype = torch.float32,
                       attn_implementation: str | None = None) -> nn.Module:
    """Build the model of a run directory with its ``QuantLinear`` modules (see the module docstring).

    Args:
        auto_class: The transformers auto class for the head (``AutoModelForCausalLM``...).
        config: The checkpoint's config (``run_dir/model/config.json``).
        dtype: dtype of the unquantized tensors in memory (quantized weights keep their grids).

    Returns:
        The model on CPU; its ``QuantLinear`` modules have the ``"reference"`` backend until the
        caller chooses one (:func:`compactlm.quant.linear.set_backend`).
    """
    from accelerate import init_empty_weights

    run_dir = Path(run_dir)
    meta = read_json(run_dir / QUANT_META)
    version = int(meta.get("format_version", 1))
    if version > FORMAT_VERSION:
        raise CompactLMError(f"--model: {run_dir} has run-directory format {version}; this compactlm reads "
                             f"up to {FORMAT_VERSION}: upgrade compactlm")
    state_path = run_dir / QUANT_STATE
    if not state_path.is_file():
        raise CompactLMError(f"--model: {run_dir} lacks {QUANT_STATE}; the run is incomplete or corrupt")
    state = _read_safetensors(state_path)
    kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
    with init_empty_weights(include_buffers=False):
        model = auto_class.from_config(config, **kwargs)
    skip = tuple(f"{n}." for n in meta["modules"])
    wanted = {k for k in model.state_dict() if not k.startswith(skip)}
    if version < 2:  # format 1 kept the quantized linears' biases in model/, under their HF names
        wanted |= {f"{n}.bias" for n in meta["modules"]}
    files = sorted((run_dir / "model").glob("*.safetensors"))
    if not files:
        raise CompactLMError(f"--model: {run_dir / 'model'} has no .safetensors weights; the run is incomplete")
    tensors: dict[str, torch.Tensor] = {}
    for f in files:
        tensors.update(_read_safetensors(f, wanted))
    for n in meta["modules"]:
        if f"{n}.bias" in tensors:
            state[f"{n}.bias"] = tensors.pop(f"{n}.bias")
    for name, m in meta["modules"].items():
        set_module(model, name, _quant_linear(name, m, state, version, state_path))
    tensors = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in tensors.items()}
    model.load_state_dict(tensors, strict=False, assign=True)
    model.tie_weights()
    missing = [n for n, p in model.named_parameters() if p.device.type == "meta"]
    if missing:
        raise CompactLMError(f"--model: {run_dir} misses weights for {', '.join(missing[:3])}; the run is corrupt")
    del tensors, state
    release_freed_memory()
    return model
