"""DynaBERT: one encoder whose sub-networks of any width × depth work (Hou et al., NeurIPS 2020).

METHODS.md §3.3. Steps:

1. **Rewire** a copy of the fine-tuned teacher (:func:`rewire_from_teacher`): head and FFN-neuron
   importance (:func:`compactlm.models.prune.gradient_importance`: ``Σ|∂L/∂head mask|`` and
   ``Σ|W ⊙ ∇W|`` of the task cross-entropy on a few batches, or weight magnitude), then every
   layer's units sorted by it, so the width-``w`` sub-network is the first ``round(w · n)`` heads
   and neurons of every layer (hidden size unchanged).
2. **Width-adaptive** training (stage ``width``): for each batch, every width in :data:`WIDTHS`
   (largest first) is run as a masked sub-network and its loss against the teacher added; the
   summed loss is one backward and one optimizer step (the same gradient as DynaBERT's per-width
   accumulation).
3. **Depth-adaptive** training (stage ``depth``): from stage 1, every (depth, width) of
   :data:`DEPTHS` × :data:`WIDTHS`; a depth-``d`` network keeps blocks ``floor(i / d)``,
   ``i < round(d · L)`` (:func:`depth_layers`: ``d = 0.5`` keeps every other block). The teacher of
   both stages is the fine-tuned full model (DynaBERT uses the stage-1 network as the stage-2
   teacher; compactlm keeps one teacher — a documented simplification).

Losses (``loss``): ``dynabert`` — soft-CE(logits, teacher) + 0.1 · Σ MSE(hidden) over the embeddings
and every kept block against the teacher's *same* block (no projection: the hidden size never
changes); ``ckd`` — the CKD relation terms (:data:`compactlm.distill.ckd.VARIANTS` ``ckd``) with the
same block pairing; ``dynabert+ckd`` — both.

:func:`subnetwork` runs a (width, depth) sub-network inside the full model by masking heads /
neurons and skipping blocks; :func:`extract` copies it out as a standalone, genuinely smaller model
(:mod:`compactlm.models.prune`), equal to the masked network on any input.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from compactlm.distill.ckd import VARIANTS as CKD_VARIANTS
from compactlm.distill.ckd import Outputs, TermContext, forward, weighted_loss
from compactlm.encoder.finetune import FinetuneConfig, accelerator_for, check_classifier, encode_split, trim_padding
from compactlm.errors import CompactLMError
from compactlm.models.prune import (
    finalize,
    gradient_importance,
    magnitude_importance,
    prune_depth,
    rewire,
    select_units,
    unit_counts,
    width_counts,
)
from compactlm.models.specs import base_model, get_blocks, get_module, get_spec, set_module
from compactlm.train import Trainer

log = logging.getLogger(__name__)

WIDTHS = (1.0, 0.75, 0.5, 0.25)
DEPTHS = (1.0, 0.75, 0.5)
LOSSES = ("dynabert", "ckd", "dynabert+ckd")


def depth_layers(n: int, depth: float) -> list[int]:
    """Blocks of a depth-``d`` sub-network of ``n`` blocks: ``floor(i / d)`` for ``i < round(d · n)``."""
    if not 0 < depth <= 1:
        raise CompactLMError(f"--depth: expected a multiplier in (0, 1], got {depth}")
    k = max(1, int(depth * n + 0.5))
    return [min(n - 1, int(i / depth + 1e-9)) for i in range(k)]


@contextlib.contextmanager
def subnetwork(model: nn.Module, width: float = 1.0, depth: float = 1.0) -> Iterator[list[int]]:
    """Run ``model`` as its (width, depth) sub-network inside the block: heads and neurons past the
    first ``round(w · n)`` of each layer are masked to zero, blocks outside :func:`depth_layers` are
    skipped. Yields the kept block indices. The model is restored on exit."""
    spec = get_spec(model)
    att_path, _, head_out = spec.extra["heads"]
    _, ffn_out = spec.extra["ffn"]
    blocks = get_blocks(model)
    keep = depth_layers(len(blocks), depth)
    handles = []
    for block, (H, F_) in zip(blocks, unit_counts(model)):
        kh, kn = width_counts(H, F_, width)
        d = get_module(block, att_path).attention_head_size
        if kh < H:
            def head_hook(module, args, n=kh * d):
                x = args[0].clone()
                x[..., n:] = 0
                return (x, *args[1:])

            handles.append(get_module(block, head_out).register_forward_pre_hook(head_hook))
        if kn < F_:
            def ffn_hook(module, args, n=kn):
                x = args[0].clone()
                x[..., n:] = 0
                return (x, *args[1:])

            handles.append(get_module(block, ffn_out).register_forward_pre_hook(ffn_hook))
    root = base_model(model)
    if len(keep) < len(blocks):
        set_module(root, spec.blocks, nn.ModuleList([blocks[i] for i in keep]))
    try:
        yield keep
    finally:
        for h in handles:
            h.remove()
        set_module(root, spec.blocks, blocks)


def extract(model: nn.Module, width: float = 1.0, depth: float = 1.0) -> nn.Module:
    """The (width, depth) sub-network as a standalone, smaller model (the input model is untouched)."""
    sub = copy.deepcopy(model)
    keep = depth_layers(len(get_blocks(sub)), depth)
    prune_depth(sub, keep)
    counts = unit_counts(sub)
    heads = [list(range(width_counts(H, F_, width)[0])) for H, F_ in counts]
    neurons = [list(range(width_counts(H, F_, width)[1])) for H, F_ in counts]
    return finalize(select_units(sub, heads, neurons))


def rewire_from_teacher(teacher: nn.Module, train: dict | None = None, importance: str = "gradient",
                        batches: int = 4, batch_size: int = 32) -> nn.Module:
    """A copy of ``teacher`` with every layer's heads and neurons sorted by importance.

    ``importance="gradient"`` uses the task cross-entropy on the first ``batches`` batches of
    ``train`` (encoded examples with ``labels``); ``"magnitude"`` needs no data.
    """
    model = copy.deepcopy(teacher).eval()
    if importance == "magnitude":
        imp = magnitude_importance(model)
    elif importance == "gradient":
        if train is None:
            raise CompactLMError("--importance gradient: needs training batches")
        device = next(model.parameters()).device
        n = len(train["labels"])
        chunks = [trim_padding({k: v[i:i + batch_size] for k, v in train.items()})
                  for i in range(0, min(n, batches * batch_size), batch_size)]

        def loss_fn(m, b):
            b = {k: v.to(device) for k, v in b.items()}
            return F.cross_entropy(forward(m, b, False).logits, b["labels"])

        imp = gradient_importance(model, chunks, loss_fn)
    else:
        raise CompactLMError(f"--importance: expected gradient or magnitude, got {importance!r}")
    return rewire(model, imp)


def _pair_layers(keep: Sequence[int]):
    """Student hidden states of the blocks ``keep`` ↔ the teacher's same blocks (embeddings ↔ embeddings)."""
    idx = [0] + [i + 1 for i in keep]

    def layer_map(hs, ht):
        return list(hs), [ht[j] for j in idx]

    return layer_map


