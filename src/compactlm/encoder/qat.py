"""Encoder QAT with knowledge distillation from the fine-tuned FP teacher.

Kim et al., "Understanding and Improving Knowledge Distillation for Quantization-Aware Training of
Large Transformer Encoders", EMNLP 2022 (arXiv 2211.11014). The student starts as a copy of the
teacher, is fake-quantized with the one training-time fake-quant linear
(:class:`compactlm.quant.fake.FakeQuantLinear`) under a :class:`~compactlm.quant.QuantScheme` and a
:class:`~compactlm.quant.fake.QATConfig`, and trained on

    L = L_pred + L_hidden + Σ_k c_k · L_k            (no ground-truth term)

* ``L_pred = soft-CE(z_S, softmax(z_T))`` on the classifier logits;
* ``L_hidden = Σ_{l=0..L} MSE(H_S^l, H_T^l)``, embeddings output included;
* ``L_k`` one loss variant (:data:`VARIANTS`):
  ``score-mse`` — TernaryBERT's baseline, ``Σ_l MSE(S_S^l, S_T^l)`` on pre-softmax scores;
  ``attn-map`` — ``Σ_l KL(A_T^l ‖ A_S^l)`` on attention probabilities;
  ``attn-out`` — ``Σ_l MSE(O_S^l, O_T^l)`` on attention sub-layer outputs;
  ``map-out`` — both map and output terms (c_map = c_out = 1, the authors' default).

The paper setting (the defaults of :class:`EncoderQATConfig`, also :data:`ENCODER_QAT`):

* scheme ``w2a8-tensor-actsym``: ternary weights, 8-bit *symmetric* dynamic per-tensor input
  activations of every block linear (``s = max|x| / 127`` over the real tokens); ``w4a8-sym-tensor-actsym``
  for 4-bit symmetric weights per row (the W4A8 rows), ``w8a8-dynamic-actsym`` for SDQ;
* TWN ternary *per tensor* for the linears (``per="tensor"``), TWN *per row* for the word embeddings
  (``embeddings=True``), symmetric min/max per row at 4 / 8 bits;
* pre-clip ``W_c = clamp(W, ±2.5)`` of the latent weights (``clip=2.5``; none at 8 bits in the
  benchmark and SDQ);
* Quant-Noise form of the STE (``noise_share=1``, every block quantized; SDQ schedules the share);
* straight-through gradient to ``W_c``; the pooler and classifier stay full precision (0.15 M of the
  22.7 M MiniLM parameters), as do position / token-type embeddings and LayerNorms.

Every layer converts to a :class:`~compactlm.quant.QuantLinear` (ternary: codes {−1, 0, 1} on the
signed 2-bit grid, scale ``α``); the word embeddings are written back as their dequantized values.
Training runs on :class:`compactlm.train.Trainer` with dropout off (eval mode) in student and teacher.

Loss terms are data (:data:`VARIANTS`: ``(term, weight)`` pairs); each term is a pure function of the
student / teacher :class:`KDOutputs`.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from compactlm.data.classification import get_task
from compactlm.distill.attention_losses import (
    attention_map_kl,
    attention_output_mse,
    attention_score_mse,
    sum_over_layers,
)
from compactlm.distill.losses import hidden_state_mse, logit_kd
from compactlm.encoder.finetune import (
    FinetuneConfig,
    accelerator_for,
    accuracy,
    check_classifier,
    encode_split,
    trim_padding,
)
from compactlm.distill.terms import resolve_terms as _resolve_terms
from compactlm.errors import CompactLMError
from compactlm.models.attention import AttentionCapture
from compactlm.models.specs import get_blocks, get_module, get_spec, set_module
from compactlm.quant.activation import padding_mask
from compactlm.quant.fake import (
    QATConfig,
    convert_fake_quant,
    fake_quant_embedding,
    fake_quant_linear,
    fake_quant_modules,  # noqa: F401  (re-exported: the encoder's fake-quant modules)
    set_noise_share,  # noqa: F401  (re-exported: SDQ's schedule)
)
from compactlm.quant.scheme import QuantScheme
from compactlm.train import TrainConfig, Trainer

log = logging.getLogger(__name__)

ENCODER_QAT = QATConfig(quantizer="auto", per="tensor", clip=2.5, embeddings=True, noise_share=1.0)
"""The paper's QAT config of encoders (module docstring); :class:`EncoderQATConfig` defaults to it."""


