"""Distillation losses (QAT and smaller students): small pure, mask-aware functions.

Notation: ``z_S``, ``z_T`` student / teacher logits; ``p = softmax(z / τ_KD)``; ``y`` labels;
``m`` a mask with 1 for tokens that count and 0 for padding (``None``: every position counts).

* ground truth: ``L_GT = mean_{valid t} −log p_S[t](y[t])`` (:func:`gt_cross_entropy`);
* logit KD (Hinton et al. 2015): ``L_KD = τ² · mean_{valid t} KL(p_T[t] ‖ p_S[t])``
  (:func:`logit_kd`, ``form="kl"``) or the soft cross-entropy ``−Σ_v p_T log p_S``
  (``form="soft_ce"``; same gradient, differs by the teacher entropy, a constant);
* reverse KL (MiniLLM-style): ``τ² · mean_{valid t} KL(p_S[t] ‖ p_T[t])`` (:func:`reverse_kl`);
* TSLD — token-scaled logit distillation (Kim et al., NeurIPS 2023, arXiv 2308.06744, Eq. 6–7)::

      CE_T[t] = −log p_T[t](y[t])                 teacher's per-token loss vs ground truth
      s[t]    = softmax_{t valid}(CE_T[t] / τ)    τ = 10, detached, padding masked *before* the softmax
      L_TSLD  = mean_b Σ_t s[b, t] · KL(p_T[b, t] ‖ p_S[b, t])

  (:func:`tsld_token_weights`, :func:`tsld_loss`). The paper writes the soft cross-entropy; the KL
  has the same gradient and is 0 when student and teacher agree;
* generalised JSD (GKD, Agarwal et al. 2024; β as in jongwooko/distillm)::

      m = β·p_T + (1 − β)·q_S,   L_JSD(β) = mean_{valid t} [β·KL(p_T ‖ m) + (1 − β)·KL(q_S ‖ m)]

  (:func:`generalized_jsd`; gradient through ``q_S`` in both places, the teacher detached);
* DistiLLM's skew KLs (Ko et al., ICML 2024), ``α`` the skew::

      skew forward  KL(p_T ‖ α·p_T + (1 − α)·q_S)     (:func:`skew_forward_kl`)
      skew reverse  KL(q_S ‖ (1 − α)·p_T + α·q_S)     (:func:`skew_reverse_kl`)

  (the authors' forward form is the cross-entropy ``−Σ p_T log(α p_T + (1−α) q_S)``: it differs
  from the KL written here by the teacher's entropy, a constant; the KL is 0 when they agree);
* PromptKD's prompt objective (Kim, Jang, Yang 2024; METHODS.md §3.1), gradient only through the
  *prompted* teacher ``p_{T,φ}``::

      L_T = KL(p_{T,φ} ‖ q_S) + λ_t · KL(p_{T,φ} ‖ p_T),   λ_t = 1 − t / total   (linear decay)

  (:func:`promptkd_prompt_loss`, :func:`linear_decay`); the student then takes the reverse KL
  ``KL(q_S ‖ p_{T,φ})`` (:func:`reverse_kl`). SFT on instructions is :func:`gt_cross_entropy` with
  the mask on response tokens;
* layer-to-layer: hidden-state MSE over ``(B, T, C)`` (:func:`hidden_state_mse`) and the
  attention-score MSE over ``(B, H, T, T)`` restricted to valid (query, key) pairs
  (:func:`attention_score_mse`, TernaryBERT; one implementation, in
  :mod:`compactlm.distill.attention_losses`).

Logits may be token-level ``(B, T, V)`` with a ``(B, T)`` mask or sequence-level ``(B, C)`` (a
classifier; the mask is then ``(B,)`` or ``None``). Causal LMs predict token ``t+1`` at position
``t``: align with :func:`shift_for_causal_lm` first; every loss here takes aligned tensors.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from compactlm.distill.attention_losses import attention_score_mse

__all__ = [
    "IGNORE_INDEX", "shift_for_causal_lm", "gt_cross_entropy", "logit_kd", "reverse_kl", "tsld_token_weights",
    "tsld_loss", "hidden_state_mse", "attention_score_mse", "masked_mean", "generalized_jsd", "skew_forward_kl",
    "skew_reverse_kl", "promptkd_prompt_loss", "linear_decay",
]

IGNORE_INDEX = -100


def _check_same(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{what}: student {tuple(a.shape)} and teacher {tuple(b.shape)} shapes differ")


def masked_mean(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of ``values`` over positions where ``mask`` is non-zero (all positions if ``None``).

    Args:
        values: Any shape, e.g. ``(B, T)`` or ``(B,)``.
        mask: Same shape as ``values`` (bool or 0/1) or ``None``.
    """
    if mask is None:
        return values.mean()
    m = mask.to(values.dtype)
    return (values * m).sum() / m.sum().clamp_min(1.0)


