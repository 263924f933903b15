"""Encoder benchmark: FP teacher vs PTQ (RTN) vs KD-QAT loss variants vs SDQ, test accuracy + wall time.

    /work/cpuslot .venv/bin/python bench/encoder/run.py --teacher runs/encoder/teacher-sarcasm \\
        --steps 60 --batch-size 16 --lr 1e-4 --max-length 32 --eval-limit 1000 --seeds 0

Rows (in priority order): FP; RTN at W2A8 / W4A8 / W8A8; QAT with each loss variant
(``score-mse`` TernaryBERT baseline, ``attn-map``, ``attn-out``, ``map-out``) at W2A8 then W4A8; SDQ
at W8A8. Every QAT / SDQ row has the same budget (steps, batch, LR, max length). The row labels
(``w2a8``...) name the paper settings of :data:`SETTINGS`: a ``QuantScheme`` string plus the
pre-clip of the ``QATConfig`` (:data:`compactlm.encoder.qat.ENCODER_QAT` otherwise); each record
carries the canonical scheme name (``scheme_name``) and the QAT config. Resumable: a row
(method, scheme, loss, seed) already in ``bench/results/encoder.json`` is skipped; each finished row
is appended at once (atomic, locked — ``bench/ptq/records.py``), then ``encoder.md`` / ``encoder.png``
are rewritten (``bench/encoder/report.py``).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import logging
import os
import shlex
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench" / "ptq"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from records import append_record, read_records, row_key  # noqa: E402
from report import write_report  # noqa: E402

from compactlm.data.classification import get_task  # noqa: E402
from compactlm.encoder.qat import EncoderQATConfig, evaluate_classifier, ptq_encoder, run_encoder_qat  # noqa: E402
from compactlm.encoder.sdq import SDQConfig, run_sdq  # noqa: E402
from compactlm.models import load_model  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "encoder.json"
log = logging.getLogger("bench.encoder")

SETTINGS: dict[str, tuple[str, float | None]] = {
    "w2a8": ("w2a8-tensor-actsym", 2.5),      # ternary per tensor, per-row ternary embeddings, pre-clip 2.5
    "w4a8": ("w4a8-sym-tensor-actsym", 2.5),  # 4-bit symmetric per row, pre-clip 2.5
    "w8a8": ("w8a8-dynamic-actsym", None),    # 8-bit symmetric per row, no pre-clip (SDQ)
}
"""Row label -> (scheme, pre-clip); activations 8-bit symmetric dynamic per tensor in all three."""


def rows() -> list[tuple[str, str, str]]:
    """``(method, scheme, loss)`` in priority order."""
    out = [("fp", "fp32", ""), ("rtn", "w2a8", ""), ("rtn", "w4a8", ""), ("rtn", "w8a8", "")]
    out += [("qat", "w2a8", v) for v in ("score-mse", "attn-map", "attn-out", "map-out")]
    out += [("sdq", "w8a8", "sdq")]
    out += [("qat", "w4a8", v) for v in ("score-mse", "attn-map", "attn-out", "map-out")]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", default="runs/encoder/teacher-sarcasm")
    p.add_argument("--task", default="sarcasm")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--max-length", type=int, default=32)
    p.add_argument("--eval-limit", type=int, default=1000, help="seeded test subset (same for every row)")
    p.add_argument("--seeds", default="0", help="comma-separated training seeds")
    p.add_argument("--only", default=None, help="comma-separated method:scheme:loss filters (substring match)")
    p.add_argument("--results", default=str(RESULTS))
    p.add_argument("--device", default="auto", help="auto (cuda when present), cpu, cuda")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    threads = int(os.environ.get("COMPACTLM_THREADS", "0") or 0)
    if threads:
        torch.set_num_threads(threads)
    device_name = f"cpu-{torch.get_num_threads()}thread (2-core host, shared)" if not torch.cuda.is_available() \
        else torch.cuda.get_device_name()
    results = Path(args.results)
    done = {row_key(r) for r in read_records(results)}
    task = get_task(args.task)
    from compactlm.devices import choose_device

    teacher, tokenizer = load_model(args.teacher, head="sequence-classification", num_labels=task.num_labels)
    teacher = teacher.float().to(choose_device(args.device))
    budget = (f"{args.steps} steps x batch {args.batch_size}, lr {args.lr}, warmup 0.1, max_length "
              f"{args.max_length}; test subset {args.eval_limit} of {task.n_test}")
    command = "python bench/encoder/run.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    seeds = [int(s) for s in args.seeds.split(",")]
    filters = args.only.split(",") if args.only else None
    for seed in seeds:
        for method, scheme, loss in rows():
            tag = f"{method}:{scheme}:{loss}"
            if filters and not any(f in tag for f in filters):
                continue
            variant = f"{loss} seed{seed}" if method in ("qat", "sdq") else f"seed{seed}"
            if method in ("fp", "rtn") and seed != seeds[0]:
                continue  # deterministic rows: once
            record = {"method": method, "scheme": scheme, "variant": variant}
            if row_key(record) in done:
                log.info("skip %s (done)", row_key(record))
                continue
            log.info("run %s", row_key(record))
            start = time.perf_counter()
            report: dict = {}
            if method == "fp":
                model = teacher
            elif method == "rtn":
                config = EncoderQATConfig(task=args.task, scheme=SETTINGS[scheme][0], clip=SETTINGS[scheme][1])
                model = ptq_encoder(copy.deepcopy(teacher), config.scheme, config.qat_config()).eval()
                report = {"scheme": config.scheme, "qat_config": dataclasses.asdict(config.qat_config())}
            else:
                name, clip = SETTINGS[scheme]
                common = dict(task=args.task, scheme=name, clip=clip, steps=args.steps, lr=args.lr,
                              batch_size=args.batch_size, warmup=0.1, max_length=args.max_length,
                              eval_limit=args.eval_limit, seed=seed)
                if method == "sdq":
                    model, report = run_sdq(teacher, tokenizer, SDQConfig(**common), progress=False, eval_splits=("test",))
                else:
                    model, report = run_encoder_qat(
                        teacher, tokenizer, EncoderQATConfig(loss=loss, **common), progress=False, eval_splits=("test",)
                    )
            if "test_acc" not in report:
                report.update(evaluate_classifier(model, tokenizer, args.task, args.eval_limit, args.max_length,
                                                  splits=("test",)))
            record.update(
                scheme_name=report.get("scheme", "fp32"), qat_config=report.get("qat_config"),
                loss=loss, model="minilm-l6", teacher=args.teacher, task=args.task, seed=seed,
                test_acc=report["test_acc"], test_examples=report["test_examples"],
                loss_start=report.get("loss_start", {}).get("loss"), loss_end=report.get("loss_end", {}).get("loss"),
                loss_curve=report.get("loss_curve"),
                train_seconds=report.get("train_seconds", 0.0), seconds=round(time.perf_counter() - start, 1),
                device=device_name, budget=budget if method in ("qat", "sdq") else f"no training; {budget.split('; ')[-1]}",
                command=command,
            )
            append_record(record, results)
            log.info("%s: test acc %.4f (%.0f s)", row_key(record), record["test_acc"], record["seconds"])
            write_report(read_records(results), results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
