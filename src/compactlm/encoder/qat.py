"""Encoder QAT with knowledge distillation from the fine-tuned FP teacher (METHODS.md §2.2).

Kim et al., "Understanding and Improving Knowledge Distillation for Quantization-Aware Training of
Large Transformer Encoders", EMNLP 2022 (arXiv 2211.11014). The student starts as a copy of the
teacher, is fake-quantized (:mod:`compactlm.encoder.quantizers`: W2A8 ternary per tensor with
per-row ternary word embeddings, pre-clip ±2.5, 8-bit symmetric dynamic activations; or W4A8) and
trained on

    L = L_pred + L_hidden + Σ_k c_k · L_k            (no ground-truth term)

* ``L_pred = soft-CE(z_S, softmax(z_T))`` on the classifier logits;
* ``L_hidden = Σ_{l=0..L} MSE(H_S^l, H_T^l)``, embeddings output included;
* ``L_k`` one loss variant (:data:`VARIANTS`):
  ``score-mse`` — TernaryBERT's baseline, ``Σ_l MSE(S_S^l, S_T^l)`` on pre-softmax scores;
  ``attn-map`` — ``Σ_l KL(A_T^l ‖ A_S^l)`` on attention probabilities;
  ``attn-out`` — ``Σ_l MSE(O_S^l, O_T^l)`` on attention sub-layer outputs;
  ``map-out`` — both map and output terms (c_map = c_out = 1, the authors' default).

Loss terms are data (:data:`VARIANTS`: ``(term, weight)`` pairs); each term is a pure function of the
student / teacher :class:`KDOutputs`. The pooler and classifier stay full precision (0.15 M of the
22.7 M MiniLM parameters); record of other choices in :mod:`compactlm.encoder.quantizers`.
"""

from __future__ import annotations

import copy
import logging
import math
import time
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
    accuracy,
    check_classifier,
    encode_split,
    train_steps,
)
from compactlm.encoder.quantizers import (
    EncoderScheme,
    FakeQuantEmbedding,
    FakeQuantLinear,
    parse_encoder_scheme,
)
from compactlm.errors import CompactLMError
from compactlm.models.attention import AttentionCapture
from compactlm.models.specs import get_blocks, get_module, get_spec, set_module
from compactlm.quant.activation import padding_mask

log = logging.getLogger(__name__)


# ---- preparing and converting ------------------------------------------------------------------
def prepare_encoder_qat(model: nn.Module, scheme: "str | EncoderScheme") -> nn.Module:
    """Replace every block linear (and the word embeddings) by a fake-quantized module, in place."""
    scheme = parse_encoder_scheme(scheme)
    spec = get_spec(model)
    if spec.kind != "encoder":
        raise CompactLMError(f"--model: encoder QAT needs a BERT-like encoder, got a {spec.kind}")
    for block in get_blocks(model):
        for name in spec.linears:
            module = get_module(block, name)
            if isinstance(module, nn.Linear):
                set_module(block, name, FakeQuantLinear(module, scheme))
    if scheme.embeddings and isinstance(model.get_input_embeddings(), nn.Embedding):
        model.set_input_embeddings(FakeQuantEmbedding(model.get_input_embeddings(), scheme))
    return model


def fake_quant_modules(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, (FakeQuantLinear, FakeQuantEmbedding))]


def set_noise_share(model: nn.Module, share: float) -> None:
    """Quant-Noise share ``p`` of every fake-quantized module (1 = all blocks quantized)."""
    for m in fake_quant_modules(model):
        m.noise_share = share


@torch.no_grad()
def convert_encoder_qat(model: nn.Module) -> nn.Module:
    """Freeze a prepared model onto the integer grid: ``QuantLinear`` per linear, ternary embeddings."""
    for name, module in list(model.named_modules()):
        if isinstance(module, FakeQuantLinear):
            set_module(model, name, module.to_quant_linear())
    emb = model.get_input_embeddings()
    if isinstance(emb, FakeQuantEmbedding):
        model.set_input_embeddings(emb.to_embedding())
    return model


def ptq_encoder(model: nn.Module, scheme: "str | EncoderScheme") -> nn.Module:
    """Round-to-nearest baseline: the same quantizers without training (prepare then convert)."""
    return convert_encoder_qat(prepare_encoder_qat(model, scheme))


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
    """A variant name or explicit ``((term, weight), ...)`` → checked term list."""
    if isinstance(loss, str):
        if loss not in VARIANTS:
            raise CompactLMError(f"--loss: unknown encoder KD variant {loss!r}; known: {', '.join(VARIANTS)}")
        return VARIANTS[loss]
    terms = tuple((str(n), float(w)) for n, w in loss)
    for n, _ in terms:
        if n not in TERMS:
            raise CompactLMError(f"--loss: unknown loss term {n!r}; known: {', '.join(TERMS)}")
    return terms


