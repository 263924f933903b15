"""``compactlm distill --task ...``: distil a fine-tuned encoder into a smaller student (issue 16).

::

    compactlm distill --task sarcasm --teacher runs/encoder/teacher-sarcasm --student-layers 3 --loss ckd \\
        --epochs 1 --out runs/ckd/l3-ckd
    compactlm distill --task sarcasm --teacher runs/teacher --student-width 0.5 --loss kd-hidden --out runs/w50
    compactlm distill --task sarcasm --teacher runs/teacher --student runs/small-encoder --loss ckd --out runs/s

The student is ``--student`` (any encoder with the task's classification head) or a pruned copy of
the teacher: ``--student-layers N`` evenly spaced blocks and/or ``--student-width W`` of every
layer's heads and FFN neurons (most important by weight magnitude; :mod:`compactlm.models.prune`).
``--loss`` is a variant of :data:`compactlm.distill.ckd.VARIANTS` (``none`` = fine-tuning without
KD, ``kd``, ``kd-hidden``, ``ckd``, ``wr``, ``ltr``) or ``--terms kd:1,wr_dist:10,...`` for explicit
weights. Settings may come from ``--recipe file.yaml`` (keys as the flags; typed flags win).

Writes ``<out>/model`` (the student: a HF folder, reloadable with ``load_model(out)``; head-pruned
students with their ``pruned_encoder.py``), ``config.json`` and ``report.json`` atomically;
checkpoints go to ``<out>.ckpt/`` and a rerun with the same settings resumes there.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil

from compactlm.commands import args as A

ENCODER_ONLY = ("student_width", "temperature", "epochs", "warmup", "train_limit", "eval_limit", "terms")
"""Dests of the flags :func:`add_arguments` adds (refused by ``compactlm distill`` without ``--task``)."""

DEFAULTS = {"teacher": None, "student": None, "student_layers": None, "student_width": None, "loss": "ckd",
            "terms": None, "temperature": 1.0, "epochs": 1.0, "steps": None, "lr": 5e-5, "batch_size": 32,
            "warmup": 0.1, "seq_len": None, "train_limit": None, "eval_limit": None, "seed": 0}
"""Encoder defaults of every setting (the parser's defaults belong to the decoder path)."""
DECODER_TYPED = ("data", "samples")


def add_arguments(group) -> None:
    """Add the encoder-only flags (all default ``None``) to an argument group of ``compactlm distill``."""
    group.add_argument("--student-width", type=float, default=None, metavar="W",
                       help="encoder: keep this share of every layer's heads and FFN neurons in the student (default 1)")
    group.add_argument("--temperature", type=float, default=None, metavar="T", help="encoder: logit KD temperature (default 1)")
    group.add_argument("--terms", default=None,
                       help="encoder: explicit loss terms as term:weight,... (ce kd hidden wr_dist wr_angle ltr_dist "
                       "ltr_angle), instead of the --loss variant's")
    group.add_argument("--epochs", type=float, default=None, help="encoder: passes over the train data (default 1; --steps wins)")
    group.add_argument("--warmup", type=float, default=None, help="encoder: warm-up fraction of the steps (default 0.1)")
    group.add_argument("--train-limit", type=int, default=None, help="encoder: seeded subset of the train split (default: all)")
    group.add_argument("--eval-limit", type=int, default=None, help="encoder: seeded subset of validation/test (default: all)")


def parse_terms(text: str) -> tuple[tuple[str, float], ...]:
    """``"kd:1,wr_dist:10"`` → ``(("kd", 1.0), ("wr_dist", 10.0))`` (one-line error otherwise)."""
    from compactlm.errors import CompactLMError

    out = []
    for item in (t.strip() for t in str(text).split(",") if t.strip()):
        name, sep, weight = item.partition(":")
        try:
            out.append((name.strip(), float(weight) if sep else 1.0))
        except ValueError:
            raise CompactLMError(f"--terms: expected term:weight, got {item!r}") from None
    if not out:
        raise CompactLMError("--terms: give at least one term:weight")
    return tuple(out)


def settings(args: argparse.Namespace) -> dict:
    """Every encoder setting by precedence: typed flag > ``--recipe`` > :data:`DEFAULTS`."""
    from compactlm.recipes import load_recipe

    recipe = load_recipe(args.recipe, known=set(DEFAULTS) | {"task", "device"}) if getattr(args, "recipe", None) else {}
    typed = A.given(args)
    out = {}
    for key, default in {**DEFAULTS, "task": None, "device": "auto"}.items():
        if key in typed:
            out[key] = getattr(args, key)
        elif key in recipe:
            out[key] = recipe[key]
        elif key in ENCODER_ONLY or key in ("task", "teacher", "student", "student_layers", "loss", "lr"):
            value = getattr(args, key, None)  # default None on the parser: not set
            out[key] = default if value is None else value
        else:
            out[key] = default
    return out


def build_config(s: dict):
    from compactlm.distill.ckd import DistillEncoderConfig

    terms = s["terms"]
    if isinstance(terms, str):
        terms = parse_terms(terms)
    return DistillEncoderConfig(
        task=s["task"], epochs=float(s["epochs"]), steps=s["steps"], lr=float(s["lr"]), batch_size=int(s["batch_size"]),
        warmup=float(s["warmup"]), max_length=s["seq_len"], train_limit=s["train_limit"], eval_limit=s["eval_limit"],
        seed=int(s["seed"]), loss=s["loss"], terms=terms, temperature=float(s["temperature"]),
        student_layers=s["student_layers"], student_width=s["student_width"],
    )


def run(args: argparse.Namespace) -> int:
    """The encoder run of ``compactlm distill --task``: student, training, evaluation, run directory."""
    import torch

    from compactlm.data.classification import get_task
    from compactlm.devices import choose_device
    from compactlm.distill.ckd import run_distill_encoder
    from compactlm.errors import CompactLMError
    from compactlm.io import atomic_dir, write_json
    from compactlm.models import load_model
    from compactlm.models.prune import save_pruned
    from compactlm.train import resume_dir

    A.reject_unused(args, DECODER_TYPED, "encoder distillation (--task)", takes=("--train-limit", "--seq-len"))
    s = settings(args)
    if not s["teacher"]:
        raise CompactLMError("--teacher: give the fine-tuned teacher (a `compactlm finetune` run directory)")
    if not getattr(args, "out", None):
        raise CompactLMError("--out: give the run directory to write")
    if s["student"] and (s["student_layers"] or s["student_width"]):
        raise CompactLMError("--student: give either a student model or --student-layers/--student-width, not both")
    config = build_config(s)
    if os.environ.get("COMPACTLM_THREADS"):
        torch.set_num_threads(int(os.environ["COMPACTLM_THREADS"]))
    device = choose_device(s["device"])
    task = get_task(config.task)
    overwrite = bool(getattr(args, "overwrite", False))
    ckpt = resume_dir(args.out, overwrite)
    with atomic_dir(args.out, overwrite=overwrite) as tmp:
        teacher, tokenizer = load_model(str(s["teacher"]), head="sequence-classification", num_labels=task.num_labels,
                                        device=device)
        student = None
        if s["student"]:
            student, _ = load_model(str(s["student"]), head="sequence-classification", num_labels=task.num_labels,
                                    device=device)
        student, report = run_distill_encoder(teacher, tokenizer, config, student=student,
                                              progress=not getattr(args, "no_progress", False), checkpoint_dir=ckpt)
        save_pruned(student, tokenizer, tmp / "model")
        write_json(tmp / "config.json", {"command": "distill", "teacher": str(s["teacher"]),
                                         "student": s["student"], **dataclasses.asdict(config)})
        write_json(tmp / "report.json", {"teacher": str(s["teacher"]), **report})
    shutil.rmtree(ckpt, ignore_errors=True)
    print(f"{config.task} {config.loss}: student {report['student_params'] / 1e6:.2f} M params, validation acc "
          f"{report['val_acc']:.4f}, test acc {report['test_acc']:.4f} -> {args.out}")
    return 0
