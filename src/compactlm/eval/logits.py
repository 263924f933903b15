"""Log-probabilities of chosen positions without materialising the full ``[B, T, V]`` logits.

A causal LM is ``logits = head(base(x))``. Evaluation only needs the logits at the positions it
scores, so :func:`position_logprobs` runs the base model (``model.base_model``), gathers the hidden
states at those positions and applies ``model.get_output_embeddings()`` to them alone — generic HF
API, no architecture names. Some models transform the head output (logit soft-capping, scaling);
a one-time probe compares the split path with ``model(x).logits`` and falls back to the full
forward when they differ.
"""

from __future__ import annotations

import logging
import weakref

import torch
import torch.nn.functional as F
from torch import nn

from compactlm.errors import CompactLMError
from compactlm.quant.activation import padding_mask

log = logging.getLogger(__name__)

_SPLIT_OK: "weakref.WeakKeyDictionary[nn.Module, bool]" = weakref.WeakKeyDictionary()


def model_device(model: nn.Module) -> torch.device:
    """Device of the model's first parameter."""
    return next(model.parameters()).device


def _split_parts(model: nn.Module) -> tuple[nn.Module, nn.Module] | None:
    base, head = getattr(model, "base_model", None), model.get_output_embeddings()
    if base is None or base is model or head is None:
        return None
    return base, head


def _split_matches(model: nn.Module) -> bool:
    """Whether ``head(base(x).last_hidden_state)`` reproduces ``model(x).logits`` (cached per model)."""
    if model in _SPLIT_OK:
        return _SPLIT_OK[model]
    ok = False
    parts = _split_parts(model)
    if parts is not None:
        vocab = model.get_output_embeddings().weight.shape[0]
        x = torch.arange(1, 9, device=model_device(model)).remainder(vocab).unsqueeze(0)
        with torch.inference_mode():
            ref = model(input_ids=x).logits.float()
            out = parts[0](input_ids=x)
            hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
            got = parts[1](hidden).float()
        ok = got.shape == ref.shape and torch.allclose(got, ref, rtol=1e-4, atol=1e-4 * (1 + ref.abs().max().item()))
    log.debug("position logits via base model + output embeddings: %s", ok)
    _SPLIT_OK[model] = ok
    return ok


def position_logprobs(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    batch_idx: torch.Tensor,
    pos_idx: torch.Tensor,
    targets: torch.Tensor,
    chunk: int = 2048,
) -> torch.Tensor:
    """``log p(targets[k] | input_ids[batch_idx[k], :pos_idx[k] + 1])`` for each requested position.

    Args:
        model: A causal LM (HF ``PreTrainedModel`` with an output embedding).
        input_ids: ``[B, T]`` token ids.
        attention_mask: ``[B, T]`` (1 = real token) or ``None``.
        batch_idx: ``[M]`` row of each scored position.
        pos_idx: ``[M]`` position whose logits predict the target (the target sits at ``pos + 1``).
        targets: ``[M]`` target token ids.
        chunk: Rows of ``[chunk, V]`` logits computed at a time (bounds memory).

    Returns:
        ``[M]`` float32 log-probabilities.
    """
    if model.get_output_embeddings() is None:
        raise CompactLMError("model: has no language-model head (output embeddings); load it as a causal LM")
    if _split_matches(model):
        base, head = _split_parts(model)
        with padding_mask(attention_mask):
            out = base(input_ids=input_ids, attention_mask=attention_mask)
        hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]  # (B, T, H)
        h = hidden[batch_idx, pos_idx]  # (M, H)
        rows = [F.log_softmax(head(h[i:i + chunk]).float(), dim=-1) for i in range(0, h.shape[0], chunk)]
    else:
        with padding_mask(attention_mask):
            logits = model(input_ids=input_ids, attention_mask=attention_mask).logits  # (B, T, V)
        sel = logits[batch_idx, pos_idx]  # (M, V)
        rows = [F.log_softmax(sel[i:i + chunk].float(), dim=-1) for i in range(0, sel.shape[0], chunk)]
    logp = torch.cat(rows) if rows else torch.zeros(0, 1, device=input_ids.device)  # (M, V)
    return logp.gather(1, targets.unsqueeze(1)).squeeze(1)
