"""Training, evaluation and compression of the span-based triple extractor (:mod:`.extractor`).

* :func:`train_extractor` — fine-tune on the one trainer (:class:`compactlm.train.Trainer`: AdamW,
  linear warm-up and decay, atomic checkpoints, exact resume from ``checkpoint_dir``). The
  validation split is scored every ``eval_every`` steps (micro F1 over all its triples, at each
  relation threshold of :data:`THRESHOLDS` unless one is fixed); the weights and threshold of the
  best validation score are the result (selection never looks at a test set). The
  best weights and their score are kept in the checkpoint directory too, so a resumed run selects
  the same step as an uninterrupted one.
* :func:`evaluate_extractor` — predictions on a test set scored by :func:`.metrics.score` against
  the training triples: seen / unseen / all micro P/R/F1 and the unseen share.
* :func:`quantize_extractor` — weight-only quantization of every encoder block linear with a
  registered method (``compactlm.quantize``: RTN, or FlexRound / LRQ reconstructing each block's
  output on :func:`calibration_ids` windows of validation sentences), e.g. ``w4a16`` per output
  channel or ``w4a16-g32``; the heads stay FP32.
* :func:`prune_extractor` — keep ``layers`` evenly spaced encoder blocks
  (:func:`compactlm.models.prune.prune_depth`, :func:`~compactlm.models.prune.evenly_spaced`), heads
  unchanged: the start of a depth-pruned student that :func:`train_extractor` fine-tunes.

A run directory written by :func:`save_run` holds the model files (:meth:`.TripleExtractor.save`),
``config.json`` (the resolved settings), ``report.json`` and ``data/``: the validation, test and
augmented test sentences and ``train_triples.json`` (the normalised training triples that decide
*seen*), so ``compactlm re eval`` needs nothing but the run directory.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from compactlm.errors import CompactLMError
from compactlm.io import read_json, write_json, write_text
from compactlm.tasks.triples.example import Triple, TripleExample, dumps_jsonl, triple_set
from compactlm.tasks.triples.extractor import ExtractorConfig, TripleExtractor, encode_examples, extraction_loss, trim_batch
from compactlm.tasks.triples.metrics import report as _report
from compactlm.tasks.triples.metrics import score
from compactlm.train import steps_for

log = logging.getLogger(__name__)

DATA = "data"
TRAIN_TRIPLES = "train_triples.json"
BEST = "best.safetensors"
BEST_META = "best.json"
THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


@dataclass(frozen=True)
class ExtractorTrainConfig:
    """Options of extractor training.

    Attributes:
        epochs: Passes over the training sentences (augmentation included); fractions allowed.
        steps: Optimizer steps instead of ``epochs`` (``None``: from ``epochs``).
        batch_size: Sentences per step.
        lr: Peak AdamW learning rate (encoder and heads).
        warmup: Fraction of steps of linear warm-up.
        weight_decay: AdamW weight decay (matrices only).
        max_grad_norm: Gradient clipping (``0``: none).
        max_length: Word pieces per sentence.
        neg_ratio: Negative span pairs per positive pair of a training sentence.
        max_pairs: Span pairs per training sentence.
        relation_weight: Weight of the relation loss beside the tag loss.
        threshold: Relation probability above which a triple is predicted; ``None``: chosen with the
            step, the value of :data:`THRESHOLDS` with the best validation F1.
        eval_every: Steps between validation scores (``None``: about once per epoch, at least 2 per run).
        seed: Seed of head initialisation, negative pairs, data order and dropout.
        checkpoint_every: Steps between trainer checkpoints besides the validation points (``0``: none).
    """

    epochs: float = 3.0
    steps: int | None = None
    batch_size: int = 16
    lr: float = 2e-4
    warmup: float = 0.1
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    max_length: int = 128
    neg_ratio: float = 3.0
    max_pairs: int = 48
    relation_weight: float = 1.0
    threshold: float | None = None
    eval_every: int | None = None
    seed: int = 0
    checkpoint_every: int = 0

    def __post_init__(self) -> None:
        if self.epochs <= 0:
            raise CompactLMError(f"--epochs: expected a positive number, got {self.epochs}")
        if self.steps is not None and self.steps < 1:
            raise CompactLMError(f"--steps: expected a positive number of steps, got {self.steps}")
        if self.batch_size < 1:
            raise CompactLMError(f"--batch-size: expected a positive number, got {self.batch_size}")
        if self.eval_every is not None and self.eval_every < 1:
            raise CompactLMError(f"--eval-every: expected a positive number of steps, got {self.eval_every}")

    def total_steps(self, n_train: int) -> int:
        return steps_for(self.steps, self.epochs, n_train, self.batch_size)

    def eval_points(self, n_train: int) -> list[int]:
        """Steps after which validation is scored (the last step always)."""
        total = self.total_steps(n_train)
        every = self.eval_every or max(1, min(math.ceil(n_train / self.batch_size), math.ceil(total / 2)))
        return sorted({*range(every, total, every), total})

    def job(self) -> dict:
        """Settings a checkpoint must share to be resumed (beyond the trainer's)."""
        return {k: getattr(self, k) for k in ("max_length", "neg_ratio", "max_pairs", "relation_weight", "threshold",
                                             "eval_every", "epochs")}


def build_extractor(model: str, relations: Sequence[str], max_length: int = 128, threshold: float | None = None,
                    device: str | torch.device = "cpu", seed: int = 0) -> TripleExtractor:
    """A new extractor on the encoder ``model`` (name, folder, hub id; heads drawn with ``seed``)."""
    from compactlm.models import load_model
    from compactlm.models.specs import get_spec

    encoder, tokenizer = load_model(model, head="base")
    if get_spec(encoder).kind != "encoder":
        raise CompactLMError(f"--model: the span extractor needs an encoder (BERT, XLM-R, ...), got a {get_spec(encoder).kind}")
    if tokenizer is None:
        raise CompactLMError(f"--model: {model} has no tokenizer (tiny random models ship none: save one beside it)")
    torch.manual_seed(seed)
    config = ExtractorConfig(relations=tuple(relations), max_length=max_length, threshold=threshold or 0.5)
    return TripleExtractor(encoder.float(), tokenizer, config).to(device)


def prune_extractor(extractor: TripleExtractor, layers: int) -> TripleExtractor:
    """Keep ``layers`` evenly spaced encoder blocks (the last one always), in place."""
    from compactlm.models.prune import evenly_spaced, prune_depth
    from compactlm.models.specs import get_blocks

    n = len(get_blocks(extractor.encoder))
    if not 1 <= layers <= n:
        raise CompactLMError(f"--keep-layers: expected 1..{n} layers (the encoder has {n}), got {layers}")
    prune_depth(extractor.encoder, evenly_spaced(n, layers))
    return extractor


def calibration_ids(extractor: TripleExtractor, sentences: Sequence[str], samples: int = 64,
                    seq_len: int = 64) -> torch.Tensor:
    """``(N, seq_len)`` calibration token ids for the encoder: ``sentences`` tokenized as the
    extractor reads them (with their special tokens), concatenated and cut into windows, at most
    ``samples`` of them (the engine takes unpadded rows of one length)."""
    if samples < 1 or seq_len < 2:
        raise CompactLMError(f"--calib-samples / --calib-seq-len: expected >= 1 / >= 2, got {samples} / {seq_len}")
    ids: list[int] = []
    for text in sentences:
        ids += extractor.tokenizer(text, truncation=True, max_length=extractor.config.max_length)["input_ids"]
        if len(ids) >= samples * seq_len:
            break
    n = min(samples, len(ids) // seq_len)
    if n == 0:
        raise CompactLMError(f"--calib-seq-len: the {len(sentences)} calibration sentences hold {len(ids)} tokens, "
                             f"fewer than one window of {seq_len}")
    return torch.tensor(ids[: n * seq_len]).view(n, seq_len)


def quantize_extractor(extractor: TripleExtractor, scheme: str = "w4a16", method: str = "rtn",
                       calib: torch.Tensor | None = None, **options) -> dict:
    """Weight-only quantization of the encoder's block linears in place (heads FP32) with any
    registered method (``rtn``; ``flexround`` / ``lrq`` reconstruct block outputs on ``calib``,
    ``options`` their settings, e.g. ``iters``); returns the method's report."""
    from compactlm.api import quantize
    from compactlm.quant.scheme import QuantScheme

    qs = QuantScheme.parse(scheme)
    if qs.quantizes_activations:
        raise CompactLMError(f"--scheme: {scheme} quantizes activations; the extractor takes weight-only schemes "
                             "(w4a16, w4a16-g32, w8a16, ...)")
    report = quantize(extractor.encoder, method, qs, calib=calib, **options)
    blocks = report.pop("blocks", [])
    return {**report, "scheme": qs.name,
            "block_losses": [{k: b.get(k) for k in ("train_loss_before", "train_loss_after")} for b in blocks]}


def _state_of(model: TripleExtractor) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def validation_f1(extractor: TripleExtractor, validation: Sequence[TripleExample], train_keys: set[Triple],
                  threshold: float | None = None) -> tuple[float, float]:
    """``(micro F1 over all triples, threshold)`` on ``validation``: at ``threshold``, or at the best
    of :data:`THRESHOLDS` (one forward pass; ties go to the lower threshold)."""
    grid = (threshold,) if threshold is not None else THRESHOLDS
    scored = extractor.predict_scored([e.sentence for e in validation], floor=min(grid))
    best = (-1.0, grid[0])
    for th in grid:
        preds = [[t for t, p in found if p > th] for found in scored]
        f1 = score(validation, preds, train_keys)["all"].f1
        if f1 > best[0]:
            best = (f1, th)
    return best


def evaluate_extractor(extractor: TripleExtractor, test: Sequence[TripleExample],
                       train: Sequence[TripleExample] | set[Triple], batch_size: int = 32) -> dict:
    """Seen / unseen / all micro P/R/F1 and the unseen share of ``test`` (``train`` decides *seen*)."""
    if not test:
        raise CompactLMError("--test: the test set has no sentences")
    start = time.perf_counter()
    preds = extractor.predict([e.sentence for e in test], batch_size=batch_size)
    keys = train if isinstance(train, set) else triple_set(train)
    out = _report(score(test, preds, keys), test, keys)
    out.update(sentences=len(test), seconds=round(time.perf_counter() - start, 1))
    return out


def train_extractor(extractor: TripleExtractor, train: Sequence[TripleExample], validation: Sequence[TripleExample],
                    config: ExtractorTrainConfig, train_keys: set[Triple] | None = None,
                    checkpoint_dir: str | os.PathLike | None = None, progress: bool = True) -> dict:
    """Fine-tune ``extractor`` in place; returns the report (module doc: selection on validation).

    Args:
        extractor: From :func:`build_extractor` (or a loaded / pruned one).
        train: Training sentences (augmentation included).
        validation: Validation sentences (may be empty: then the last step is kept).
        train_keys: The triples that make a validation triple *seen* (default: those of ``train``).
        checkpoint_dir: Where checkpoints go; a checkpoint there with the same settings is resumed.
    """
    from safetensors.torch import load_file, save_file

    from compactlm.encoder.finetune import accelerator_for
    from compactlm.train import TrainConfig, Trainer

    if not train:
        raise CompactLMError("--data: the training split has no sentences")
    torch.manual_seed(config.seed)
    data = encode_examples(train, extractor.tokenizer, extractor.relations, config.max_length, config.neg_ratio,
                           config.max_pairs, config.seed)
    n = len(train)
    steps = config.total_steps(n)
    tc = TrainConfig(steps=steps, batch_size=min(config.batch_size, n), lr=config.lr,
                     weight_decay=config.weight_decay, warmup=config.warmup, schedule="linear",
                     max_grad_norm=config.max_grad_norm, seed=config.seed, checkpoint_every=config.checkpoint_every)

    def compute_loss(model, batch):
        out = model(batch["input_ids"], batch["attention_mask"], batch["pairs"])
        return extraction_loss(out["tag_logits"], batch["tags"], out["rel_logits"], batch["pair_labels"],
                               batch["pair_mask"], config.relation_weight)

    keys = train_keys if train_keys is not None else triple_set(train)
    ckpt = Path(checkpoint_dir) if checkpoint_dir is not None else None
    job = {**config.job(), "relations": list(extractor.relations), "layers": int(extractor.encoder.config.num_hidden_layers),
           "train_sentences": n}
    trainer = Trainer(extractor, compute_loss, data, tc, checkpoint_dir=ckpt, accelerator=accelerator_for(extractor),
                      progress=progress, collate=trim_batch, job=job, desc="re train")
    resumed_at = trainer.step
    best = {"step": 0, "f1": -1.0}
    best_state = None
    if ckpt is not None and (ckpt / BEST_META).is_file() and (ckpt / BEST).is_file() and resumed_at:
        best = read_json(ckpt / BEST_META)
        best_state = load_file(str(ckpt / BEST))
    curve = list(best.get("curve", []))
    start = time.perf_counter()
    for point in config.eval_points(n):
        if point < trainer.step or any(c["step"] == point for c in curve):
            continue  # scored before the interruption
        if trainer.step < point:
            trainer.train(stop_after=point)
        model = trainer.unwrapped
        threshold = config.threshold or model.config.threshold
        if validation:
            f1, threshold = validation_f1(model, validation, keys, config.threshold)
        else:
            f1 = float(point)  # no validation: the last step wins
        curve.append({"step": point, "val_f1": round(f1, 4) if validation else None, "threshold": threshold,
                      "loss": round(sum(h["loss"] for h in trainer.history[-20:]) / max(1, len(trainer.history[-20:])), 4)})
        log.info("re train: step %d/%d, validation F1 %s at threshold %.1f", point, steps,
                 f"{f1:.4f}" if validation else "n/a", threshold)
        if f1 > best["f1"]:
            best = {"step": point, "f1": f1, "threshold": threshold}
            best_state = _state_of(model)
        if ckpt is not None:
            ckpt.mkdir(parents=True, exist_ok=True)
            if best["step"] == point:
                tmp = ckpt / f".{BEST}.tmp"
                save_file({k: v.contiguous() for k, v in best_state.items()}, str(tmp))
                os.replace(tmp, ckpt / BEST)
            write_json(ckpt / BEST_META, {**best, "curve": curve})
    model = trainer.unwrapped
    if best_state is not None:
        model.load_state_dict(best_state)
    model.config = dataclasses.replace(model.config, threshold=best.get("threshold", model.config.threshold))
    model.eval()
    losses = [h["loss"] for h in trainer.history]
    return {
        "train_sentences": n, "steps": steps, "batch_size": tc.batch_size, "resumed_at_step": resumed_at,
        "selected_step": best["step"], "validation_f1": round(best["f1"], 4) if validation else None,
        "threshold": model.config.threshold,
        "validation_curve": curve, "loss_first": round(losses[0], 4) if losses else None,
        "loss_last": round(sum(losses[-20:]) / max(1, len(losses[-20:])), 4) if losses else None,
        "train_seconds": round(trainer.seconds, 1), "seconds": round(time.perf_counter() - start, 1),
    }


# ---- run directories ------------------------------------------------------------------------------------
def save_run(extractor: TripleExtractor, out: str | Path, config: dict, report: dict,
             train_keys: set[Triple], eval_sets: dict[str, Sequence[TripleExample]]) -> Path:
    """Model files, ``config.json``, ``report.json`` and ``data/`` into ``out`` (caller owns atomicity)."""
    out = Path(out)
    extractor.save(out)
    write_json(out / "config.json", config)
    write_json(out / "report.json", report)
    write_json(out / DATA / TRAIN_TRIPLES, sorted(list(k) for k in train_keys))
    for name, examples in eval_sets.items():
        if examples:
            write_text(out / DATA / f"{name}.jsonl", dumps_jsonl(examples))
    return out


def copy_run_data(src: str | Path, dst: str | Path) -> None:
    """Copy the ``data/`` folder of a run (the evaluation sets and training triples) into ``dst``."""
    import shutil

    shutil.copytree(Path(src) / DATA, Path(dst) / DATA, dirs_exist_ok=True)


def run_train_keys(run_dir: str | Path) -> set[Triple]:
    """The training triples of a run directory (``data/train_triples.json``)."""
    path = Path(run_dir) / DATA / TRAIN_TRIPLES
    if not path.is_file():
        raise CompactLMError(f"--run: {run_dir} lacks {DATA}/{TRAIN_TRIPLES} (the training triples that decide seen)")
    try:
        return {tuple(k) for k in json.loads(path.read_text())}
    except (ValueError, TypeError) as e:
        raise CompactLMError(f"--run: {path} is not a list of triples ({e})") from None


def run_test_set(run_dir: str | Path, test: str = "test") -> tuple[str, list[TripleExample]]:
    """``(name, examples)`` of ``test``: a set stored in the run (``test``, ``test_augmented``,
    ``validation``) or a ``.json`` / ``.jsonl`` file."""
    from compactlm.tasks.triples.formats import read_file

    stored = Path(run_dir) / DATA / f"{test}.jsonl"
    if "/" not in test and not test.endswith((".json", ".jsonl")):
        if not stored.is_file():
            have = sorted(p.stem for p in (Path(run_dir) / DATA).glob("*.jsonl"))
            raise CompactLMError(f"--test: {run_dir} holds no {test!r} set; expected one of {', '.join(have) or 'none'} "
                                 "or a .json/.jsonl file")
        return test, read_file(stored)
    path = Path(test).expanduser()
    if not path.is_file():
        raise CompactLMError(f"--test: {test} not found; expected test, test_augmented, validation or a .json/.jsonl file")
    return str(path), read_file(path)


__all__ = ["THRESHOLDS", "ExtractorTrainConfig", "build_extractor", "copy_run_data", "evaluate_extractor", "prune_extractor",
           "quantize_extractor", "run_test_set", "run_train_keys", "save_run", "train_extractor", "validation_f1"]
