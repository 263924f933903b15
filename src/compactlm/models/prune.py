"""Structured pruning of BERT-like encoders: depth (whole layers) and width (attention heads, FFN neurons).

The students of contextual KD (METHODS.md §3.2) and the sub-networks of DynaBERT (§3.3) are
pruned copies of the teacher. Everything here produces a *genuinely smaller* model: pruned
linears are replaced by smaller ``nn.Linear`` s (fewer parameters in memory and on disk) and the
config shrinks (``num_hidden_layers``, ``intermediate_size``, ``num_attention_heads``).

* **Depth** (:func:`prune_depth`): keep a subset of the blocks. :func:`evenly_spaced` picks ``k`` of
  ``n`` blocks so that student layer ``l`` *is* the teacher layer :func:`~compactlm.distill.relation_losses.match_layers`
  pairs it with (3 of 6: blocks 1, 3, 5 — the last block, nearest the classifier, is always kept).
* **Width** (:func:`select_units`, :func:`prune_width`): per layer keep a subset of heads (rows of
  the query / key / value projections, columns of the attention output projection) and of FFN
  neurons (rows of the intermediate linear, columns of the output linear). Which linears those are
  comes from the ``ArchSpec`` (``extra["heads"]``, ``extra["ffn"]``).
* **Importance** (DynaBERT, Hou et al. 2020): :func:`gradient_importance` — head ``h``:
  ``Σ_batches |∂L/∂m_h|`` for a head mask ``m`` (all ones) on the attention output; neuron ``n``:
  ``Σ_batches Σ |W ⊙ ∂L/∂W|`` over its weights in both FFN linears (and its bias). Without data,
  :func:`magnitude_importance`: the L2 norm of all weights of a unit. :func:`rewire` sorts the
  units of every layer by importance (function unchanged), so a width-``w`` sub-network keeps the
  first ``round(w · n)`` of them.

Saving (:func:`save_pruned`): depth / FFN pruning leaves a plain BERT / XLM-R config. Pruned heads
keep their size, which a plain config cannot express (head size = ``hidden / heads``): such a
student gets the ``compactlm-pruned-*`` type of :mod:`compactlm.models.pruned_encoder` (one extra
field ``attention_head_size``), whose source file is saved with the weights — plain transformers
loads it with ``trust_remote_code=True``, ``compactlm`` (``load_model``, ``eval``) without.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import torch
from torch import nn

from compactlm.errors import CompactLMError
from compactlm.models import pruned_encoder
from compactlm.models.specs import base_model, get_blocks, get_module, get_spec, set_module

log = logging.getLogger(__name__)

PRUNED_PREFIX = "compactlm-pruned-"


def _layout(model: nn.Module) -> tuple[str, tuple[str, ...], str, str, str]:
    spec = get_spec(model)
    if spec.kind != "encoder" or "heads" not in spec.extra or "ffn" not in spec.extra:
        raise CompactLMError(f"--model: structured pruning needs a BERT-like encoder, got {spec.model_types[0]}")
    att, head_in, head_out = spec.extra["heads"]
    ffn_in, ffn_out = spec.extra["ffn"]
    return att, head_in, head_out, ffn_in, ffn_out


def head_size(model: nn.Module) -> int:
    att = _layout(model)[0]
    return int(get_module(get_blocks(model)[0], att).attention_head_size)


def unit_counts(model: nn.Module) -> list[tuple[int, int]]:
    """``[(heads, ffn neurons)]`` of every layer."""
    att, _, _, ffn_in, _ = _layout(model)
    return [(int(get_module(b, att).num_attention_heads), get_module(b, ffn_in).out_features) for b in get_blocks(model)]


def param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ---- depth ---------------------------------------------------------------------------------------------
def evenly_spaced(n: int, k: int) -> list[int]:
    """``k`` of ``n`` block indices, evenly spaced and ending with the last: ``round((i+1)·n/k) − 1``."""
    if not 1 <= k <= n:
        raise CompactLMError(f"--student-layers: expected 1..{n} layers, got {k}")
    return [int((i + 1) * n / k + 0.5) - 1 for i in range(k)]


def prune_depth(model: nn.Module, keep: Sequence[int]) -> nn.Module:
    """Keep the blocks ``keep`` (in that order), in place; ``config.num_hidden_layers`` follows."""
    blocks = get_blocks(model)
    if not keep or any(not 0 <= i < len(blocks) for i in keep):
        raise CompactLMError(f"layers to keep: expected indices in 0..{len(blocks) - 1}, got {list(keep)}")
    set_module(base_model(model), get_spec(model).blocks, nn.ModuleList([blocks[i] for i in keep]))
    model.config.num_hidden_layers = len(keep)
    return model


# ---- width ---------------------------------------------------------------------------------------------
def _linear(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    out = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        out.weight.copy_(weight)
        if bias is not None:
            out.bias.copy_(bias)
    return out


def _rows(lin: nn.Linear, idx: torch.Tensor) -> nn.Linear:
    return _linear(lin.weight[idx], None if lin.bias is None else lin.bias[idx])


def _cols(lin: nn.Linear, idx: torch.Tensor) -> nn.Linear:
    return _linear(lin.weight[:, idx], lin.bias)


def select_units(model: nn.Module, heads: Sequence[Sequence[int]] | None = None,
                 neurons: Sequence[Sequence[int]] | None = None) -> nn.Module:
    """Keep, per layer, the heads ``heads[l]`` and FFN neurons ``neurons[l]`` (in that order), in place.

    A permutation of all units reorders them without changing the function (:func:`rewire`).
    ``None`` leaves that kind of unit alone. The config is updated by :func:`finalize`.
    """
    att_path, head_in, head_out, ffn_in, ffn_out = _layout(model)
    blocks = get_blocks(model)
    for l, block in enumerate(blocks):
        if heads is not None:
            att = get_module(block, att_path)
            h = torch.as_tensor(list(heads[l]), dtype=torch.long)
            if h.numel() < 1 or h.unique().numel() != h.numel() or h.min() < 0 or h.max() >= att.num_attention_heads:
                raise CompactLMError(f"heads of layer {l}: expected distinct indices in 0..{att.num_attention_heads - 1}")
            d = att.attention_head_size
            rows = (h[:, None] * d + torch.arange(d)[None]).flatten().to(get_module(block, head_out).weight.device)
            for name in head_in:
                set_module(block, name, _rows(get_module(block, name), rows))
            set_module(block, head_out, _cols(get_module(block, head_out), rows))
            att.num_attention_heads, att.all_head_size = int(h.numel()), int(h.numel()) * d
        if neurons is not None:
            lin_in = get_module(block, ffn_in)
            n = torch.as_tensor(list(neurons[l]), dtype=torch.long, device=lin_in.weight.device)
            if n.numel() < 1 or n.unique().numel() != n.numel() or n.min() < 0 or n.max() >= lin_in.out_features:
                raise CompactLMError(f"neurons of layer {l}: expected distinct indices in 0..{lin_in.out_features - 1}")
            set_module(block, ffn_in, _rows(lin_in, n))
            set_module(block, ffn_out, _cols(get_module(block, ffn_out), n))
    return model


def _top(scores: torch.Tensor, k: int) -> list[int]:
    return sorted(torch.argsort(scores, descending=True, stable=True)[:k].tolist())


def width_counts(heads: int, neurons: int, width: float) -> tuple[int, int]:
    """``(round(w · heads), round(w · neurons))``, at least 1 each."""
    if not 0 < width <= 1:
        raise CompactLMError(f"--width: expected a multiplier in (0, 1], got {width}")
    return max(1, int(width * heads + 0.5)), max(1, int(width * neurons + 0.5))


def prune_width(model: nn.Module, width: float,
                importance: tuple[Sequence[torch.Tensor], Sequence[torch.Tensor]] | None = None) -> nn.Module:
    """Keep the ``round(width · n)`` most important heads and neurons of every layer; returns the
    finalized model (:func:`finalize`: a new object when heads were pruned).

    Args:
        model: A BERT-like encoder (changed in place).
        width: Multiplier in ``(0, 1]`` (1 keeps everything: the same function).
        importance: ``(head scores per layer, neuron scores per layer)``; default
            :func:`magnitude_importance`.
    """
    head_imp, neuron_imp = importance if importance is not None else magnitude_importance(model)
    keep_h, keep_n = [], []
    for l, (H, F) in enumerate(unit_counts(model)):
        kh, kn = width_counts(H, F, width)
        keep_h.append(_top(head_imp[l], kh))
        keep_n.append(_top(neuron_imp[l], kn))
    return finalize(select_units(model, keep_h, keep_n))


def rewire(model: nn.Module, importance: tuple[Sequence[torch.Tensor], Sequence[torch.Tensor]]) -> nn.Module:
    """Sort the heads and neurons of every layer by descending importance, in place (function unchanged)."""
    head_imp, neuron_imp = importance
    order_h = [torch.argsort(s, descending=True, stable=True).tolist() for s in head_imp]
    order_n = [torch.argsort(s, descending=True, stable=True).tolist() for s in neuron_imp]
    return select_units(model, order_h, order_n)


# ---- importance ------------------------------------------------------------------------------------------
@torch.no_grad()
def magnitude_importance(model: nn.Module) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per layer, the L2 norm of each head's (q, k, v rows, output columns) and each neuron's weights."""
    att_path, head_in, head_out, ffn_in, ffn_out = _layout(model)
    heads, neurons = [], []
    for block in get_blocks(model):
        att = get_module(block, att_path)
        H, d = att.num_attention_heads, att.attention_head_size
        sq = sum(get_module(block, n).weight.float().pow(2).sum(1) for n in head_in)
        sq = sq + get_module(block, head_out).weight.float().pow(2).sum(0)
        heads.append(sq.view(H, d).sum(1).sqrt().cpu())
        sq_n = get_module(block, ffn_in).weight.float().pow(2).sum(1) + get_module(block, ffn_out).weight.float().pow(2).sum(0)
        neurons.append(sq_n.sqrt().cpu())
    return heads, neurons


