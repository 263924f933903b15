"""NN-LUT softmax through transformers' ``AttentionInterface`` (Yu et al., DAC 2022).

The models' attention code is not forked: an attention function with eager semantics (scores,
soft-capping, additive or boolean mask, softmax, dropout, weighted sum; grouped-query attention
handled) whose softmax is ``T_exp(x - max)·T_recip(Σ)`` (:func:`compactlm.lut.functions.lut_softmax`)
is registered under a private name, with eager-style masks, and the model's
``attn_implementation`` is switched to it. :func:`restore_attention` switches back and
unregisters it; :mod:`compactlm.lut.apply` does both for :func:`~compactlm.lut.apply.apply_luts`.
"""

from __future__ import annotations

import torch
from torch import nn

from compactlm.lut.functions import lut_softmax


def _repeat_kv(x: torch.Tensor, groups: int) -> torch.Tensor:
    """``[B, H_kv, T, D]`` → ``[B, H_kv·groups, T, D]`` (grouped-query attention)."""
    if groups == 1:
        return x
    b, h, t, d = x.shape
    return x[:, :, None].expand(b, h, groups, t, d).reshape(b, h * groups, t, d)


def make_lut_attention(exp_table, recip_table):
    """An ``AttentionInterface`` function: eager attention whose softmax comes from the tables.

    Shapes: ``query [B, H, T_q, D]``, ``key`` / ``value [B, H_kv, T_k, D]``, additive or boolean
    ``attention_mask`` broadcastable to ``[B, H, T_q, T_k]``; returns ``([B, T_q, H, D], [B, H, T_q, T_k])``.
    """

    def lut_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, softcap=None, **kwargs):
        groups = getattr(module, "num_key_value_groups", 1)
        key, value = _repeat_kv(key, groups), _repeat_kv(value, groups)
        if scaling is None:
            scaling = query.size(-1) ** -0.5
        scores = torch.matmul(query, key.transpose(-1, -2)) * scaling  # (B, H, T_q, T_k)
        if softcap is not None:
            scores = torch.tanh(scores / softcap) * softcap
        if attention_mask is not None:
            if attention_mask.dtype == torch.bool:
                scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
            else:
                scores = scores + attention_mask[..., : key.shape[-2]]
        probs = lut_softmax(scores, exp_table, recip_table, dim=-1).to(value.dtype)
        probs = nn.functional.dropout(probs, p=dropout, training=module.training)
        out = torch.matmul(probs, value).transpose(1, 2).contiguous()  # (B, T_q, H, D)
        return out, probs

    return lut_attention


def set_attn_implementation(model: nn.Module, name: str | None) -> None:
    """Switch ``model`` to the attention implementation registered as ``name``."""
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation(name)
    else:  # pragma: no cover - every supported HF model has it
        model.config._attn_implementation = name


def register_attention(name: str, fn) -> None:
    """Register ``fn`` as attention implementation ``name``, with eager-style masks."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    AttentionInterface.register(name, fn)
    AttentionMaskInterface.register(name, eager_mask)


def unregister_attention(name: str) -> None:
    """Forget attention implementation ``name`` (no-op if it is not registered)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface._global_mapping.pop(name, None)
    AttentionMaskInterface._global_mapping.pop(name, None)


def install_lut_attention(model: nn.Module, exp_table, recip_table, name: str) -> tuple[str, str | None]:
    """Register a LUT attention function as ``name`` and switch ``model`` to it.

    Returns:
        ``(name, original implementation)``, the arguments of :func:`restore_attention`.
    """
    register_attention(name, make_lut_attention(exp_table, recip_table))
    original = model.config._attn_implementation
    try:
        set_attn_implementation(model, name)
    except BaseException:
        unregister_attention(name)
        raise
    return name, original


def restore_attention(model: nn.Module, name: str, original: str | None) -> None:
    """Switch ``model`` back to ``original`` and unregister ``name``."""
    set_attn_implementation(model, original)
    unregister_attention(name)
