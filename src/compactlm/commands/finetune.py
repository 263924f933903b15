"""``compactlm finetune``: fine-tune an encoder on a classification task (the FP teacher of encoder QAT).

Writes ``<out>/model`` (HF checkpoint + tokenizer, reloadable with ``load_model(out)``),
``<out>/config.json`` (resolved options) and ``<out>/report.json`` (validation / test accuracy),
atomically.
"""

from __future__ import annotations

import argparse
import dataclasses
import os


def add_parser(sub: argparse._SubParsersAction) -> None:
    from compactlm.data.classification import TASKS

    p = sub.add_parser(
        "finetune",
        help="fine-tune an encoder for sequence classification (teacher for encoder QAT)",
        description="Fine-tune a BERT-like encoder on a classification task with fixed train/validation/test "
        "splits; writes <out>/model, config.json and report.json.",
    )
    p.add_argument("--model", default="minilm-l6", help="encoder: embedded name, local folder or hub id (default: %(default)s)")
    p.add_argument("--task", default="sarcasm", choices=sorted(TASKS), help="classification task (default: %(default)s)")
    p.add_argument("--epochs", type=float, default=1.0, help="passes over the train data, fractions allowed (default: %(default)s)")
    p.add_argument("--lr", type=float, default=5e-5, help="peak learning rate (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=32, help="examples per step (default: %(default)s)")
    p.add_argument("--warmup", type=float, default=0.1, help="warm-up fraction of the steps (default: %(default)s)")
    p.add_argument("--max-length", type=int, default=None, help="tokens per example (default: the task's)")
    p.add_argument("--train-limit", type=int, default=None, help="seeded subset of the train split (default: all)")
    p.add_argument("--eval-limit", type=int, default=None, help="seeded subset of validation/test (default: all)")
    p.add_argument("--seed", type=int, default=0, help="seed of data order, subset and dropout (default: %(default)s)")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--out", required=True, help="run directory to create")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from compactlm.data.classification import get_task
    from compactlm.encoder.finetune import FinetuneConfig, finetune
    from compactlm.io import atomic_dir, write_json
    from compactlm.models import load_model

    if os.environ.get("COMPACTLM_THREADS"):
        torch.set_num_threads(int(os.environ["COMPACTLM_THREADS"]))
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    config = FinetuneConfig(
        task=args.task, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, warmup=args.warmup,
        max_length=args.max_length, train_limit=args.train_limit, eval_limit=args.eval_limit, seed=args.seed,
    )
    task = get_task(args.task)
    with atomic_dir(args.out, overwrite=args.overwrite) as tmp:
        model, tokenizer = load_model(
            args.model, head="sequence-classification", num_labels=task.num_labels, device=device
        )
        model.config.id2label = dict(enumerate(task.labels))
        model.config.label2id = {name: i for i, name in enumerate(task.labels)}
        report = finetune(model, tokenizer, config)
        model.save_pretrained(tmp / "model")
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp / "model")
        write_json(tmp / "config.json", {"command": "finetune", "model": args.model, **dataclasses.asdict(config)})
        write_json(tmp / "report.json", {"model": args.model, **report})
    print(f"{args.task}: validation acc {report['val_acc']:.4f}, test acc {report['test_acc']:.4f} -> {args.out}")
    return 0
