"""Capture attention tensors of every block at run time, with forward hooks (no forked model code).

What distillation of encoders needs (Kim et al., EMNLP 2022; TernaryBERT; SDQ), per layer ``l``:

* attention probabilities ``A_l = softmax(Q Kᵀ / √d + M)`` ``(B, H, T, T)`` — the second output of the
  self-attention module under eager attention (the same tensor ``output_attentions=True`` returns);
* attention scores ``S_l = Q Kᵀ / √d`` ``(B, H, T, T)`` before the mask and softmax (TernaryBERT's
  baseline) — rebuilt from the outputs of the query and key projections, captured by hooks;
* attention sub-layer outputs ``O_l`` ``(B, T, C)`` — the output of ``ArchSpec.attention_output``
  (after the residual and LayerNorm in post-norm encoders).

Where the hooks go comes from :class:`~compactlm.models.specs.ArchSpec` (``attention``,
``attention_output``, the q/k projections of the first linear group), so hooks survive the
replacement of linears by fake-quantized ones as long as the capture is opened after it.
Tensors are kept with their autograd graph (the student's losses backpropagate through them);
pass ``detach=True`` for a teacher.

    >>> with AttentionCapture(model, probs=True, outputs=True) as cap:
    ...     logits = model(**batch).logits
    ...     loss = sum_layers(attention_map_kl, cap.probs, teacher_probs, batch["attention_mask"])
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from compactlm.errors import CompactLMError
from compactlm.models.specs import get_blocks, get_module, get_spec

log = logging.getLogger(__name__)


class AttentionCapture:
    """Record per-layer attention probabilities, scores and sub-layer outputs during forwards.

    Args:
        model: A supported HF model (encoders for ``scores``).
        probs: Record attention probabilities ``(B, H, T, T)``.
        scores: Record pre-softmax, pre-mask scores ``(B, H, T, T)`` (encoders only).
        outputs: Record attention sub-layer outputs ``(B, T, C)``.
        detach: Store detached tensors (no graph; for teachers).

    Attention probabilities need eager attention: the capture switches the model to it while open
    (eager and SDPA compute the same function) and restores the previous implementation on exit.
    Each forward overwrites the previous one's tensors.
    """

    def __init__(self, model: nn.Module, probs: bool = False, scores: bool = False, outputs: bool = False,
                 detach: bool = False):
        self.model = model
        self.spec = get_spec(model)
        if scores and self.spec.kind != "encoder":
            raise CompactLMError("attention scores are captured for encoders only (decoders rotate q and k)")
        self.want_probs, self.want_scores, self.want_outputs = probs, scores, outputs
        self.detach = detach
        self._handles: list = []
        self._previous_impl: str | None = None
        self._probs: dict[int, torch.Tensor] = {}
        self._q: dict[int, torch.Tensor] = {}
        self._k: dict[int, torch.Tensor] = {}
        self._outputs: dict[int, torch.Tensor] = {}

    # -- lifecycle -------------------------------------------------------------------------------
    def __enter__(self) -> "AttentionCapture":
        config = self.model.config
        if self.want_probs and getattr(config, "_attn_implementation", "eager") != "eager":
            self._previous_impl = config._attn_implementation
            self.model.set_attn_implementation("eager")
        q_name, k_name = self.spec.linear_groups[0][:2]
        for i, block in enumerate(get_blocks(self.model)):
            if self.want_probs:
                self._hook(get_module(block, self.spec.attention), self._store_probs, i)
            if self.want_scores:
                self._hook(get_module(block, q_name), self._store_output, i, self._q)
                self._hook(get_module(block, k_name), self._store_output, i, self._k)
            if self.want_outputs:
                self._hook(get_module(block, self.spec.attention_output), self._store_output, i, self._outputs)
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        if self._previous_impl is not None:
            self.model.set_attn_implementation(self._previous_impl)
            self._previous_impl = None

    def clear(self) -> None:
        """Drop the stored tensors (frees their graphs)."""
        for d in (self._probs, self._q, self._k, self._outputs):
            d.clear()

    # -- hooks -------------------------------------------------------------------------------------
    def _hook(self, module: nn.Module, fn, i: int, *args) -> None:
        self._handles.append(module.register_forward_hook(lambda m, inp, out: fn(i, out, *args)))

    def _keep(self, t: torch.Tensor) -> torch.Tensor:
        return t.detach() if self.detach else t

    def _store_probs(self, i: int, out) -> None:
        weights = out[1] if isinstance(out, tuple) and len(out) > 1 else None
        if weights is None:
            raise CompactLMError(
                "attention probabilities were not returned; load the model with attn_implementation='eager'"
            )
        self._probs[i] = self._keep(weights)

    def _store_output(self, i: int, out, store: dict) -> None:
        store[i] = self._keep(out[0] if isinstance(out, tuple) else out)

    # -- results -----------------------------------------------------------------------------------
    @staticmethod
    def _ordered(d: dict[int, torch.Tensor], what: str) -> list[torch.Tensor]:
        if not d:
            raise CompactLMError(f"no {what} captured: run a forward inside the capture, with {what} enabled")
        return [d[i] for i in sorted(d)]

    @property
    def probs(self) -> list[torch.Tensor]:
        """Per layer, attention probabilities ``(B, H, T, T)`` (rows sum to 1)."""
        return self._ordered(self._probs, "probs")

    @property
    def outputs(self) -> list[torch.Tensor]:
        """Per layer, attention sub-layer outputs ``(B, T, C)``."""
        return self._ordered(self._outputs, "outputs")

    @property
    def scores(self) -> list[torch.Tensor]:
        """Per layer, attention scores ``Q Kᵀ / √d`` ``(B, H, T, T)`` before mask and softmax."""
        config = self.model.config
        n_heads = config.num_attention_heads
        out = []
        for q, k in zip(self._ordered(self._q, "scores"), self._ordered(self._k, "scores")):
            B, T, C = q.shape
            d = C // n_heads
            qh = q.view(B, T, n_heads, d).transpose(1, 2)  # (B, H, T, d)
            kh = k.view(B, T, n_heads, d).transpose(1, 2)  # (B, H, T, d)
            out.append(qh @ kh.transpose(-1, -2) * d**-0.5)  # (B, H, T, T)
        return out
