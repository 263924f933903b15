"""SDQ — self-distilled quantization (O'Neill & Dutta, arXiv 2307.05972).

The student (a copy of the fine-tuned FP teacher) is trained with Quant-Noise (Fan et al., 2020):
on each step only a random share ``p`` of its weight blocks is replaced by the 8-bit quantized
value (:func:`compactlm.quant.fake.quant_noise`), ``p`` rising linearly from
``p_start`` to 1 over the first ``ramp`` fraction of the steps and staying at 1 after, so training
ends fully quantized. It is distilled from the teacher on the output and on every self-attention
layer. The paper gives no exact weights; compactlm adopts

    L = KL(softmax(z_T) ‖ softmax(z_S)) + β · Σ_l mean_{b,h} (1/T) Σ_i KL(A_T^l[i,:] ‖ A_S^l[i,:])

with :func:`compactlm.distill.attention_losses.attention_map_kl` and ``β = 1``. Scheme
``w8a8-dynamic-actsym``: 8-bit symmetric weights per row (no pre-clip), 8-bit symmetric dynamic
per-tensor activations throughout; the result converts onto the integer grid. The schedule runs as
the trainer's ``on_step`` hook, so a resumed run continues it where it stopped.
Works for any BERT-like encoder with an :class:`~compactlm.models.specs.ArchSpec` (BERT, XLM-R).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

from torch import nn

from compactlm.encoder.qat import EncoderQATConfig, run_encoder_qat, set_noise_share
from compactlm.errors import CompactLMError


def quant_noise_share(step: int, total: int, p_start: float = 0.1, ramp: float = 0.8) -> float:
    """Share ``p`` of weight blocks quantized at ``step`` of ``total``.

    Linear from ``p_start`` at step 0 to 1 at ``ramp · total``, then 1.
    """
    if not 0.0 <= p_start <= 1.0:
        raise CompactLMError(f"--p-start: expected a share in [0, 1], got {p_start}")
    if not 0.0 < ramp <= 1.0:
        raise CompactLMError(f"--ramp: expected a fraction in (0, 1], got {ramp}")
    end = ramp * total
    if step >= end:
        return 1.0
    return p_start + (1.0 - p_start) * step / end


@dataclass(frozen=True)
class SDQConfig(EncoderQATConfig):
    """Options of SDQ (those of :class:`~compactlm.encoder.qat.EncoderQATConfig` plus the noise).

    Attributes:
        beta: Weight of the attention KL.
        p_start: Quant-Noise share at the first step.
        ramp: Fraction of the steps over which the share reaches 1.
    """

    scheme: str = "w8a8-dynamic-actsym"
    clip: float | None = None
    loss: str = "sdq"
    beta: float = 1.0
    p_start: float = 0.1
    ramp: float = 0.8


def sdq_terms(config: SDQConfig) -> tuple[tuple[str, float], ...]:
    """SDQ's loss terms: logits KL + ``β`` · attention-map KL summed over layers."""
    return (("logits_kl", 1.0), ("attn_map", config.beta))


def run_sdq(
    teacher: nn.Module, tokenizer, config: SDQConfig, progress: bool = True,
    eval_splits: tuple[str, ...] = ("validation", "test"), checkpoint_dir: str | os.PathLike | None = None,
) -> tuple[nn.Module, dict]:
    """SDQ-quantize a copy of ``teacher``; returns ``(converted student, report)`` (see ``run_encoder_qat``)."""
    quant_noise_share(0, 1, config.p_start, config.ramp)  # validates the schedule options
    terms = sdq_terms(config)

    def on_step(student: nn.Module, step: int, total: int) -> None:
        set_noise_share(student, quant_noise_share(step, total, config.p_start, config.ramp))

    student, report = run_encoder_qat(
        teacher, tokenizer, config, progress=progress, terms=terms, on_step=on_step, eval_splits=eval_splits,
        checkpoint_dir=checkpoint_dir,
    )
    report.update(method="sdq", **{k: v for k, v in dataclasses.asdict(config).items() if k in ("beta", "p_start", "ramp")})
    return student, report
