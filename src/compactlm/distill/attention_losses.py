"""Attention distillation losses for QAT of encoders (pure, mask-aware functions).

Kim et al., "Understanding and Improving Knowledge Distillation for Quantization-Aware Training
of Large Transformer Encoders", EMNLP 2022 (arXiv 2211.11014), §3:

* attention-map loss, per layer ``l`` (``A`` are post-softmax probabilities, ``T`` valid tokens)::

      L_map^l = mean_{b, h} (1/T) Σ_i KL(A_T[b,h,i,:] ‖ A_S[b,h,i,:])
              = mean_{b, h} (1/T) Σ_i Σ_j A_T[i,j] (log A_T[i,j] − log A_S[i,j])

  with probabilities clamped to ``1e-8`` before the log, padding query rows left out of the mean
  and padding key columns out of the sum;
* attention-output loss, per layer: ``L_out^l = MSE(O_S^l, O_T^l)`` on the attention sub-layer
  output (after residual and LayerNorm), averaged over valid tokens and channels.

Both are summed over layers with :func:`sum_over_layers`. SDQ (O'Neill & Dutta, arXiv 2307.05972)
distils "every self-attention layer" with a KL across layers and heads; compactlm uses the same
:func:`attention_map_kl` for it (METHODS.md §2.3).

Masks are ``(B, T)`` with 1 for real tokens and 0 for padding; ``None`` means all tokens are real.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

EPS = 1e-8


def _check_same(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{what}: student {tuple(a.shape)} and teacher {tuple(b.shape)} shapes differ")


def attention_map_kl(
    probs_s: torch.Tensor, probs_t: torch.Tensor, attention_mask: torch.Tensor | None = None, eps: float = EPS
) -> torch.Tensor:
    """KL(teacher ‖ student) between attention maps of one layer.

    Args:
        probs_s: Student attention probabilities ``(B, H, T, T)`` (rows sum to 1).
        probs_t: Teacher attention probabilities ``(B, H, T, T)``.
        attention_mask: ``(B, T)`` 1 = token, 0 = padding.
        eps: Clamp of the probabilities before the log.

    Returns:
        Scalar: mean over batch and heads of the mean over valid query rows of the row KL.
    """
    _check_same(probs_s, probs_t, "attention_map_kl")
    B, H, T, _ = probs_s.shape
    log_ratio = torch.log(probs_t.clamp_min(eps)) - torch.log(probs_s.clamp_min(eps))  # (B, H, T, T)
    terms = probs_t * log_ratio
    if attention_mask is None:
        return terms.sum(-1).mean()
    m = attention_mask.to(terms.dtype)  # (B, T)
    row_kl = (terms * m[:, None, None, :]).sum(-1)  # (B, H, T) — padding keys out of the sum
    n_rows = m.sum(-1).clamp_min(1.0)  # (B,)
    per_head = (row_kl * m[:, None, :]).sum(-1) / n_rows[:, None]  # (B, H) — (1/T) Σ over valid rows
    return per_head.mean()


def attention_output_mse(
    out_s: torch.Tensor, out_t: torch.Tensor, attention_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean squared error between attention sub-layer outputs of one layer.

    Args:
        out_s: Student outputs ``(B, T, C)``.
        out_t: Teacher outputs ``(B, T, C)``.
        attention_mask: ``(B, T)`` 1 = token, 0 = padding.

    Returns:
        Scalar: mean of ``(O_S − O_T)²`` over valid tokens and channels.
    """
    _check_same(out_s, out_t, "attention_output_mse")
    sq = (out_s - out_t).pow(2)  # (B, T, C)
    if attention_mask is None:
        return sq.mean()
    m = attention_mask.to(sq.dtype)[..., None]  # (B, T, 1)
    return (sq * m).sum() / (m.sum() * sq.shape[-1]).clamp_min(1.0)


def attention_score_mse(
    scores_s: torch.Tensor, scores_t: torch.Tensor, attention_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """MSE between pre-softmax attention scores of one layer (TernaryBERT's attention loss).

    Args:
        scores_s: Student scores ``Q Kᵀ/√d`` ``(B, H, T, T)``, without the additive mask.
        scores_t: Teacher scores ``(B, H, T, T)``.
        attention_mask: ``(B, T)``; only pairs of two real tokens count.

    Returns:
        Scalar: mean squared difference over valid (query, key) pairs, batch and heads.
    """
    _check_same(scores_s, scores_t, "attention_score_mse")
    sq = (scores_s - scores_t).pow(2)  # (B, H, T, T)
    if attention_mask is None:
        return sq.mean()
    m = attention_mask.to(sq.dtype)
    pair = (m[:, :, None] * m[:, None, :])[:, None]  # (B, 1, T, T)
    return (sq * pair).sum() / (pair.sum() * sq.shape[1]).clamp_min(1.0)


def sum_over_layers(
    loss: Callable[..., torch.Tensor],
    student: Sequence[torch.Tensor],
    teacher: Sequence[torch.Tensor],
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """``Σ_l loss(student[l], teacher[l], attention_mask)`` over paired per-layer tensors."""
    if len(student) != len(teacher) or not student:
        raise ValueError(f"sum_over_layers: {len(student)} student vs {len(teacher)} teacher layers")
    return sum(loss(s, t, attention_mask) for s, t in zip(student, teacher))