def loss_terms(loss: str) -> tuple[tuple[str, float], ...]:
    """The weighted terms of a DynaBERT loss name (module docstring)."""
    if loss not in LOSSES:
        raise CompactLMError(f"--loss: expected one of {', '.join(LOSSES)}, got {loss!r}")
    dyna = (("soft_ce", 1.0), ("hidden", 0.1))
    ckd = CKD_VARIANTS["ckd"]
    return {"dynabert": dyna, "ckd": ckd, "dynabert+ckd": dyna + tuple(t for t in ckd if t[0] != "kd")}[loss]


def _soft_ce(s: Outputs, t: Outputs, c: TermContext) -> torch.Tensor:
    return -(F.softmax(t.logits.float() / c.temperature, -1) * F.log_softmax(s.logits.float() / c.temperature, -1)).sum(-1).mean()


@dataclass(frozen=True)
class DynaBERTConfig(FinetuneConfig):
    """Options of DynaBERT training; those of :class:`~compactlm.encoder.finetune.FinetuneConfig` plus:

    Attributes:
        widths: Width multipliers trained (largest first).
        depths: Depth multipliers of the depth stage.
        stages: ``("width",)``, ``("depth",)`` or both, in order.
        loss: ``dynabert`` (soft-CE + 0.1 hidden MSE), ``ckd`` (relation terms) or ``dynabert+ckd``.
        temperature: ``τ`` of the logit terms.
        importance: ``gradient`` (DynaBERT) or ``magnitude``.
        importance_batches: Batches of the gradient importance.
    """

    lr: float = 2e-5
    epochs: float = 3.0
    widths: tuple = WIDTHS
    depths: tuple = DEPTHS
    stages: tuple = ("width", "depth")
    loss: str = "dynabert"
    temperature: float = 1.0
    importance: str = "gradient"
    importance_batches: int = 4

    def __post_init__(self) -> None:
        super().__post_init__()
        loss_terms(self.loss)
        for w in self.widths:
            width_counts(4, 4, float(w))
        for d in self.depths:
            depth_layers(4, float(d))
        bad = [s for s in self.stages if s not in ("width", "depth")] or ([] if self.stages else ["(none)"])
        if bad:
            raise CompactLMError(f"--stages: expected width and/or depth, got {', '.join(bad)}")