# ---- preparing and converting ------------------------------------------------------------------
def prepare_encoder_qat(model: nn.Module, scheme: "str | QuantScheme", config: QATConfig = ENCODER_QAT) -> nn.Module:
    """Replace every block linear (and, with ``config.embeddings``, the word embeddings) by a
    fake-quantized module, in place.

    Args:
        model: A BERT-like encoder with an ``ArchSpec``.
        scheme: Scheme string or :class:`~compactlm.quant.QuantScheme` (``w2a8-tensor-actsym``...).
        config: Weight quantizer, TWN granularity, pre-clip, embeddings, Quant-Noise.
    """
    scheme = QuantScheme.parse(scheme)
    spec = get_spec(model)
    if spec.kind != "encoder":
        raise CompactLMError(f"--model: encoder QAT needs a BERT-like encoder, got a {spec.kind}")
    for block in get_blocks(model):
        for name in spec.linears:
            module = get_module(block, name)
            if isinstance(module, nn.Linear):
                is_kv = name in spec.kv_proj
                set_module(block, name, fake_quant_linear(module.weight, module.bias, scheme, config, is_kv=is_kv))
    if config.embeddings and isinstance(model.get_input_embeddings(), nn.Embedding):
        model.set_input_embeddings(fake_quant_embedding(model.get_input_embeddings(), scheme, config))
    return model


def convert_encoder_qat(model: nn.Module) -> nn.Module:
    """Freeze a prepared model onto the integer grid: ``QuantLinear`` per linear, quantized embeddings."""
    return convert_fake_quant(model)


def ptq_encoder(model: nn.Module, scheme: "str | QuantScheme", config: QATConfig = ENCODER_QAT) -> nn.Module:
    """Round-to-nearest baseline: the same quantizers without training (prepare then convert)."""
    return convert_encoder_qat(prepare_encoder_qat(model, scheme, config))


# ---- loss terms ----------------------------------------------------------------------------------
@dataclass
class KDOutputs:
    """What one forward gives the loss terms.

    Attributes:
        logits: ``(B, num_labels)``.
        hidden: Per layer ``(B, T, C)``, embeddings output first (``L + 1`` tensors).
        probs / scores / outputs: Per layer attention probabilities / scores ``(B, H, T, T)`` and
            sub-layer outputs ``(B, T, C)`` (empty when not captured).
    """

    logits: torch.Tensor
    hidden: list[torch.Tensor] = field(default_factory=list)
    probs: list[torch.Tensor] = field(default_factory=list)
    scores: list[torch.Tensor] = field(default_factory=list)
    outputs: list[torch.Tensor] = field(default_factory=list)


Term = Callable[[KDOutputs, KDOutputs, torch.Tensor], torch.Tensor]

TERMS: dict[str, Term] = {
    "pred": lambda s, t, m: logit_kd(s.logits, t.logits, form="soft_ce"),
    "logits_kl": lambda s, t, m: logit_kd(s.logits, t.logits, form="kl"),
    "hidden": lambda s, t, m: sum_over_layers(hidden_state_mse, s.hidden, t.hidden, m),
    "attn_score": lambda s, t, m: sum_over_layers(attention_score_mse, s.scores, t.scores, m),
    "attn_map": lambda s, t, m: sum_over_layers(attention_map_kl, s.probs, t.probs, m),
    "attn_out": lambda s, t, m: sum_over_layers(attention_output_mse, s.outputs, t.outputs, m),
}

VARIANTS: dict[str, tuple[tuple[str, float], ...]] = {
    "score-mse": (("pred", 1.0), ("hidden", 1.0), ("attn_score", 1.0)),
    "attn-map": (("pred", 1.0), ("hidden", 1.0), ("attn_map", 1.0)),
    "attn-out": (("pred", 1.0), ("hidden", 1.0), ("attn_out", 1.0)),
    "map-out": (("pred", 1.0), ("hidden", 1.0), ("attn_map", 1.0), ("attn_out", 1.0)),
}


def resolve_terms(loss: "str | tuple") -> tuple[tuple[str, float], ...]:
    """A variant name of :data:`VARIANTS` or explicit ``((term, weight), ...)`` → checked term list."""
    return _resolve_terms(loss, VARIANTS, TERMS, "encoder KD variant")


