"""CKD / DynaBERT benchmark (issue 16): encoder students of a fine-tuned MiniLM teacher on sarcasm.

    nice -n 10 env OMP_NUM_THREADS=1 .venv/bin/python bench/ckd/run.py --teacher runs/encoder/teacher-sarcasm \\
        --students l3,w50 --variants none,kd,kd-hidden,ckd,wr,ltr --seeds 0 --steps 100 --eval-limit 500

Rows:

* ``teacher`` — the teacher itself (accuracy, parameters, latency);
* ``distill`` — one per (student, variant, seed): the student (``l3``: 3 evenly spaced blocks;
  ``w50``: half of every layer's heads and FFN neurons) trained with ``compactlm distill --task``
  and the variant's loss (``none`` = fine-tuning without KD, ``kd``, ``kd-hidden``, ``ckd``, ``wr``,
  ``ltr``), all with the same data, steps, batch, LR, max length and seed;
* ``dynabert`` — one per (loss, seed, width, depth): every sub-network of a ``compactlm dynabert
  train`` run (``--dynabert dynabert,ckd``).

Every row is a flat record (command, seed, device, budget, accuracies, parameters, latency)
appended to ``bench/results/ckd.json`` as soon as it is done (atomic write); a rerun skips rows
already there (resumable); then ``ckd.md`` and ``ckd.png`` are rewritten (``bench/ckd/report.py``).
Each run is a real command line run in-process through ``compactlm.cli.main``; its run directory
(``runs/ckd/...``) is reused when it already holds a report.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import write_report  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "ckd.json"
log = logging.getLogger("bench.ckd")

STUDENTS = {"l3": ["--student-layers", "3"], "w50": ["--student-width", "0.5"]}
"""Student name -> the ``compactlm distill`` flags that build it from the teacher."""


def read_records(path: Path = RESULTS) -> list[dict]:
    return json.loads(path.read_text()) if path.exists() else []


def row_key(r: dict) -> str:
    return "|".join(str(r.get(k, "")) for k in ("kind", "student", "variant", "seed", "width", "depth", "budget", "device"))


def append_record(record: dict, path: Path = RESULTS) -> None:
    rows = [r for r in read_records(path) if row_key(r) != row_key(record)] + [record]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(rows, indent=1) + "\n")
    os.replace(tmp, path)


def device_label(device: str) -> str:
    threads = os.environ.get("OMP_NUM_THREADS", "?")
    if device.startswith("cuda"):
        import torch

        return f"{device} ({torch.cuda.get_device_name(0)})"
    return f"cpu-{threads}thread ({platform.processor() or platform.machine()}, {os.cpu_count()} cores, shared)"


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    except OSError:
        return ""


def latency_ms(model, batch: int, length: int, device: str, reps: int = 10) -> float:
    """Median wall time (ms) of one forward of ``batch × length`` random tokens (inference mode)."""
    import torch

    ids = torch.randint(5, min(1000, model.config.vocab_size), (batch, length), device=device)
    mask = torch.ones_like(ids)
    times = []
    with torch.inference_mode():
        for i in range(reps + 2):
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            model(input_ids=ids, attention_mask=mask)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            if i >= 2:
                times.append(time.perf_counter() - t0)
    return round(1000 * sorted(times)[len(times) // 2], 2)


def run_cli(argv: list[str]) -> None:
    from compactlm.cli import main

    log.info("compactlm %s", shlex.join(argv))
    code = main(argv)
    if code:
        raise SystemExit(f"command failed ({code}): compactlm {shlex.join(argv)}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--teacher", default="runs/encoder/teacher-sarcasm")
    p.add_argument("--task", default="sarcasm")
    p.add_argument("--students", default="l3,w50")
    p.add_argument("--variants", default="none,kd,kd-hidden,ckd,wr,ltr")
    p.add_argument("--seeds", default="0")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--seq-len", type=int, default=32)
    p.add_argument("--train-limit", type=int, default=12800)
    p.add_argument("--eval-limit", type=int, default=None)
    p.add_argument("--dynabert", default="", help="DynaBERT losses to run (e.g. dynabert,ckd; empty: none)")
    p.add_argument("--dyna-steps", type=int, default=None, help="steps per DynaBERT stage (default --steps)")
    p.add_argument("--widths", default="1,0.75,0.5,0.25")
    p.add_argument("--depths", default="1,0.75,0.5")
    p.add_argument("--device", default="cpu")
    p.add_argument("--runs", default="runs/ckd")
    p.add_argument("--results", default=str(RESULTS))
    p.add_argument("--latency-batch", type=int, default=32)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    import torch

    from compactlm.data.classification import get_task
    from compactlm.encoder.qat import evaluate_classifier
    from compactlm.models import load_model
    from compactlm.models.prune import param_count

    results = Path(args.results)
    done = {row_key(r) for r in read_records(results)}
    runs = Path(args.runs)
    eval_flags = ["--eval-limit", str(args.eval_limit)] if args.eval_limit else []
    budget = f"steps={args.steps} batch={args.batch_size} lr={args.lr} seq_len={args.seq_len} train_limit={args.train_limit} " \
             f"eval_limit={args.eval_limit or 'all'}"
    common = {"task": args.task, "teacher": args.teacher, "device": device_label(args.device), "commit": git_commit()}
    task = get_task(args.task)

    def key(row: dict) -> str:
        return row_key({**row, **common})

    def finish(record: dict) -> None:
        record.update(common, date=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))
        append_record(record, results)
        done.add(row_key(record))
        write_report(read_records(results), results.with_suffix(".md"), results.with_suffix(".png"))

    teacher_row = {"kind": "teacher", "student": "teacher", "variant": "", "seed": "", "budget": f"eval_limit={args.eval_limit or 'all'}"}
    if key(teacher_row) not in done:
        model, tok = load_model(args.teacher, head="sequence-classification", num_labels=task.num_labels, device=args.device)
        accs = evaluate_classifier(model, tok, args.task, args.eval_limit, args.seq_len)
        finish({**teacher_row, **accs, "params": param_count(model), "layers": model.config.num_hidden_layers,
                "latency_ms": latency_ms(model, args.latency_batch, args.seq_len, args.device),
                "command": f"(evaluation of {args.teacher})"})

    for seed in [int(s) for s in args.seeds.split(",") if s.strip()]:
        for student in [s for s in args.students.split(",") if s]:
            for variant in [v for v in args.variants.split(",") if v]:
                row = {"kind": "distill", "student": student, "variant": variant, "seed": seed, "budget": budget}
                if key(row) in done:
                    continue
                out = runs / f"{student}-{variant}-s{seed}-{args.steps}"
                argv = ["distill", "--task", args.task, "--teacher", args.teacher, *STUDENTS[student], "--loss", variant,
                        "--steps", str(args.steps), "--batch-size", str(args.batch_size), "--lr", str(args.lr),
                        "--seq-len", str(args.seq_len), "--train-limit", str(args.train_limit), *eval_flags,
                        "--seed", str(seed), "--device", args.device, "--out", str(out), "--no-progress"]
                t0 = time.perf_counter()
                if not (out / "report.json").exists():
                    run_cli(argv)
                rep = json.loads((out / "report.json").read_text())
                model, _ = load_model(str(out), head="sequence-classification", device=args.device)
                finish({**row, "val_acc": rep["val_acc"], "test_acc": rep["test_acc"], "params": rep["student_params"],
                        "layers": rep["student_layers"], "heads": rep["student_heads"],
                        "intermediate_size": rep["student_intermediate"], "terms": rep["terms"],
                        "loss_start": rep["loss_start"].get("loss"), "loss_end": rep["loss_end"].get("loss"),
                        "train_seconds": rep["train_seconds"], "wall_seconds": round(time.perf_counter() - t0, 1),
                        "latency_ms": latency_ms(model, args.latency_batch, args.seq_len, args.device),
                        "command": "compactlm " + shlex.join(argv)})

        for loss in [d for d in args.dynabert.split(",") if d]:
            steps = args.dyna_steps or args.steps
            dbudget = budget.replace(f"steps={args.steps}", f"steps={steps}/stage") + f" widths={args.widths} depths={args.depths}"
            out = runs / f"dynabert-{loss}-s{seed}-{steps}"
            argv = ["dynabert", "train", "--model", args.teacher, "--task", args.task, "--loss", loss,
                    "--widths", args.widths, "--depths", args.depths, "--steps", str(steps),
                    "--batch-size", str(args.batch_size), "--lr", str(args.lr), "--seq-len", str(args.seq_len),
                    "--train-limit", str(args.train_limit), *eval_flags, "--seed", str(seed), "--device", args.device,
                    "--out", str(out), "--no-progress"]
            probe = {"kind": "dynabert", "student": "dynabert", "variant": loss, "seed": seed, "budget": dbudget}
            widths = [float(w) for w in args.widths.split(",")]
            depths = [float(d) for d in args.depths.split(",")]
            if all(key({**probe, "width": w, "depth": d}) in done for w in widths for d in depths):
                continue
            t0 = time.perf_counter()
            if not (out / "report.json").exists():
                run_cli(argv)
            rep = json.loads((out / "report.json").read_text())
            full, _ = load_model(str(out), head="sequence-classification", device=args.device)
            from compactlm.distill.dynabert import extract

            for sub in rep["subnetworks"]:
                model = extract(full, sub["width"], sub["depth"])
                finish({**probe, "width": sub["width"], "depth": sub["depth"], "val_acc": sub["val_acc"],
                        "test_acc": sub["test_acc"], "params": sub["params"], "layers": model.config.num_hidden_layers,
                        "train_seconds": sum(s["train_seconds"] for s in rep["stages"].values()),
                        "wall_seconds": round(time.perf_counter() - t0, 1),
                        "latency_ms": latency_ms(model, args.latency_batch, args.seq_len, args.device),
                        "command": "compactlm " + shlex.join(argv)})
    del torch
    return 0


if __name__ == "__main__":
    sys.exit(main())