class HeadMask:
    """A multiplicative mask on every head's output (pre-hook on the attention output projection).

    ``masks[l]`` is a ``(H_l,)`` tensor (set it, e.g. to ones with ``requires_grad``); used inside
    ``with HeadMask(model, masks):``.
    """

    def __init__(self, model: nn.Module, masks: Sequence[torch.Tensor]):
        self.model, self.masks, self.handles = model, list(masks), []

    def __enter__(self) -> "HeadMask":
        att_path, _, head_out, _, _ = _layout(self.model)
        for l, block in enumerate(get_blocks(self.model)):
            d = get_module(block, att_path).attention_head_size

            def hook(module, args, l=l, d=d):
                (x, *rest) = args
                m = self.masks[l].to(x.dtype).repeat_interleave(d)
                return (x * m, *rest)

            self.handles.append(get_module(block, head_out).register_forward_pre_hook(hook))
        return self

    def __exit__(self, *exc) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []


def gradient_importance(
    model: nn.Module, batches: Iterable[Mapping[str, torch.Tensor]],
    loss_fn: Callable[[nn.Module, Mapping[str, torch.Tensor]], torch.Tensor],
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """DynaBERT importance from a few batches (module docstring); ``loss_fn(model, batch) -> scalar``.

    The model's gradients are cleared afterwards and its ``requires_grad`` flags restored.
    """
    att_path, _, _, ffn_in, ffn_out = _layout(model)
    blocks = get_blocks(model)
    device = next(model.parameters()).device
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    model.requires_grad_(True)
    masks = [torch.ones(get_module(b, att_path).num_attention_heads, device=device, requires_grad=True) for b in blocks]
    heads = [torch.zeros(m.numel()) for m in masks]
    neurons = [torch.zeros(get_module(b, ffn_in).out_features) for b in blocks]
    n_batches = 0
    try:
        with HeadMask(model, masks):
            for batch in batches:
                model.zero_grad(set_to_none=True)
                for m in masks:
                    m.grad = None
                loss_fn(model, batch).backward()
                n_batches += 1
                for l, block in enumerate(blocks):
                    heads[l] += masks[l].grad.detach().abs().cpu()
                    lin_in, lin_out = get_module(block, ffn_in), get_module(block, ffn_out)
                    s = (lin_in.weight * lin_in.weight.grad).abs().sum(1) + (lin_out.weight * lin_out.weight.grad).abs().sum(0)
                    if lin_in.bias is not None:
                        s = s + (lin_in.bias * lin_in.bias.grad).abs()
                    neurons[l] += s.detach().float().cpu()
    finally:
        model.zero_grad(set_to_none=True)
        for n, p in model.named_parameters():
            p.requires_grad_(flags[n])
    if n_batches == 0:
        raise CompactLMError("importance: no batches given")
    return heads, neurons


# ---- config and saving -------------------------------------------------------------------------------------
def _head_key(model: nn.Module) -> str:
    return "sequence-classification" if hasattr(model, "classifier") else "base"


def finalize(model: nn.Module) -> nn.Module:
    """Bring the config in line with the modules; returns the model (a new object of the
    ``compactlm-pruned-*`` class when heads were pruned, weights and mode kept).

    Raises:
        CompactLMError: layers keep different numbers of heads or neurons (one config cannot say so).
    """
    counts = unit_counts(model)
    if len(set(counts)) != 1:
        raise CompactLMError(f"pruned model: every layer must keep the same heads and neurons, got {counts}")
    (H, F), d = counts[0], head_size(model)
    config = model.config
    config.num_hidden_layers = len(counts)
    config.intermediate_size = F
    parent = config.model_type.removeprefix(PRUNED_PREFIX)
    if H * d == config.hidden_size and parent == config.model_type:
        config.num_attention_heads = H
        return model
    if parent not in pruned_encoder.PRUNED:
        raise CompactLMError(f"pruned model: head pruning supports {', '.join(pruned_encoder.PRUNED)}, not {parent}")
    config_cls, classes = pruned_encoder.PRUNED[parent]
    values = {k: v for k, v in config.to_dict().items() if k not in ("model_type", "transformers_version", "auto_map")}
    values.update(num_attention_heads=H, attention_head_size=d)
    new_config = config_cls(**values)
    new_config._attn_implementation = config._attn_implementation
    param = next(model.parameters())
    new = classes[_head_key(model)](new_config).to(device=param.device, dtype=param.dtype)
    new.load_state_dict(model.state_dict())
    return new.train(model.training)


def save_pruned(model: nn.Module, tokenizer, out: str | Path) -> nn.Module:
    """Save a pruned model as a HF folder (plus its tokenizer); returns the finalized model.

    Head-pruned models get ``pruned_encoder.py`` and an ``auto_map`` beside the weights
    (plain transformers: ``from_pretrained(out, trust_remote_code=True)``).
    """
    model = finalize(model)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    config_cls = type(model.config)
    if config_cls.model_type.startswith(PRUNED_PREFIX):
        model.config.auto_map = pruned_encoder.auto_map(config_cls)
        shutil.copyfile(pruned_encoder.__file__, out / "pruned_encoder.py")
    model.save_pretrained(out)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    return model