def stage_trainer(model: nn.Module, teacher: nn.Module, train: dict, config: DynaBERTConfig, stage: str,
                  checkpoint_dir=None, progress: bool = True) -> Trainer:
    """The trainer of one stage: each step sums the losses of every sub-network of the stage."""
    terms = loss_terms(config.loss)
    grid = [(1.0, w) for w in sorted(config.widths, reverse=True)] if stage == "width" else \
        [(d, w) for d in sorted(config.depths, reverse=True) for w in sorted(config.widths, reverse=True)]
    teacher.eval().requires_grad_(False)
    from compactlm.distill import ckd

    table = {**ckd.TERMS, "soft_ce": _soft_ce}

    def compute_loss(m: nn.Module, batch: dict):
        inner = getattr(m, "module", m)
        with torch.no_grad():
            t_out = forward(teacher, batch, True)
        total, parts = 0.0, {}
        for depth, width in grid:
            with subnetwork(inner, width, depth) as keep:
                s_out = forward(m, batch, True)
            ctx = TermContext(batch.get("labels"), batch["attention_mask"], config.temperature, None, _pair_layers(keep))
            loss = 0.0
            for name, weight in terms:
                loss = loss + weight * table[name](s_out, t_out, ctx)
            parts[f"d{depth:g}w{width:g}"] = loss.detach()
            total = total + loss
        return total, parts

    train_config = config.train_config(len(train["labels"]))
    job = {**config.job_settings(), "stage": stage}
    return Trainer(model, compute_loss, train, train_config, checkpoint_dir=checkpoint_dir,
                   accelerator=accelerator_for(model), progress=progress, extra_modules=(teacher,),
                   collate=trim_padding, job=job, desc=f"dynabert {stage}")


def evaluate_grid(model: nn.Module, tokenizer, task: str, widths=WIDTHS, depths=DEPTHS, eval_limit=None,
                  max_length=None, splits=("validation", "test")) -> list[dict]:
    """Accuracy and parameters of every extracted (width, depth) sub-network."""
    from compactlm.encoder.qat import evaluate_classifier
    from compactlm.models.prune import param_count

    rows = []
    for d in sorted(depths, reverse=True):
        for w in sorted(widths, reverse=True):
            sub = extract(model, w, d)
            rows.append({"width": w, "depth": d, "params": param_count(sub),
                         **evaluate_classifier(sub, tokenizer, task, eval_limit, max_length, splits)})
    return rows


def run_dynabert(teacher: nn.Module, tokenizer, config: DynaBERTConfig, progress: bool = True,
                 checkpoint_dir: str | os.PathLike | None = None, eval_splits=("validation", "test")) -> tuple[nn.Module, dict]:
    """Rewire, then train the stages; returns ``(full DynaBERT model, report)`` with every sub-network's accuracy."""
    check_classifier(teacher, config.task)
    torch.manual_seed(config.seed)
    train = encode_split(tokenizer, config.task, "train", config.train_limit, config.seed, config.max_length)
    model = rewire_from_teacher(teacher, train, config.importance, config.importance_batches, config.batch_size)
    report = {"task": config.task, "loss": config.loss, "terms": [list(t) for t in loss_terms(config.loss)],
              "widths": list(config.widths), "depths": list(config.depths), "stages": {}}
    for stage in config.stages:
        ckpt = None if checkpoint_dir is None else os.path.join(checkpoint_dir, stage)
        trainer = stage_trainer(model, teacher, train, config, stage, ckpt, progress)
        trainer.train()
        model = trainer.unwrapped
        h = trainer.history
        report["stages"][stage] = {"steps": len(h), "loss_start": round(sum(x["loss"] for x in h[:10]) / len(h[:10]), 5),
                                   "loss_end": round(sum(x["loss"] for x in h[-10:]) / len(h[-10:]), 5),
                                   "train_seconds": round(trainer.seconds, 1)}
    model.eval()
    depths = config.depths if "depth" in config.stages else (1.0,)
    report["subnetworks"] = evaluate_grid(model, tokenizer, config.task, config.widths, depths, config.eval_limit,
                                          config.max_length, eval_splits)
    return model, report
