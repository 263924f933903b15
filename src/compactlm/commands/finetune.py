"""``compactlm finetune``: fine-tune an encoder on a classification task (the FP teacher of encoder QAT).

Writes ``<out>/model`` (HF checkpoint + tokenizer, reloadable with ``load_model(out)``),
``<out>/config.json`` (resolved options) and ``<out>/report.json`` (validation / test accuracy),
atomically. While training, checkpoints go to ``<out>.ckpt/``: rerunning the same command after an
interruption resumes there (``--overwrite`` starts over); the directory is removed once ``<out>``
is written.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil

from compactlm.commands import args as spine


def add_parser(sub: argparse._SubParsersAction) -> None:
    from compactlm.data.classification import TASKS

    p = sub.add_parser(
        "finetune",
        help="fine-tune an encoder for sequence classification (teacher for encoder QAT)",
        description="Fine-tune a BERT-like encoder on a classification task with fixed train/validation/test "
        "splits; writes <out>/model, config.json and report.json; resumes from <out>.ckpt/ when rerun.",
    )
    spine.add_model(p, default="minilm-l6", help="encoder: embedded name, local folder or hub id")
    p.add_argument("--task", default="sarcasm", choices=sorted(TASKS), help="classification task (default: %(default)s)")
    p.add_argument("--epochs", type=float, default=1.0, help="passes over the train data, fractions allowed (default: %(default)s)")
    spine.add_steps(p, default=None, help="optimizer steps, instead of --epochs (None: --epochs)")
    p.add_argument("--lr", type=float, default=5e-5, help="peak learning rate (default: %(default)s)")
    spine.add_batch_size(p, default=32, help="examples per step")
    p.add_argument("--warmup", type=float, default=0.1, help="warm-up fraction of the steps (default: %(default)s)")
    seq = p.add_argument("--seq-len", type=int, default=None, metavar="N", help="tokens per example (default: the task's)")
    spine.add_alias(p, "--max-length", seq)  # its name before the command-line spine
    p.add_argument("--train-limit", type=int, default=None, help="seeded subset of the train split (default: all)")
    p.add_argument("--eval-limit", type=int, default=None, help="seeded subset of validation/test (default: all)")
    spine.add_seed(p, help="seed of data order, subset and dropout")
    p.add_argument("--checkpoint-every", type=int, default=50, help="steps between checkpoints (default: %(default)s)")
    spine.add_device(p)
    spine.add_out(p)
    spine.add_no_progress(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from compactlm.data.classification import get_task
    from compactlm.encoder.finetune import FinetuneConfig, finetune
    from compactlm.io import atomic_dir, write_json
    from compactlm.models import load_model
    from compactlm.train import resume_dir

    if os.environ.get("COMPACTLM_THREADS"):
        torch.set_num_threads(int(os.environ["COMPACTLM_THREADS"]))
    device = spine.device_of(args)
    config = FinetuneConfig(
        task=args.task, epochs=args.epochs, steps=args.steps, lr=args.lr, batch_size=args.batch_size,
        warmup=args.warmup, max_length=args.seq_len, train_limit=args.train_limit, eval_limit=args.eval_limit,
        seed=args.seed, checkpoint_every=args.checkpoint_every,
    )
    task = get_task(args.task)
    ckpt = resume_dir(args.out, args.overwrite)
    with atomic_dir(args.out, overwrite=args.overwrite) as tmp:
        model, tokenizer = load_model(
            args.model, head="sequence-classification", num_labels=task.num_labels, device=device
        )
        model.config.id2label = dict(enumerate(task.labels))
        model.config.label2id = {name: i for i, name in enumerate(task.labels)}
        report = finetune(model, tokenizer, config, progress=not args.no_progress, checkpoint_dir=ckpt)
        model.save_pretrained(tmp / "model")
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp / "model")
        write_json(tmp / "config.json", {"command": "finetune", "model": args.model, **dataclasses.asdict(config)})
        write_json(tmp / "report.json", {"model": args.model, **report})
    shutil.rmtree(ckpt, ignore_errors=True)
    print(f"{args.task}: validation acc {report['val_acc']:.4f}, test acc {report['test_acc']:.4f} -> {args.out}")
    return 0
