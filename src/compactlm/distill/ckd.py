"""Task distillation of encoder students: no-KD, logit KD, KD + hidden MSE and contextual KD (CKD).

METHODS.md §3.2 (Park, Kim, Yang, EMNLP 2021). A student (a depth- or width-pruned copy of the
teacher, :mod:`compactlm.models.prune`, or any smaller encoder with the task's head) is trained on
the task's train split from a fine-tuned teacher with

    L = Σ_k w_k · term_k(student, teacher)

where the terms and weights are data (:data:`VARIANTS`, ``(term, weight)`` pairs; :data:`TERMS`
maps a term to a pure function of both models' :class:`Outputs`):

* ``ce`` — ground-truth cross-entropy (only the ``none`` variant: plain fine-tuning);
* ``kd`` — ``τ² · KL(softmax(z_T/τ) ‖ softmax(z_S/τ))`` on the classifier logits (Hinton); as in
  CKD, it *replaces* the ground-truth term;
* ``hidden`` — ``Σ_l MSE(W_h H_S^l, H_T^{m(l)})`` over the matched layers ``m`` (embeddings + uniform
  skip, :func:`~compactlm.distill.relation_losses.match_layers`), ``W_h`` a learned projection
  when widths differ (TinyBERT / DynaBERT), trained with the student and not saved;
* ``wr_dist``, ``wr_angle`` — word relations within each matched layer pair (mean over pairs);
* ``ltr_dist``, ``ltr_angle`` — layer-transforming relations across the matched layers, per token.

Relations need no projection: teacher and student may differ in width and depth. Default
weights: ``hidden`` 0.1 (DynaBERT's), relation terms 10 each (the paper tunes them per task in
0.1–1000; compactlm's default, not the authors'), ``τ = 1``. Training runs on
:class:`compactlm.train.Trainer`, dropout on in the student, the teacher in eval mode.
"""

from __future__ import annotations

import copy
import logging
import os
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from compactlm.distill.losses import logit_kd
from compactlm.distill.relation_losses import (
    HiddenProjection,
    layers_mean,
    ltr_angle,
    ltr_dist,
    projected_hidden_mse,
    select_layers,
    wr_angle,
    wr_dist,
)
from compactlm.encoder.finetune import (
    FinetuneConfig,
    accelerator_for,
    check_classifier,
    encode_split,
    trim_padding,
)
from compactlm.distill.terms import resolve_terms as _resolve_terms
from compactlm.errors import CompactLMError
from compactlm.quant.activation import padding_mask
from compactlm.train import Trainer

log = logging.getLogger(__name__)


@dataclass
class Outputs:
    """What one forward gives the terms: logits ``(B, C)`` and ``hidden_states`` (``L + 1`` of ``(B, T, C_h)``)."""

    logits: torch.Tensor
    hidden: Sequence[torch.Tensor] = ()


@dataclass
class TermContext:
    """Settings the terms read: labels, mask, temperature, projection, the layer map (``None``: uniform skip)."""

    labels: torch.Tensor | None
    mask: torch.Tensor
    temperature: float = 1.0
    projection: nn.Module | None = None
    layer_map: Callable[[Sequence[torch.Tensor], Sequence[torch.Tensor]], tuple[list, list]] = select_layers


Term = Callable[[Outputs, Outputs, TermContext], torch.Tensor]


def _matched(s: Outputs, t: Outputs, c: TermContext):
    return c.layer_map(s.hidden, t.hidden)


TERMS: dict[str, Term] = {
    "ce": lambda s, t, c: F.cross_entropy(s.logits.float(), c.labels),
    "kd": lambda s, t, c: logit_kd(s.logits, t.logits, temperature=c.temperature),
    "hidden": lambda s, t, c: projected_hidden_mse(*_matched(s, t, c), c.mask, c.projection),
    "wr_dist": lambda s, t, c: layers_mean(wr_dist, *_matched(s, t, c), c.mask),
    "wr_angle": lambda s, t, c: layers_mean(wr_angle, *_matched(s, t, c), c.mask),
    "ltr_dist": lambda s, t, c: ltr_dist(*_matched(s, t, c), c.mask),
    "ltr_angle": lambda s, t, c: ltr_angle(*_matched(s, t, c), c.mask),
}