def kd_forward(model: nn.Module, batch: dict, needs: set[str], detach: bool = False) -> KDOutputs:
    """Forward ``model`` on ``batch`` capturing what the ``needs`` terms read."""
    want_hidden = "hidden" in needs
    with AttentionCapture(
        model, probs="attn_map" in needs, scores="attn_score" in needs, outputs="attn_out" in needs, detach=detach
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

    Those of :class:`~compactlm.encoder.finetune.FinetuneConfig` (task, lr, batch size, warm-up,
    max length, train / eval limits, seed; paper: 3 epochs, LR 2e-5, warm-up 0.1, batch 32) plus:

    Attributes:
        scheme: ``w2a8``, ``w4a8`` or ``w8a8`` (:data:`~compactlm.encoder.quantizers.ENCODER_SCHEMES`).
        loss: KD variant (:data:`VARIANTS`).
        steps: Optimizer steps (``None``: ``epochs`` over the train data).
    """

    epochs: float = 3.0
    lr: float = 2e-5
    scheme: str = "w2a8"
    loss: str = "attn-map"
    steps: int | None = None


def distill_loop(
    student: nn.Module,
    teacher: nn.Module,
    train: dict[str, torch.Tensor],
    terms: tuple[tuple[str, float], ...],
    *,
    steps: int,
    lr: float,
    batch_size: int,
    warmup: float,
    seed: int,
    on_step: Callable[[nn.Module, int, int], None] | None = None,
    desc: str = "qat",
    progress: bool = True,
) -> list[dict[str, float]]:
    """Train ``student`` to match ``teacher`` on ``train`` batches; returns per-step loss parts.

    ``on_step(student, step, total)`` runs before each step (SDQ's Quant-Noise schedule). Runs through
    ``accelerate`` (device from the student). Dropout is off in both models: the quantization
    noise is the regulariser, and teacher targets stay deterministic.
    """
    needs = {name for name, _ in terms}
    teacher_training = teacher.training
    attn = {id(m): (m, m.config._attn_implementation) for m in (teacher, student)}
    teacher.eval()
    student.requires_grad_(True).eval()  # no dropout; autograd is unaffected
    try:
        if "attn_map" in needs:  # attention maps need eager attention (same function as SDPA)
            for m, _ in attn.values():
                m.set_attn_implementation("eager")

        def step_loss(batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
            batch = {k: v for k, v in batch.items() if k != "labels"}  # no ground-truth term
            with torch.no_grad():
                t_out = kd_forward(teacher, batch, needs, detach=True)
            s_out = kd_forward(student, batch, needs)
            return kd_loss(terms, s_out, t_out, batch["attention_mask"])

        _, history = train_steps(
            student, train, step_loss, steps=steps, lr=lr, batch_size=batch_size, warmup=warmup, weight_decay=0.0,
            seed=seed, on_step=on_step, desc=desc, progress=progress,
        )
    finally:  # the caller's models keep their attention implementation (and the teacher its mode)
        for m, impl in attn.values():
            if m.config._attn_implementation != impl:
                m.set_attn_implementation(impl)
        teacher.train(teacher_training)
    return history


def _mean_tail(history: list[dict[str, float]], n: int = 10) -> dict[str, float]:
    tail = history[-n:]
    return {k: round(sum(h[k] for h in tail) / len(tail), 5) for k in tail[0]}


def run_encoder_qat(
    teacher: nn.Module, tokenizer, config: EncoderQATConfig, progress: bool = True,
    terms: tuple[tuple[str, float], ...] | None = None,
    on_step: Callable[[nn.Module, int, int], None] | None = None,
    eval_splits: tuple[str, ...] = ("validation", "test"),
) -> tuple[nn.Module, dict]:
    """Quantize a copy of ``teacher`` with KD-QAT; returns ``(converted student, report)``.

    The teacher's weights are left untouched. The report holds the accuracy of the converted
    (integer-grid) student on ``eval_splits``, the loss at the start and end, steps and seconds.
    """
    check_classifier(teacher, config.task)
    scheme = parse_encoder_scheme(config.scheme)
    terms = terms or resolve_terms(config.loss)
    torch.manual_seed(config.seed)
    train = encode_split(tokenizer, config.task, "train", config.train_limit, config.seed, config.max_length)
    steps = config.steps or max(1, math.ceil(config.epochs * len(train["labels"]) / config.batch_size))
    student = prepare_encoder_qat(copy.deepcopy(teacher), scheme)
    start = time.perf_counter()
    history = distill_loop(
        student, teacher, train, terms, steps=steps, lr=config.lr, batch_size=config.batch_size,
        warmup=config.warmup, seed=config.seed, on_step=on_step, desc=f"qat {scheme.name} {config.loss}",
        progress=progress,
    )
    train_seconds = time.perf_counter() - start
    student = convert_encoder_qat(student).eval()
    report = {
        "task": config.task,
        "scheme": scheme.name,
        "loss": config.loss,
        "terms": [list(t) for t in terms],
        "steps": steps,
        "train_examples": len(train["labels"]),
        "loss_start": _mean_tail(history[:10]),
        "loss_end": _mean_tail(history),
        "train_seconds": round(train_seconds, 1),
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
