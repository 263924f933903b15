"""Contextual-KD relation losses and layer matching for encoder students (pure, mask-aware functions).

Park, Kim, Yang, "Distilling Linguistic Context for Language Model Compression", EMNLP 2021
(METHODS.md §3.2; code GeondoPark/CKD). Relations between representations are compared instead of
the representations themselves, so teacher and student may differ in width (no projection) and in
depth (:func:`match_layers`).

Notation: ``r_i`` the hidden state of token ``i`` in one layer (``(B, T, C)`` tensors), ``m`` a
``(B, T)`` mask with 1 for real tokens and 0 for padding (``None``: all real).

* **WR-dist** (:func:`wr_dist`): ``φ_ij = cos(r_i, r_j)`` for ``j ≠ i`` (the diagonal and padding
  keys excluded), ``P_i = softmax_j(φ_ij)``; loss ``mean_{valid i} KL(P_T,i ‖ P_S,i)``.
* **WR-angle** (:func:`wr_angle`): ``ψ_ijk = cos∠(r_j − r_i, r_k − r_i)`` for ``j, k ≠ i`` inside a
  window ``|j − i|, |k − i| ≤ w`` (21 tokens: ``w = 10``); loss ``mean_{valid (i,j,k)} (ψ_T − ψ_S)²``.
* **LTR-dist / LTR-angle** (:func:`ltr_dist`, :func:`ltr_angle`): the same relations for *one*
  token across the matched layers ``l = 0..L`` (its representations ``r_t^0 .. r_t^L``), every pair /
  triple of layers; averaged over valid tokens.

Invariances (what the tests check): cosine and angle relations are unchanged by a rotation
``r → Q r`` and by a positive scale ``r → s r`` shared by all tokens (of a layer for WR; of all
layers for LTR); angles are also unchanged by a shared translation ``r → r + b``. Hence teacher and
student representations that differ by such a map give loss 0.

Baselines: :func:`logit_kd` (re-exported from :mod:`compactlm.distill.losses`), and
:func:`projected_hidden_mse` — TinyBERT / DynaBERT hidden-state MSE with a learned projection
(:class:`HiddenProjection`) when the widths differ.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from compactlm.distill.losses import hidden_state_mse, logit_kd, masked_mean

__all__ = [
    "WR_WINDOW", "match_layers", "select_layers", "wr_dist", "wr_angle", "ltr_dist", "ltr_angle",
    "relation_dist", "relation_angle", "HiddenProjection", "projected_hidden_mse", "layers_mean", "logit_kd",
]

WR_WINDOW = 10
"""Half-width of the WR-angle token window: 21 tokens (``i − 10 .. i + 10``), the paper's setting."""
NEG = -1e4  # a logit that softmax turns into ~0 in float32 without producing nan


def _check_pair(s: torch.Tensor, t: torch.Tensor, what: str) -> None:
    if s.shape[:-1] != t.shape[:-1]:
        raise ValueError(f"{what}: student {tuple(s.shape)} and teacher {tuple(t.shape)} differ beyond the hidden axis")


# ---- layer matching ------------------------------------------------------------------------------
def match_layers(n_student: int, n_teacher: int) -> list[tuple[int, int]]:
    """Uniform-skip layer map over ``hidden_states`` indices (0 = embeddings output).

    Student layer ``l`` (``0..n_student``) is matched with teacher layer ``round(l · n_teacher /
    n_student)``: embeddings ↔ embeddings, last ↔ last, evenly spaced in between (6 ↔ 12: ``(l, 2l)``;
    3 ↔ 6: ``(0,0) (1,2) (2,4) (3,6)``).

    Args:
        n_student: Student transformer layers (``len(hidden_states) − 1``).
        n_teacher: Teacher transformer layers.

    Returns:
        ``[(student_index, teacher_index), ...]``, ``n_student + 1`` pairs.
    """
    if n_student < 1 or n_teacher < 1:
        raise ValueError(f"match_layers: layer counts must be positive, got {n_student} and {n_teacher}")
    return [(l, int(l * n_teacher / n_student + 0.5)) for l in range(n_student + 1)]


