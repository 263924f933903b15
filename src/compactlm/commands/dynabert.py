"""``compactlm dynabert train|extract``: width/depth-adaptive encoders (DynaBERT, issue 16).

::

    compactlm dynabert train --model runs/encoder/teacher-sarcasm --task sarcasm --loss dynabert \\
        --epochs 1 --out runs/dynabert/sarcasm
    compactlm dynabert train ... --loss ckd            # CKD's relation terms in place of the hidden MSE
    compactlm dynabert extract --model runs/dynabert/sarcasm --width 0.5 --depth 0.5 --out runs/dynabert/w50-d50

``train`` rewires a copy of the fine-tuned teacher (``--model``) by importance, trains it
width-adaptively then depth-adaptively (``--stages``), and writes ``<out>/model`` (the full
network, a plain HF folder), ``config.json`` and ``report.json`` with the accuracy and parameter
count of every (width, depth) sub-network; checkpoints of each stage go to ``<out>.ckpt/<stage>``.
``extract`` writes one sub-network as a standalone, smaller model (``<out>/model``,
``report.json``); it loads with ``load_model`` and plain transformers
(:mod:`compactlm.models.prune`).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil

from compactlm.commands import args as A


def _floats(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(t) for t in str(text).split(",") if t.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one number")
    return values


def add_parser(sub: argparse._SubParsersAction) -> None:
    from compactlm.data.classification import TASKS
    from compactlm.distill.dynabert import DEPTHS, LOSSES, WIDTHS

    p = sub.add_parser("dynabert", help="DynaBERT: train a width/depth-adaptive encoder, extract its sub-networks",
                       description="DynaBERT (Hou et al. 2020) with its own loss or CKD's relation losses.")
    dsub = p.add_subparsers(dest="dynabert_command", metavar="ACTION", required=True)

    t = dsub.add_parser("train", help="rewire a fine-tuned teacher and train it over widths, then depths",
                        description="Writes <out>/model (the full adaptive network), config.json and report.json "
                        "(accuracy of every width x depth sub-network); resumes from <out>.ckpt/ when rerun.")
    A.add_recipe(t)
    A.add_model(t, default=None, help="fine-tuned teacher: a `compactlm finetune` run directory")
    t.add_argument("--task", default="sarcasm", choices=sorted(TASKS), help="classification task (default: %(default)s)")
    t.add_argument("--loss", default="dynabert", choices=LOSSES, help="dynabert: soft-CE + 0.1 hidden MSE; ckd: logit KD + "
                   "WR/LTR relations; dynabert+ckd: both (default: %(default)s)")
    t.add_argument("--widths", type=_floats, default=WIDTHS, help="width multipliers (default: 1,0.75,0.5,0.25)")
    t.add_argument("--depths", type=_floats, default=DEPTHS, help="depth multipliers (default: 1,0.75,0.5)")
    t.add_argument("--stages", default="width,depth", help="width, depth or width,depth (default: %(default)s)")
    t.add_argument("--importance", default="gradient", choices=("gradient", "magnitude"),
                   help="unit importance for the rewiring (default: %(default)s)")
    t.add_argument("--epochs", type=float, default=1.0, help="passes over the train data per stage (default: %(default)s)")
    A.add_steps(t, None, "optimizer steps per stage, instead of --epochs")
    t.add_argument("--lr", type=float, default=2e-5, help="peak learning rate (default: %(default)s)")
    A.add_batch_size(t, 32, "examples per step")
    t.add_argument("--warmup", type=float, default=0.1, help="warm-up fraction of the steps (default: %(default)s)")
    t.add_argument("--temperature", type=float, default=1.0, help="logit KD temperature (default: %(default)s)")
    t.add_argument("--seq-len", type=int, default=None, metavar="N", help="tokens per example (default: the task's)")
    t.add_argument("--train-limit", type=int, default=None, help="seeded subset of the train split (default: all)")
    t.add_argument("--eval-limit", type=int, default=None, help="seeded subset of validation/test (default: all)")
    A.add_seed(t, 0, "seed of data order, subset and dropout")
    A.add_device(t)
    A.add_out(t)
    A.add_no_progress(t)
    t.set_defaults(func=run_train)

    e = dsub.add_parser("extract", help="write one (width, depth) sub-network as a standalone smaller model")
    A.add_model(e, default=None, required=True, help="a `compactlm dynabert train` run directory")
    e.add_argument("--width", type=float, default=1.0, help="width multiplier (default: %(default)s)")
    e.add_argument("--depth", type=float, default=1.0, help="depth multiplier (default: %(default)s)")
    e.add_argument("--task", default=None, choices=sorted(TASKS), help="also report the sub-network's accuracy on this task")
    e.add_argument("--eval-limit", type=int, default=None, help="seeded subset of validation/test (default: all)")
    A.add_device(e)
    A.add_out(e)
    e.set_defaults(func=run_extract)


def _train_config(args: argparse.Namespace):
    from compactlm.distill.dynabert import DynaBERTConfig
    from compactlm.recipes import load_recipe

    keys = ("task", "loss", "widths", "depths", "stages", "importance", "epochs", "steps", "lr", "batch_size", "warmup",
            "temperature", "seq_len", "train_limit", "eval_limit", "seed", "model")
    recipe = load_recipe(args.recipe, known=set(keys)) if args.recipe else {}
    s = {k: A.value(args, k, recipe) for k in keys}
    for k in ("widths", "depths"):
        if isinstance(s[k], str):
            s[k] = _floats(s[k])
    stages = s["stages"] if isinstance(s["stages"], (list, tuple)) else tuple(x.strip() for x in str(s["stages"]).split(",") if x.strip())
    config = DynaBERTConfig(
        task=s["task"], loss=s["loss"], widths=tuple(float(w) for w in s["widths"]), depths=tuple(float(d) for d in s["depths"]),
        stages=tuple(stages), importance=s["importance"], epochs=float(s["epochs"]), steps=s["steps"], lr=float(s["lr"]),
        batch_size=int(s["batch_size"]), warmup=float(s["warmup"]), temperature=float(s["temperature"]),
        max_length=s["seq_len"], train_limit=s["train_limit"], eval_limit=s["eval_limit"], seed=int(s["seed"]),
    )
    return config, s["model"]


def run_train(args: argparse.Namespace) -> int:
    import torch

    from compactlm.data.classification import get_task
    from compactlm.distill.dynabert import run_dynabert
    from compactlm.errors import CompactLMError
    from compactlm.io import atomic_dir, write_json
    from compactlm.models import load_model
    from compactlm.train import resume_dir

    config, model_path = _train_config(args)
    if not model_path:
        raise CompactLMError("--model: give the fine-tuned teacher (a `compactlm finetune` run directory)")
    if os.environ.get("COMPACTLM_THREADS"):
        torch.set_num_threads(int(os.environ["COMPACTLM_THREADS"]))
    task = get_task(config.task)
    ckpt = resume_dir(args.out, args.overwrite)
    with atomic_dir(args.out, overwrite=args.overwrite) as tmp:
        teacher, tokenizer = load_model(str(model_path), head="sequence-classification", num_labels=task.num_labels,
                                        device=A.device_of(args))
        model, report = run_dynabert(teacher, tokenizer, config, progress=not args.no_progress, checkpoint_dir=ckpt)
        model.save_pretrained(tmp / "model")
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp / "model")
        write_json(tmp / "config.json", {"command": "dynabert train", "model": str(model_path), **dataclasses.asdict(config)})
        write_json(tmp / "report.json", {"model": str(model_path), **report})
    shutil.rmtree(ckpt, ignore_errors=True)
    best = {(r["width"], r["depth"]): r["val_acc"] for r in report["subnetworks"]}
    print(f"{config.task} dynabert {config.loss}: validation acc " +
          ", ".join(f"w{w:g}/d{d:g} {a:.4f}" for (w, d), a in best.items()) + f" -> {args.out}")
    return 0


def run_extract(args: argparse.Namespace) -> int:
    from compactlm.distill.dynabert import extract
    from compactlm.encoder.qat import evaluate_classifier
    from compactlm.io import atomic_dir, write_json
    from compactlm.models import load_model
    from compactlm.models.prune import param_count, save_pruned

    with atomic_dir(args.out, overwrite=args.overwrite) as tmp:
        model, tokenizer = load_model(args.model, head="sequence-classification", device=A.device_of(args))
        sub = extract(model, args.width, args.depth)
        sub = save_pruned(sub, tokenizer, tmp / "model")
        report = {"model": args.model, "width": args.width, "depth": args.depth, "params": param_count(sub),
                  "full_params": param_count(model), "layers": sub.config.num_hidden_layers,
                  "heads": sub.config.num_attention_heads, "intermediate_size": sub.config.intermediate_size}
        if args.task:
            report.update(evaluate_classifier(sub, tokenizer, args.task, args.eval_limit))
        write_json(tmp / "report.json", report)
    print(f"width {args.width:g} depth {args.depth:g}: {report['params'] / 1e6:.2f} M of "
          f"{report['full_params'] / 1e6:.2f} M params -> {args.out}")
    return 0