RELATION_WEIGHT = 10.0
VARIANTS: dict[str, tuple[tuple[str, float], ...]] = {
    "none": (("ce", 1.0),),
    "kd": (("kd", 1.0),),
    "kd-hidden": (("kd", 1.0), ("hidden", 0.1)),
    "ckd": (("kd", 1.0), ("wr_dist", RELATION_WEIGHT), ("wr_angle", RELATION_WEIGHT),
            ("ltr_dist", RELATION_WEIGHT), ("ltr_angle", RELATION_WEIGHT)),
    "wr": (("kd", 1.0), ("wr_dist", RELATION_WEIGHT), ("wr_angle", RELATION_WEIGHT)),
    "ltr": (("kd", 1.0), ("ltr_dist", RELATION_WEIGHT), ("ltr_angle", RELATION_WEIGHT)),
}
"""The benchmark's variants: fine-tuning without KD, logit KD, KD + hidden MSE, CKD (WR + LTR), WR / LTR only."""


def resolve_terms(loss: "str | Sequence") -> tuple[tuple[str, float], ...]:
    """A variant name of :data:`VARIANTS` or explicit ``((term, weight), ...)`` → checked term list."""
    return _resolve_terms(loss, VARIANTS, TERMS, "encoder distillation variant")


def weighted_loss(terms, student: Outputs, teacher: Outputs | None, ctx: TermContext) -> tuple[torch.Tensor, dict]:
    """``Σ_k w_k · term_k`` and each term's unweighted value (detached, for logging)."""
    total, parts = 0.0, {}
    for name, weight in terms:
        value = TERMS[name](student, teacher, ctx)
        parts[name] = value.detach()
        total = total + weight * value
    return total, parts


def needs_hidden(terms) -> bool:
    return any(n not in ("ce", "kd") for n, _ in terms)


def needs_teacher(terms) -> bool:
    return any(n != "ce" for n, _ in terms)


def forward(model: nn.Module, batch: dict, hidden: bool) -> Outputs:
    """Classifier forward on the inputs of ``batch`` (``labels`` left out), hidden states when asked."""
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with padding_mask(inputs.get("attention_mask")):
        out = model(**inputs, output_hidden_states=hidden)
    return Outputs(out.logits, tuple(out.hidden_states) if hidden else ())


class StudentWithProjection(nn.Module):
    """The student and the hidden-state projection trained with it (only the student is kept)."""

    def __init__(self, student: nn.Module, projection: nn.Module):
        super().__init__()
        self.student, self.projection = student, projection

    def forward(self, **inputs):
        return self.student(**inputs)


# ---- students -------------------------------------------------------------------------------------------
def make_student(teacher: nn.Module, layers: int | None = None, width: float | None = None,
                 importance: "tuple | None" = None) -> nn.Module:
    """A pruned copy of ``teacher``: ``layers`` evenly spaced blocks and/or ``width`` of its heads and
    neurons (most important first; default importance: weight magnitude). The teacher is untouched."""
    from compactlm.models.prune import evenly_spaced, finalize, prune_depth, prune_width
    from compactlm.models.specs import get_blocks

    student = copy.deepcopy(teacher)
    if layers is not None:
        keep = evenly_spaced(len(get_blocks(student)), layers)
        if importance is not None:
            importance = tuple([imp[i] for i in keep] for imp in importance)
        prune_depth(student, keep)
    if width is not None and width < 1:
        student = prune_width(student, width, importance)
    return finalize(student)


# ---- training ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DistillEncoderConfig(FinetuneConfig):
    """Options of encoder distillation: those of :class:`~compactlm.encoder.finetune.FinetuneConfig`
    (task, epochs / steps, lr, batch size, warm-up, max length, limits, seed) plus:

    Attributes:
        loss: Variant of :data:`VARIANTS` (``none``, ``kd``, ``kd-hidden``, ``ckd``, ``wr``, ``ltr``).
        terms: Explicit ``((term, weight), ...)`` instead of the variant's (``None``: the variant's).
        temperature: ``τ`` of the logit KD term.
        student_layers: Blocks of the depth-pruned student (``None``: the teacher's).
        student_width: Width multiplier of the width-pruned student (``None``: 1).
    """

    loss: str = "ckd"
    terms: tuple | None = None
    temperature: float = 1.0
    student_layers: int | None = None
    student_width: float | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        resolve_terms(self.terms if self.terms is not None else self.loss)
        if self.temperature <= 0:
            raise CompactLMError(f"--temperature: expected a positive number, got {self.temperature}")

    def resolved_terms(self) -> tuple[tuple[str, float], ...]:
        return resolve_terms(self.terms if self.terms is not None else self.loss)


# fewest student blocks each relation term needs: LTR relates one token's states across the matched
# layers (embeddings + blocks): the distribution needs 2 states, the angle 3
MIN_BLOCKS = {"ltr_dist": 1, "ltr_angle": 2}


