"""Distillation objective of a causal LM: a weighted list of loss terms against a frozen teacher.

``L = Σ_k w_k · L_k`` over terms declared as data (a recipe's ``loss:`` list), each logged:

=========  =====================================================================================
term       definition (:mod:`compactlm.distill.losses`, after the one-position shift)
=========  =====================================================================================
gt         ground-truth next-token cross-entropy of the student
kd         forward ``τ²·KL(p_T ‖ p_S)`` per token (logit KD), temperature ``τ``
rkl        reverse ``τ²·KL(p_S ‖ p_T)`` per token
tsld       token-scaled logit distillation (Kim et al., NeurIPS 2023), token temperature ``tsld_tau``
hidden     layer-to-layer: ``Σ_l MSE(H_S^l, H_T^l)`` over the embedding output and every block output
attn       layer-to-layer: ``Σ_l MSE(A_S^l, A_T^l)`` over attention *probabilities* ``(B, H, T, T)``
           and valid (query, key) pairs (decoders rotate q/k, so TernaryBERT's pre-softmax scores
           are not captured; :class:`compactlm.models.attention.AttentionCapture`, eager attention)
=========  =====================================================================================

Presets (:data:`LOSS_PRESETS`) name the variants of the TSLD paper's comparison: ``gt``, ``kd``
(logit KD), ``kd+gt``, ``tsld`` (= TSLD + GT, the paper's total loss) and ``l2l`` (layer-to-layer:
hidden states + attention maps, plus logit KD).
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Mapping, Sequence

import torch
from torch import nn

from compactlm.distill import losses as L
from compactlm.errors import CompactLMError

TERMS = ("gt", "kd", "rkl", "tsld", "hidden", "attn")
LOSS_PRESETS: dict[str, tuple[tuple[str, float], ...]] = {
    "gt": (("gt", 1.0),),
    "kd": (("kd", 1.0),),
    "kd+gt": (("kd", 1.0), ("gt", 1.0)),
    "tsld": (("tsld", 1.0), ("gt", 1.0)),
    "rkl": (("rkl", 1.0),),
    "l2l": (("hidden", 1.0), ("attn", 1.0), ("kd", 1.0)),
}


def parse_terms(loss: "str | Sequence | Mapping") -> tuple[tuple[str, float], ...]:
    """Loss terms from a preset name, ``"tsld:1,gt:0.5"``, a ``{term: weight}`` mapping or pairs.

    Raises:
        CompactLMError: naming ``--loss`` and the known presets / terms.
    """
    if isinstance(loss, str):
        if loss in LOSS_PRESETS:
            return LOSS_PRESETS[loss]
        try:
            pairs = [(p.split(":")[0].strip(), float(p.split(":")[1]) if ":" in p else 1.0)
                     for p in loss.split(",") if p.strip()]
        except ValueError:
            raise CompactLMError(f"--loss: cannot parse {loss!r}; expected term:weight,... ") from None
    elif isinstance(loss, Mapping):
        pairs = [(str(k), float(v)) for k, v in loss.items()]
    else:
        pairs = [(str(t[0]), float(t[1])) if isinstance(t, (list, tuple)) else (str(t), 1.0) for t in loss]
    bad = [t for t, _ in pairs if t not in TERMS]
    if bad or not pairs:
        raise CompactLMError(
            f"--loss: unknown term(s) {bad or loss!r}; presets: {', '.join(LOSS_PRESETS)}; terms: {', '.join(TERMS)}"
        )
    return tuple(pairs)


class LMDistillLoss:
    """``compute_loss(model, batch) -> (loss, parts)`` for :class:`~compactlm.train.Trainer`.

    Args:
        teacher: The frozen full-precision model (put in eval mode, no gradients).
        terms: ``(term, weight)`` pairs (see :func:`parse_terms`).
        temperature: KD temperature ``τ`` of ``kd`` / ``rkl``.
        tsld_tau: Token-scale temperature of ``tsld`` (10 in the paper).

    ``batch``: ``input_ids`` ``(B, T)`` and optionally ``attention_mask`` ``(B, T)`` / ``labels``
    ``(B, T)`` (``-100`` = ignore; defaults to the inputs).
    """

    def __init__(self, teacher: nn.Module | None, terms, temperature: float = 1.0, tsld_tau: float = 10.0):
        self.terms = parse_terms(terms)
        names = {t for t, _ in self.terms}
        self.needs_teacher = bool(names - {"gt"})
        if self.needs_teacher and teacher is None:
            raise CompactLMError(f"--loss: terms {sorted(names - {'gt'})} need a teacher")
        self.teacher = teacher
        if teacher is not None:
            teacher.eval().requires_grad_(False)
        self.hidden = "hidden" in names
        self.attn = "attn" in names
        self.temperature = temperature
        self.tsld_tau = tsld_tau

    def _capture(self, model: nn.Module, detach: bool):
        from compactlm.models.attention import AttentionCapture

        return AttentionCapture(model, probs=True, detach=detach) if self.attn else nullcontext()

    def __call__(self, model: nn.Module, batch: Mapping[str, torch.Tensor]):
        ids = batch["input_ids"]
        am = batch.get("attention_mask")
        labels = batch.get("labels", ids)
        if am is not None:
            labels = labels.masked_fill(am == 0, L.IGNORE_INDEX)
        with self._capture(getattr(model, "module", model), detach=False) as cap_s:
            out_s = model(input_ids=ids, attention_mask=am, output_hidden_states=self.hidden)
        z_s, y, mask = L.shift_for_causal_lm(out_s.logits, labels, am)
        z_t = out_t = None
        if self.needs_teacher:
            with torch.no_grad(), self._capture(self.teacher, detach=True) as cap_t:
                out_t = self.teacher(input_ids=ids, attention_mask=am, output_hidden_states=self.hidden)
            z_t = out_t.logits[:, :-1]
        parts: dict[str, torch.Tensor] = {}
        total = 0.0
        for name, weight in self.terms:
            if name == "gt":
                value = L.gt_cross_entropy(z_s, y, mask)
            elif name == "kd":
                value = L.logit_kd(z_s, z_t, mask, self.temperature)
            elif name == "rkl":
                value = L.reverse_kl(z_s, z_t, mask, self.temperature)
            elif name == "tsld":
                value = L.tsld_loss(z_s, z_t, y, mask, self.tsld_tau)
            elif name == "hidden":
                value = sum(L.hidden_state_mse(hs, ht, am) for hs, ht in zip(out_s.hidden_states, out_t.hidden_states))
            else:  # attn
                value = sum(L.attention_score_mse(a_s, a_t, am) for a_s, a_t in zip(cap_s.probs, cap_t.probs))
            parts[name] = value.detach()
            total = total + weight * value
        return total, parts