def kd_forward(model: nn.Module, batch: dict, needs: set[str], detach: bool = False) -> KDOutputs:
    """Forward ``model`` on ``batch`` capturing what the ``needs`` terms read."""
    want_hidden = "hidden" in needs
    with AttentionCapture(
        getattr(model, "module", model),  # DDP: capture on the wrapped model, call the wrapper
        probs="attn_map" in needs, scores="attn_score" in needs, outputs="attn_out" in needs, detach=detach,
    ) as cap, padding_mask(batch.get("attention_mask")):
        out = model(**batch, output_hidden_states=want_hidden)
    keep = (lambda xs: [x.detach() for x in xs]) if detach else list
    return KDOutputs(
        logits=out.logits.detach() if detach else out.logits,
        hidden=keep(out.hidden_states) if want_hidden else [],
        probs=cap.probs if "attn_map" in needs else [],
        scores=cap.scores if "attn_score" in needs else [],
        outputs=cap.outputs if "attn_out" in needs else [],
    )


def kd_loss(
    terms: tuple[tuple[str, float], ...], student: KDOutputs, teacher: KDOutputs, mask: torch.Tensor
) -> tuple[torch.Tensor, dict[str, float]]:
    """``Σ_k w_k · term_k(student, teacher, mask)`` and the unweighted value of every term."""
    total, parts = 0.0, {}
    for name, weight in terms:
        value = TERMS[name](student, teacher, mask)
        parts[name] = float(value.detach())
        total = total + weight * value
    return total, parts


# ---- training ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class EncoderQATConfig(FinetuneConfig):
    """Options of encoder QAT (and SDQ, which adds its own in :mod:`compactlm.encoder.sdq`).

    Those of :class:`~compactlm.encoder.finetune.FinetuneConfig` (task, steps / epochs, lr, batch
    size, warm-up, max length, train / eval limits, seed; paper: 3 epochs, LR 2e-5, warm-up 0.1,
    batch 32) plus the scheme, the :class:`~compactlm.quant.fake.QATConfig` fields and the loss:

    Attributes:
        scheme: Quantization scheme (:mod:`compactlm.quant.scheme` grammar), e.g.
            ``w2a8-tensor-actsym`` (the paper's W2A8), ``w4a8-sym-tensor-actsym``.
        quantizer: Weight quantizer (``auto``: TWN at 2 bits, min/max otherwise; ``twn``, ``pact``,
            ``lsq``, ``minmax``).
        per: TWN granularity of the linears: ``tensor`` (paper) or ``channel`` / ``row``.
        clip: Symmetric pre-clip of the latent weights (``None``: none).
        embeddings: Quantize the word embeddings (per row).
        loss: KD variant (:data:`VARIANTS`).
    """

    epochs: float = 3.0
    lr: float = 2e-5
    weight_decay: float = 0.0
    scheme: str = "w2a8-tensor-actsym"
    quantizer: str = ENCODER_QAT.quantizer
    per: str = ENCODER_QAT.per
    clip: float | None = ENCODER_QAT.clip
    embeddings: bool = ENCODER_QAT.embeddings
    loss: str = "attn-map"

    def __post_init__(self) -> None:
        super().__post_init__()
        QuantScheme.parse(self.scheme)
        self.qat_config()

    def qat_config(self) -> QATConfig:
        """The :class:`~compactlm.quant.fake.QATConfig` of the student (Quant-Noise form, share 1)."""
        return dataclasses.replace(ENCODER_QAT, quantizer=self.quantizer, per=self.per, clip=self.clip,
                                   embeddings=self.embeddings)


def kd_qat(
    student: nn.Module,
    teacher: nn.Module,
    train: dict[str, torch.Tensor],
    terms: tuple[tuple[str, float], ...],
    config: TrainConfig,
    *,
    on_step: Callable[[nn.Module, int, int], None] | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    job: dict | None = None,
    desc: str = "qat",
    progress: bool = True,
) -> Trainer:
    """Train ``student`` to match ``teacher`` on ``train`` on the one trainer; returns the trainer.

    ``on_step(student, step, total)`` runs before each step (SDQ's Quant-Noise schedule). Dropout is
    off in both models (``train_mode=False``): the quantization noise is the regulariser, and teacher
    targets stay deterministic. Attention maps need eager attention: the models' attention
    implementation (and the teacher's train / eval mode) are restored afterwards, also on failure.
    A checkpoint in ``checkpoint_dir`` with the same ``config`` and ``job`` is resumed.
    """
    needs = {name for name, _ in terms}
    teacher_training = teacher.training
    attn = {id(m): (m, m.config._attn_implementation) for m in (teacher, student)}
    teacher.eval()
    student.requires_grad_(True)
    try:
        if "attn_map" in needs:  # attention maps need eager attention (same function as SDPA)
            for m, _ in attn.values():
                m.set_attn_implementation("eager")

        def compute_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
            batch = {k: v for k, v in batch.items() if k != "labels"}  # no ground-truth term
            with torch.no_grad():
                t_out = kd_forward(teacher, batch, needs, detach=True)
            s_out = kd_forward(model, batch, needs)
            return kd_loss(terms, s_out, t_out, batch["attention_mask"])

        trainer = Trainer(student, compute_loss, train, config, checkpoint_dir=checkpoint_dir,
                          accelerator=accelerator_for(student), progress=progress, extra_modules=(teacher,),
                          on_step=on_step, collate=trim_padding, train_mode=False, job=job, desc=desc)
        trainer.train()
    finally:  # the caller's models keep their attention implementation (and the teacher its mode)
        for m, impl in attn.values():
            if m.config._attn_implementation != impl:
                m.set_attn_implementation(impl)
        teacher.train(teacher_training)
    return trainer