def check_depth(terms, n_blocks: int) -> None:
    """One-line error when the student is too shallow for a term (rather than a ``ValueError`` mid-step)."""
    for name, _ in terms:
        need = MIN_BLOCKS.get(name, 0)
        if n_blocks < need:
            raise CompactLMError(f"--student-layers: the {name} term needs a student with at least {need} "
                                 f"layers (got {n_blocks}); use more layers or a loss without LTR (kd, wr, kd-hidden)")


def distill_trainer(student: nn.Module, teacher: nn.Module | None, train: dict, terms, config, *,
                    temperature: float = 1.0, checkpoint_dir=None, job: dict | None = None, progress: bool = True,
                    desc: str = "distill") -> Trainer:
    """Train ``student`` on the weighted ``terms`` on the one trainer; returns the trainer (student
    at ``trainer.unwrapped`` — or ``.student`` of it when a projection was trained)."""
    hidden = needs_hidden(terms)
    check_depth(terms, student.config.num_hidden_layers)
    model: nn.Module = student
    if any(n == "hidden" for n, _ in terms):
        w_s, w_t = student.config.hidden_size, teacher.config.hidden_size
        if w_s != w_t:
            model = StudentWithProjection(student, HiddenProjection(w_s, w_t).to(next(student.parameters()).device))
    if teacher is not None:
        teacher.eval().requires_grad_(False)

    def compute_loss(m: nn.Module, batch: dict) -> tuple[torch.Tensor, dict]:
        projection = getattr(getattr(m, "module", m), "projection", None)
        t_out = None
        if teacher is not None and needs_teacher(terms):
            with torch.no_grad():
                t_out = forward(teacher, batch, hidden)
        s_out = forward(m, batch, hidden)
        ctx = TermContext(batch.get("labels"), batch["attention_mask"], temperature, projection)
        return weighted_loss(terms, s_out, t_out, ctx)

    extra = (teacher,) if teacher is not None else ()
    return Trainer(model, compute_loss, train, config, checkpoint_dir=checkpoint_dir, accelerator=accelerator_for(student),
                   progress=progress, extra_modules=extra, collate=trim_padding, job=job, desc=desc)


def run_distill_encoder(teacher: nn.Module, tokenizer, config: DistillEncoderConfig, student: nn.Module | None = None,
                        progress: bool = True, checkpoint_dir: str | os.PathLike | None = None,
                        eval_splits: Sequence[str] = ("validation", "test")) -> tuple[nn.Module, dict]:
    """Distil ``teacher`` into ``student`` (default: :func:`make_student` from the config); returns
    ``(student, report)`` with accuracies, parameter counts and the loss at start and end."""
    from compactlm.encoder.qat import evaluate_classifier
    from compactlm.models.prune import param_count

    check_classifier(teacher, config.task)
    terms = config.resolved_terms()
    torch.manual_seed(config.seed)
    if student is None:
        student = make_student(teacher, config.student_layers, config.student_width)
    check_classifier(student, config.task)
    train = encode_split(tokenizer, config.task, "train", config.train_limit, config.seed, config.max_length)
    train_config = config.train_config(len(train["labels"]))
    job = {**config.job_settings(), "terms": [list(t) for t in terms], "student_params": param_count(student)}
    trainer = distill_trainer(student, teacher, train, terms, train_config, temperature=config.temperature,
                              checkpoint_dir=checkpoint_dir, job=job, progress=progress,
                              desc=f"distill {config.task} {config.loss}")
    trainer.train()
    trained = trainer.unwrapped
    student = getattr(trained, "student", trained).eval()
    history = trainer.history
    tail = lambda hs: {k: round(sum(h[k] for h in hs) / len(hs), 5) for k in hs[0] if k not in ("step", "lr")}  # noqa: E731
    report = {
        "task": config.task,
        "loss": config.loss,
        "terms": [list(t) for t in terms],
        "temperature": config.temperature,
        "steps": train_config.steps,
        "train_examples": len(train["labels"]),
        "resumed_at_step": trainer.resumed_at,
        "loss_start": tail(history[:10]),
        "loss_end": tail(history[-10:]),
        "train_seconds": round(trainer.seconds, 1),
        "student_params": param_count(student),
        "teacher_params": param_count(teacher),
        "student_layers": student.config.num_hidden_layers,
        "student_heads": student.config.num_attention_heads,
        "student_intermediate": student.config.intermediate_size,
        **evaluate_classifier(student, tokenizer, config.task, config.eval_limit, config.max_length, eval_splits),
    }
    return student, report