def select_layers(
    hidden_s: Sequence[torch.Tensor], hidden_t: Sequence[torch.Tensor]
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The matched ``(student, teacher)`` hidden states (:func:`match_layers`) of two ``hidden_states`` tuples."""
    pairs = match_layers(len(hidden_s) - 1, len(hidden_t) - 1)
    return [hidden_s[i] for i, _ in pairs], [hidden_t[j] for _, j in pairs]


# ---- the two relation kernels over a "set" axis ------------------------------------------------------
def _pair_logits(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Cosine similarities ``(N, S, S)`` of ``x`` ``(N, S, C)``; diagonal and invalid keys → ``NEG``."""
    z = F.normalize(x.float(), dim=-1)
    cos = z @ z.transpose(-1, -2)
    S = x.shape[1]
    keep = mask[:, None, :].bool() & ~torch.eye(S, dtype=torch.bool, device=x.device)[None]
    return cos.masked_fill(~keep, NEG), keep


def relation_dist(x_s: torch.Tensor, x_t: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """KL(teacher ‖ student) of cosine-similarity distributions over a set axis.

    Args:
        x_s: Student ``(N, S, C_s)``: ``N`` sets of ``S`` vectors.
        x_t: Teacher ``(N, S, C_t)`` (``C_t`` may differ from ``C_s``); no gradient flows into it.
        mask: ``(N, S)`` valid members (``None``: all).

    Returns:
        Scalar: mean over valid rows ``i`` (with at least one other valid member) of
        ``KL(softmax_j φ_T[i, j] ‖ softmax_j φ_S[i, j])``, ``j ≠ i`` valid.
    """
    _check_pair(x_s, x_t, "relation_dist")
    if mask is None:
        mask = torch.ones(x_s.shape[:2], dtype=torch.bool, device=x_s.device)
    mask = mask.bool()
    logit_s, keep = _pair_logits(x_s, mask)
    logit_t, _ = _pair_logits(x_t.detach(), mask)
    log_p = F.log_softmax(logit_t, dim=-1)
    log_q = F.log_softmax(logit_s, dim=-1)
    row = (log_p.exp() * (log_p - log_q) * keep).sum(-1)  # (N, S)
    rows = mask & (keep.sum(-1) > 0)
    return masked_mean(row, rows)


def _angles(x: torch.Tensor, mask: torch.Tensor, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``cos∠(x_j − x_i, x_k − x_i)`` ``(N, S, W, W)`` for ``j, k`` in the ``W = 2w + 1`` window of each
    vertex ``i``, and which triples count (``i, j, k`` valid, ``j, k ≠ i``, inside the set).

    Computed from the Gram matrix ``G = x xᵀ`` (no ``(N, S, W, C)`` tensor):
    ``⟨x_j − x_i, x_k − x_i⟩ = G_jk − G_ij − G_ik + G_ii``; ``x`` is centred first (angles do not
    change under a translation, and centring keeps the differences well conditioned).
    """
    N, S, _ = x.shape
    m = mask.to(torch.float32)
    x = x.float()
    mean = (x * m[..., None]).sum(1, keepdim=True) / m.sum(1, keepdim=True).clamp_min(1.0)[..., None]
    x = x - mean
    G = x @ x.transpose(-1, -2)  # (N, S, S)
    offsets = torch.arange(-w, w + 1, device=x.device)
    pos = torch.arange(S, device=x.device)[:, None] + offsets[None]  # (S, W)
    inside = (pos >= 0) & (pos < S) & (offsets[None] != 0)
    idx = pos.clamp(0, S - 1)
    diag = G.diagonal(dim1=-2, dim2=-1)  # (N, S)
    g_ij = G.gather(2, idx[None].expand(N, -1, -1))  # (N, S, W): G[n, i, idx[i, a]]
    g_jj = diag[:, idx]  # (N, S, W)
    g_jk = G[:, idx[:, :, None], idx[:, None, :]]  # (N, S, W, W)
    g_ii = diag[:, :, None, None]
    dot = g_jk - g_ij[..., :, None] - g_ij[..., None, :] + g_ii
    sq = (g_jj - 2 * g_ij + diag[:, :, None]).clamp_min(1e-12)  # |x_j − x_i|², (N, S, W)
    cos = dot / (sq[..., :, None] * sq[..., None, :]).sqrt()
    valid = inside[None] & mask.bool()[:, idx] & mask.bool()[:, :, None]  # (N, S, W)
    return cos, valid[..., :, None] & valid[..., None, :]


def relation_angle(
    x_s: torch.Tensor, x_t: torch.Tensor, mask: torch.Tensor | None = None, window: int | None = None
) -> torch.Tensor:
    """MSE of angle relations ``ψ_ijk = cos∠(x_j − x_i, x_k − x_i)`` over a set axis.

    Args:
        x_s: Student ``(N, S, C_s)``.
        x_t: Teacher ``(N, S, C_t)``; no gradient flows into it.
        mask: ``(N, S)`` valid members (``None``: all).
        window: Half-width ``w``: ``j`` and ``k`` within ``±w`` of the vertex ``i`` (``None``: all).

    Returns:
        Scalar: mean over valid triples (``i, j, k`` valid, ``j, k ≠ i``) of ``(ψ_T − ψ_S)²``.
    """
    _check_pair(x_s, x_t, "relation_angle")
    if mask is None:
        mask = torch.ones(x_s.shape[:2], dtype=torch.bool, device=x_s.device)
    mask = mask.bool()
    w = x_s.shape[1] - 1 if window is None else min(window, x_s.shape[1] - 1)
    cos_s, pair = _angles(x_s, mask, w)
    cos_t, _ = _angles(x_t.detach(), mask, w)
    return masked_mean((cos_s - cos_t).pow(2), pair)


# ---- word relation (within a layer) and layer-transforming relation (across layers) -----------------
def wr_dist(hidden_s: torch.Tensor, hidden_t: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """WR-dist of one matched layer pair: hidden states ``(B, T, C_s)`` / ``(B, T, C_t)``, mask ``(B, T)``."""
    return relation_dist(hidden_s, hidden_t, mask)


def wr_angle(
    hidden_s: torch.Tensor, hidden_t: torch.Tensor, mask: torch.Tensor | None = None, window: int = WR_WINDOW
) -> torch.Tensor:
    """WR-angle of one matched layer pair (``(B, T, C)`` hidden states, ``(B, T)`` mask, ``±window`` tokens)."""
    return relation_angle(hidden_s, hidden_t, mask, window)


def _per_token(layers: Sequence[torch.Tensor]) -> torch.Tensor:
    """``L`` tensors ``(B, T, C)`` → ``(B·T, L, C)``: each token's representations across layers."""
    x = torch.stack(list(layers), dim=2)  # (B, T, L, C)
    return x.flatten(0, 1)


def _token_set_mask(layers: Sequence[torch.Tensor], mask: torch.Tensor | None) -> torch.Tensor | None:
    if mask is None:
        return None
    return mask.bool().flatten()[:, None].expand(-1, len(layers))  # (B·T, L): a padding token has no valid layer


def ltr_dist(
    layers_s: Sequence[torch.Tensor], layers_t: Sequence[torch.Tensor], mask: torch.Tensor | None = None
) -> torch.Tensor:
    """LTR-dist: per token, cosine-similarity distributions across the matched layers, KL(teacher ‖ student).

    Args:
        layers_s: The student's matched hidden states, ``L`` tensors ``(B, T, C_s)``.
        layers_t: The teacher's, ``L`` tensors ``(B, T, C_t)`` (same ``L``, :func:`select_layers`).
        mask: ``(B, T)``; padding tokens are left out.
    """
    if len(layers_s) != len(layers_t) or len(layers_s) < 2:
        raise ValueError(f"ltr_dist: needs the same number (>= 2) of layers, got {len(layers_s)} and {len(layers_t)}")
    return relation_dist(_per_token(layers_s), _per_token(layers_t), _token_set_mask(layers_s, mask))


def ltr_angle(
    layers_s: Sequence[torch.Tensor], layers_t: Sequence[torch.Tensor], mask: torch.Tensor | None = None
) -> torch.Tensor:
    """LTR-angle: per token, angles between every triple of matched layers, MSE (shapes as :func:`ltr_dist`)."""
    if len(layers_s) != len(layers_t) or len(layers_s) < 3:
        raise ValueError(f"ltr_angle: needs the same number (>= 3) of layers, got {len(layers_s)} and {len(layers_t)}")
    return relation_angle(_per_token(layers_s), _per_token(layers_t), _token_set_mask(layers_s, mask), None)


def layers_mean(loss, layers_s: Sequence[torch.Tensor], layers_t: Sequence[torch.Tensor],
                mask: torch.Tensor | None = None, **kw) -> torch.Tensor:
    """``mean_l loss(layers_s[l], layers_t[l], mask)`` over matched pairs (WR terms: one value per pair).

    The mean (not the sum) keeps a term's weight comparable between students of different depths.
    """
    if len(layers_s) != len(layers_t) or not layers_s:
        raise ValueError(f"layers_mean: {len(layers_s)} student vs {len(layers_t)} teacher layers")
    return sum(loss(s, t, mask, **kw) for s, t in zip(layers_s, layers_t)) / len(layers_s)


# ---- baseline: hidden-state MSE with a learned projection ------------------------------------------------
class HiddenProjection(nn.Module):
    """TinyBERT's ``W_h``: one linear map ``C_s → C_t`` shared by all layers (identity when widths agree).

    Trained with the student; not part of the saved student.
    """

    def __init__(self, student_width: int, teacher_width: int):
        super().__init__()
        self.proj = nn.Linear(student_width, teacher_width) if student_width != teacher_width else nn.Identity()

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.proj(hidden)


def projected_hidden_mse(
    layers_s: Sequence[torch.Tensor], layers_t: Sequence[torch.Tensor], mask: torch.Tensor | None = None,
    projection: nn.Module | None = None,
) -> torch.Tensor:
    """``Σ_l MSE(W_h H_S^l, H_T^l)`` over matched layers (DynaBERT / TinyBERT hidden loss).

    Args:
        layers_s: Student matched hidden states ``(B, T, C_s)``.
        layers_t: Teacher matched hidden states ``(B, T, C_t)``.
        mask: ``(B, T)``.
        projection: ``C_s → C_t`` map (:class:`HiddenProjection`); ``None`` needs equal widths.
    """
    if len(layers_s) != len(layers_t) or not layers_s:
        raise ValueError(f"projected_hidden_mse: {len(layers_s)} student vs {len(layers_t)} teacher layers")
    proj = projection if projection is not None else (lambda h: h)
    return sum(hidden_state_mse(proj(s), t, mask) for s, t in zip(layers_s, layers_t))