def _mean_tail(history: list[dict[str, float]], n: int = 10) -> dict[str, float]:
    tail = history[-n:]
    return {k: round(sum(h[k] for h in tail) / len(tail), 5) for k in tail[0]}


def loss_curve(history: list[dict[str, float]], points: int = 10) -> list[float]:
    """Mean total loss over each of ``points`` equal stretches of the run (shows whether it flattened)."""
    if not history:
        return []
    n = len(history)
    bounds = [round(i * n / points) for i in range(points + 1)]
    return [round(sum(h["loss"] for h in history[a:b]) / (b - a), 5) for a, b in zip(bounds, bounds[1:]) if b > a]


def run_encoder_qat(
    teacher: nn.Module, tokenizer, config: EncoderQATConfig, progress: bool = True,
    terms: tuple[tuple[str, float], ...] | None = None,
    on_step: Callable[[nn.Module, int, int], None] | None = None,
    eval_splits: tuple[str, ...] = ("validation", "test"),
    checkpoint_dir: str | os.PathLike | None = None,
) -> tuple[nn.Module, dict]:
    """Quantize a copy of ``teacher`` with KD-QAT; returns ``(converted student, report)``.

    The teacher's weights are left untouched. The report holds the canonical scheme name, the QAT
    config, the accuracy of the converted (integer-grid) student on ``eval_splits``, the loss at the
    start and end, steps and seconds. With ``checkpoint_dir``, a checkpoint there (same settings)
    is resumed and checkpoints are written every ``config.checkpoint_every`` steps.
    """
    check_classifier(teacher, config.task)
    scheme = QuantScheme.parse(config.scheme)
    terms = terms or resolve_terms(config.loss)
    torch.manual_seed(config.seed)
    train = encode_split(tokenizer, config.task, "train", config.train_limit, config.seed, config.max_length)
    train_config = config.train_config(len(train["labels"]))
    student = prepare_encoder_qat(copy.deepcopy(teacher), scheme, config.qat_config())
    job = {**config.job_settings(), "scheme": scheme.name, "terms": [list(t) for t in terms]}
    trainer = kd_qat(student, teacher, train, terms, train_config, on_step=on_step, checkpoint_dir=checkpoint_dir,
                     job=job, desc=f"qat {scheme.name} {config.loss}", progress=progress)
    history = trainer.history
    student = convert_encoder_qat(trainer.unwrapped).eval()
    report = {
        "task": config.task,
        "scheme": scheme.name,
        "qat_config": dataclasses.asdict(config.qat_config()),
        "loss": config.loss,
        "terms": [list(t) for t in terms],
        "steps": train_config.steps,
        "train_examples": len(train["labels"]),
        "resumed_at_step": trainer.resumed_at,
        "loss_start": _mean_tail(history[:10]),
        "loss_end": _mean_tail(history),
        "loss_curve": loss_curve(history),
        "train_seconds": round(trainer.seconds, 1),
        **evaluate_classifier(student, tokenizer, config.task, config.eval_limit, config.max_length, eval_splits),
    }
    return student, report


def evaluate_classifier(model: nn.Module, tokenizer, task: str, eval_limit: int | None = None,
                        max_length: int | None = None, splits=("validation", "test")) -> dict:
    """``{<split>_acc, <split>_examples}`` of a classifier on the task's fixed splits."""
    get_task(task)
    out = {}
    for split in splits:
        enc = encode_split(tokenizer, task, split, eval_limit, 0, max_length)
        out[f"{split[:3] if split == 'validation' else split}_acc"] = round(accuracy(model, enc), 4)
        out[f"{split[:3] if split == 'validation' else split}_examples"] = len(enc["labels"])
    return out