def shift_for_causal_lm(
    logits: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Align next-token predictions with their targets.

    Args:
        logits: ``(B, T, V)`` outputs of a causal LM.
        input_ids: ``(B, T)`` inputs (they are also the labels; ``IGNORE_INDEX`` allowed).
        attention_mask: ``(B, T)`` 1 = token, 0 = padding.

    Returns:
        ``(logits[:, :-1] (B, T-1, V), labels (B, T-1), mask (B, T-1) bool)``; a position counts when
        its target is a real token and not ``IGNORE_INDEX``.
    """
    labels = input_ids[:, 1:]
    mask = labels != IGNORE_INDEX
    if attention_mask is not None:
        mask = mask & attention_mask[:, 1:].bool() & attention_mask[:, :-1].bool()
    return logits[:, :-1], labels, mask


def _token_mask(logits: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor | None:
    if mask is not None and tuple(mask.shape) != tuple(logits.shape[:-1]):
        raise ValueError(f"mask {tuple(mask.shape)} does not match logits {tuple(logits.shape)} without the class axis")
    return mask


def gt_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Ground-truth cross-entropy averaged over valid positions.

    Args:
        logits: ``(B, T, V)`` or ``(B, C)``.
        labels: ``(B, T)`` or ``(B,)`` class ids; ``IGNORE_INDEX`` positions are skipped.
        mask: ``(B, T)`` / ``(B,)`` or ``None``.

    Returns:
        Scalar ``mean_{valid} −log softmax(z)[y]``.
    """
    mask = _token_mask(logits, mask)
    valid = labels != IGNORE_INDEX
    mask = valid if mask is None else mask.bool() & valid
    nll = F.cross_entropy(logits.float().flatten(0, -2), labels.clamp_min(0).flatten(), reduction="none")
    return masked_mean(nll.view(labels.shape), mask)


def _kl_per_position(
    logits_p: torch.Tensor, logits_q: torch.Tensor, temperature: float, form: str = "kl"
) -> torch.Tensor:
    """``KL(p ‖ q)`` (or ``−Σ p log q`` for ``form="soft_ce"``) over the last axis: shape ``logits.shape[:-1]``."""
    log_p = F.log_softmax(logits_p.float() / temperature, dim=-1)
    log_q = F.log_softmax(logits_q.float() / temperature, dim=-1)
    p = log_p.exp()
    if form == "kl":
        return (p * (log_p - log_q)).sum(-1)
    if form == "soft_ce":
        return -(p * log_q).sum(-1)
    raise ValueError(f"form must be 'kl' or 'soft_ce', got {form!r}")


def logit_kd(
    logits_s: torch.Tensor,
    logits_t: torch.Tensor,
    mask: torch.Tensor | None = None,
    temperature: float = 1.0,
    form: str = "kl",
) -> torch.Tensor:
    """Forward KD: ``τ² · mean_{valid} KL(p_T ‖ p_S)`` (or the soft cross-entropy).

    Args:
        logits_s: Student ``(B, T, V)`` or ``(B, C)``.
        logits_t: Teacher, same shape (detached by the caller or here: no gradient flows to it).
        mask: ``(B, T)`` / ``(B,)`` or ``None``.
        temperature: ``τ`` of both softmaxes; the loss is multiplied by ``τ²``.
        form: ``"kl"`` (0 when equal) or ``"soft_ce"``.

    Returns:
        Scalar.
    """
    _check_same(logits_s, logits_t, "logit_kd")
    mask = _token_mask(logits_s, mask)
    per = _kl_per_position(logits_t.detach(), logits_s, temperature, form)
    return temperature**2 * masked_mean(per, mask)


def reverse_kl(
    logits_s: torch.Tensor, logits_t: torch.Tensor, mask: torch.Tensor | None = None, temperature: float = 1.0
) -> torch.Tensor:
    """Reverse KD: ``τ² · mean_{valid} KL(p_S ‖ p_T)`` (mode-seeking). Shapes as :func:`logit_kd`."""
    _check_same(logits_s, logits_t, "reverse_kl")
    mask = _token_mask(logits_s, mask)
    per = _kl_per_position(logits_s, logits_t.detach(), temperature)
    return temperature**2 * masked_mean(per, mask)


@torch.no_grad()
def tsld_token_weights(
    logits_t: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor | None = None, tau: float = 10.0
) -> torch.Tensor:
    """TSLD token scale ``s = softmax_t(CE_T / τ)`` per sequence, over valid positions only.

    Args:
        logits_t: Teacher logits ``(B, T, V)`` (aligned with ``labels``).
        labels: ``(B, T)`` targets; ``IGNORE_INDEX`` positions get weight 0.
        mask: ``(B, T)`` or ``None``; padding gets weight 0 (masked before the softmax).
        tau: Temperature of the token softmax (10 in the paper).

    Returns:
        ``(B, T)`` float weights, summing to 1 over the valid positions of each sequence (all 0 for a
        sequence without any valid position). Detached.
    """
    valid = labels != IGNORE_INDEX
    if mask is not None:
        valid = valid & mask.bool()
    ce_t = F.cross_entropy(
        logits_t.float().flatten(0, -2), labels.clamp_min(0).flatten(), reduction="none"
    ).view(labels.shape)  # (B, T)
    scores = (ce_t / tau).masked_fill(~valid, float("-inf"))
    weights = torch.softmax(scores, dim=-1)
    return torch.nan_to_num(weights, nan=0.0) * valid  # empty rows: softmax of all -inf is nan


def tsld_loss(
    logits_s: torch.Tensor,
    logits_t: torch.Tensor,
    labels: torch.Tensor,
    mask: torch.Tensor | None = None,
    tau: float = 10.0,
    form: str = "kl",
) -> torch.Tensor:
    """Token-scaled logit distillation ``mean_b Σ_t s[b,t] · KL(p_T[b,t] ‖ p_S[b,t])``.

    Args:
        logits_s: Student logits ``(B, T, V)`` aligned with ``labels``.
        logits_t: Teacher logits ``(B, T, V)``.
        labels: ``(B, T)`` ground-truth next tokens (drive the token scale only).
        mask: ``(B, T)`` or ``None``.
        tau: Token-scale temperature.
        form: ``"kl"`` or ``"soft_ce"`` (the paper's form; same gradient).

    Returns:
        Scalar, averaged over sequences that have at least one valid position.
    """
    _check_same(logits_s, logits_t, "tsld_loss")
    weights = tsld_token_weights(logits_t, labels, mask, tau)  # (B, T)
    per = _kl_per_position(logits_t.detach(), logits_s, 1.0, form)  # (B, T)
    per_seq = (weights * per).sum(-1)  # (B,)
    return masked_mean(per_seq, weights.sum(-1) > 0)


def hidden_state_mse(
    hidden_s: torch.Tensor, hidden_t: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """MSE between hidden states, averaged over valid tokens and channels.

    Args:
        hidden_s: Student ``(B, T, C)``.
        hidden_t: Teacher ``(B, T, C)``.
        mask: ``(B, T)`` or ``None``.

    Returns:
        Scalar ``mean_{valid t, c} (H_S − H_T)²``.
    """
    _check_same(hidden_s, hidden_t, "hidden_state_mse")
    sq = (hidden_s.float() - hidden_t.detach().float()).pow(2).mean(-1)  # (B, T)
    return masked_mean(sq, mask)


def _log_mix(log_a: torch.Tensor, log_b: torch.Tensor, w: float) -> torch.Tensor:
    """``log(w·a + (1 − w)·b)`` from log-probabilities, stably (``0 < w < 1``)."""
    return torch.logaddexp(log_a + math.log(w), log_b + math.log1p(-w))


def _check_fraction(value: float, name: str) -> None:
    if not 0.0 < value < 1.0:
        raise ValueError(f"{name}: expected a value in (0, 1), got {value}")


def generalized_jsd(
    logits_s: torch.Tensor, logits_t: torch.Tensor, mask: torch.Tensor | None = None, beta: float = 0.1
) -> torch.Tensor:
    """Generalised Jensen-Shannon divergence ``β·KL(p_T ‖ m) + (1 − β)·KL(q_S ‖ m)``, ``m = β p_T + (1 − β) q_S``.

    Args:
        logits_s: Student ``(B, T, V)`` (aligned with the teacher's).
        logits_t: Teacher ``(B, T, V)`` (detached here).
        mask: ``(B, T)`` or ``None``.
        beta: ``β`` in (0, 1) (GKD / DistiLLM baseline: 0.1).

    Returns:
        Scalar mean over valid positions; 0 when the two agree.
    """
    _check_same(logits_s, logits_t, "generalized_jsd")
    _check_fraction(beta, "beta")
    mask = _token_mask(logits_s, mask)
    log_q = F.log_softmax(logits_s.float(), dim=-1)
    log_p = F.log_softmax(logits_t.detach().float(), dim=-1)
    log_m = _log_mix(log_p, log_q, beta)
    kl_pm = (log_p.exp() * (log_p - log_m)).sum(-1)
    kl_qm = (log_q.exp() * (log_q - log_m)).sum(-1)
    return masked_mean(beta * kl_pm + (1 - beta) * kl_qm, mask)


def skew_forward_kl(
    logits_s: torch.Tensor, logits_t: torch.Tensor, mask: torch.Tensor | None = None, alpha: float = 0.1
) -> torch.Tensor:
    """DistiLLM skew forward KL ``KL(p_T ‖ α p_T + (1 − α) q_S)``, mean over valid positions.

    Shapes as :func:`generalized_jsd`; ``alpha`` in (0, 1) (DistiLLM: 0.1). 0 when the two agree.
    """
    _check_same(logits_s, logits_t, "skew_forward_kl")
    _check_fraction(alpha, "alpha")
    mask = _token_mask(logits_s, mask)
    log_q = F.log_softmax(logits_s.float(), dim=-1)
    log_p = F.log_softmax(logits_t.detach().float(), dim=-1)
    per = (log_p.exp() * (log_p - _log_mix(log_p, log_q, alpha))).sum(-1)
    return masked_mean(per, mask)


def skew_reverse_kl(
    logits_s: torch.Tensor, logits_t: torch.Tensor, mask: torch.Tensor | None = None, alpha: float = 0.1
) -> torch.Tensor:
    """DistiLLM skew reverse KL ``KL(q_S ‖ (1 − α) p_T + α q_S)``, mean over valid positions.

    Shapes as :func:`generalized_jsd`; ``alpha`` in (0, 1). 0 when the two agree.
    """
    _check_same(logits_s, logits_t, "skew_reverse_kl")
    _check_fraction(alpha, "alpha")
    mask = _token_mask(logits_s, mask)
    log_q = F.log_softmax(logits_s.float(), dim=-1)
    log_p = F.log_softmax(logits_t.detach().float(), dim=-1)
    per = (log_q.exp() * (log_q - _log_mix(log_p, log_q, 1 - alpha))).sum(-1)
    return masked_mean(per, mask)


def linear_decay(step: int, total: int, start: float = 1.0) -> float:
    """``start · (1 − step / total)``, clamped at 0: PromptKD's regulariser weight ``λ_t`` (0-based ``step``)."""
    if total < 1:
        raise ValueError(f"total: expected a positive number of steps, got {total}")
    return start * max(0.0, 1.0 - step / total)


def promptkd_prompt_loss(
    logits_tp: torch.Tensor,
    logits_s: torch.Tensor,
    logits_t: torch.Tensor,
    mask: torch.Tensor | None = None,
    lam: float = 1.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PromptKD's soft-prompt objective ``KL(p_{T,φ} ‖ q_S) + λ · KL(p_{T,φ} ‖ p_T)``.

    Both KLs carry the prompted teacher in the first slot, as the authors' code (METHODS.md §3.1);
    per token over the vocabulary, averaged over valid (response) positions.

    Args:
        logits_tp: Prompted teacher ``(B, T, V)``, the only tensor that receives gradient
            (positions of the soft-prompt tokens already dropped, aligned with the others).
        logits_s: Student ``(B, T, V)`` (detached here).
        logits_t: Teacher without the prompt ``(B, T, V)`` (detached here).
        mask: ``(B, T)`` or ``None``.
        lam: ``λ_t`` (see :func:`linear_decay`).

    Returns:
        ``(loss, {"prompt_kl": KL(p_{T,φ} ‖ q_S), "prompt_reg": KL(p_{T,φ} ‖ p_T)})`` (parts detached).
    """
    _check_same(logits_tp, logits_s, "promptkd_prompt_loss")
    _check_same(logits_tp, logits_t, "promptkd_prompt_loss")
    mask = _token_mask(logits_tp, mask)
    kl_s = masked_mean(_kl_per_position(logits_tp, logits_s.detach(), 1.0), mask)
    kl_t = masked_mean(_kl_per_position(logits_tp, logits_t.detach(), 1.0), mask)
    return kl_s + lam * kl_t, {"prompt_kl": kl_s.detach(), "prompt_reg": kl_t.detach()}
