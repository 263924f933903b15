"""QAT benchmark on ``smollm2-135m`` (issue 4): ternary (W2A16, TWN per channel) QAT-KD variants
at an equal budget, beside FP, PTQ at 2 bits and a 4-bit QAT run. Resumable, rows appended.

Rows (``--rows``, in this order by default):

* ``fp`` — the full-precision model;
* ``rtn-w2a16`` / ``rtn-w2a16-g64`` — PTQ round-to-nearest at 2 bits, per channel / groups of 64;
* ``lrq-w2a16-g64`` — LRQ at 2 bits, only if the PTQ benchmark left its checkpoint
  (``runs/bench-ptq/models/lrq-w2a16-g64``): evaluated here with the same evaluator;
* ``qat-gt``, ``qat-kd``, ``qat-kd+gt``, ``qat-tsld`` — W2A16 ternary QAT with the four losses of the
  TSLD paper's comparison, same data (``wiki`` windows), steps, LR and seed;
* ``qat-tsld-w4a16`` — the same TSLD run at 4 bits (asymmetric min/max per channel).

Every row: ``wiki-eval`` perplexity (``--ppl-tokens`` tokens, 512-token windows) and zero-shot
accuracy (arc_easy, arc_challenge, hellaswag, piqa, winogrande; ``--zs-limit`` examples each).
Each finished row is appended to ``bench/results/qat.json`` (flat records) and ``qat.md`` /
``qat.png`` (loss curves + PPL bars) are rewritten; a rerun skips finished rows, and an interrupted
QAT row resumes from its checkpoint (``runs/bench-qat/<row>.ckpt``).

Usage (one CPU slot)::

    /work/cpuslot .venv/bin/python bench/qat/run.py --steps 40 --seq-len 128
    .venv/bin/python bench/qat/run.py --report          # only rewrite qat.md / qat.png
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "bench" / "results"
JSON = RESULTS / "qat.json"
CURVES = RESULTS / "qat-curves.json"
RUNS = ROOT / "runs" / "bench-qat"
MODEL = "smollm2-135m"
TASKS = ("arc_easy", "arc_challenge", "hellaswag", "piqa", "winogrande")
QAT_ROWS = {
    "qat-gt": ("w2a16", "gt"),
    "qat-kd": ("w2a16", "kd:1,gt:0"),  # gt at weight 0: logged only, for the curves
    "qat-kd+gt": ("w2a16", "kd+gt"),
    "qat-tsld": ("w2a16", "tsld"),
    "qat-tsld-w4a16": ("w4a16", "tsld"),
}
ROWS = ("fp", "qat-tsld", "rtn-w2a16", "qat-kd", "qat-kd+gt", "qat-gt", "qat-tsld-w4a16", "lrq-w2a16-g64",
        "rtn-w2a16-g64")  # priority order
log = logging.getLogger("bench.qat")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", default=",".join(ROWS))
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--samples", type=int, default=256)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ppl-tokens", type=int, default=40960)
    p.add_argument("--zs-limit", type=int, default=40)
    p.add_argument("--lrq-dir", default=str(ROOT / "runs" / "bench-ptq" / "models" / "lrq-w2a16-g64"))
    p.add_argument("--results-dir", default=str(RESULTS), help="where qat.json / qat.md / qat.png go")
    p.add_argument("--runs-dir", default=str(RUNS), help="QAT run directories and checkpoints")
    p.add_argument("--report", action="store_true", help="only rewrite qat.md / qat.png")
    return p.parse_args(argv)


def read_json(path: Path, default):
    return json.loads(path.read_text()) if path.exists() else default


def write_json(path: Path, data) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def claim(row: str) -> bool:
    """Claim ``row`` for this process (two bench processes share one row list); stale claims are retaken."""
    d = RUNS / "claims"
    d.mkdir(parents=True, exist_ok=True)
    path = d / row
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        try:
            pid = int(path.read_text() or 0)
            os.kill(pid, 0)
            return pid == os.getpid()
        except (ValueError, ProcessLookupError):
            path.unlink(missing_ok=True)
            return claim(row)
    os.write(fd, str(os.getpid()).encode())
    os.close(fd)
    return True


def append_row(rec: dict, history: list | None) -> tuple[list, dict]:
    """Append under a file lock (two bench processes may share the results) and rewrite the report."""
    import fcntl

    with open(RESULTS / ".qat.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        records, curves = read_json(JSON, []), read_json(CURVES, {})
        records = [r for r in records if r["row"] != rec["row"]] + [rec]
        order = {r: i for i, r in enumerate(ROWS)}
        records.sort(key=lambda r: order.get(r["row"], 99))
        if history is not None:
            curves[rec["row"]] = history
            write_json(CURVES, curves)
        write_json(JSON, records)
        report(records, curves)
    return records, curves


def evaluate(model, tok, args) -> dict:
    from compactlm.eval import perplexity, zeroshot

    t0 = time.perf_counter()
    ppl = perplexity(model, tok, source="wiki-eval", seq_len=512, max_tokens=args.ppl_tokens)
    zs = zeroshot(model, tok, list(TASKS), limit=args.zs_limit)
    rec = {"ppl_wiki_eval": round(ppl["ppl"], 4), "ppl_tokens": ppl["tokens"],
           "zeroshot_avg": round(zs["avg_acc"], 4), "zeroshot_avg_norm": round(zs["avg_acc_norm"], 4)}
    rec.update({f"zs_{k}": round(v["acc"], 4) for k, v in zs["tasks"].items()})
    rec["eval_seconds"] = round(time.perf_counter() - t0, 1)
    return rec


def run_row(row: str, args, teacher, tok) -> tuple[dict, list | None]:
    import copy

    from compactlm.api import quantize
    from compactlm.models import load_model
    from compactlm.qat import QATRecipe, run_qat

    rec = {"row": row, "model": MODEL}
    history = None
    t0 = time.perf_counter()
    if row == "fp":
        model = teacher
        rec.update(method="fp", scheme="fp32", train_tokens=0)
    elif row.startswith("rtn-"):
        scheme = row[4:]
        model = copy.deepcopy(teacher)
        quantize(model, "rtn", scheme)
        rec.update(method="ptq-rtn", scheme=scheme, train_tokens=0)
    elif row.startswith("lrq-"):
        if not Path(args.lrq_dir).exists():
            log.warning("skip %s: no PTQ-bench checkpoint at %s", row, args.lrq_dir)
            return {}, None
        model, _ = load_model(args.lrq_dir, backend="reference")
        rec.update(method="ptq-lrq", scheme=row[4:], train_tokens=0, checkpoint=os.path.relpath(args.lrq_dir, ROOT),
                   note="quantized by bench/ptq (calibration and iterations there), evaluated here")
    else:
        scheme, loss = QAT_ROWS[row]
        recipe = QATRecipe(model=MODEL, scheme=scheme, loss=loss, data="wiki", samples=args.samples,
                           seq_len=args.seq_len, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                           seed=args.seed, checkpoint_every=5)
        model, _, report = run_qat(recipe, out=RUNS / row, overwrite=False, teacher=teacher, tokenizer=tok,
                                   progress=False) if not (RUNS / row).exists() else (None, None, None)
        if report is None:  # trained before an interruption of the evaluation: reload the run dir
            model, _ = load_model(str(RUNS / row), backend="reference")
            report = read_json(RUNS / row / "report.json", {})
        history = report["history"]
        rec.update(method="qat", scheme=scheme, loss=loss, quantizer=report["quantizer"],
                   loss_terms=json.dumps(report["loss_terms"]), steps=args.steps, lr=args.lr,
                   train_tokens=report["train_tokens"], train_seconds=report["seconds"],
                   final_loss=round(report["final_loss_mean_last10"]["loss"], 4),
                   checkpoint=os.path.relpath(RUNS / row, ROOT))
    rec["seconds"] = round(time.perf_counter() - t0, 1)
    rec.update(evaluate(model, tok, args))
    rec.update(peak_mem_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
               device="cpu, 1 core (cpuslot; 2-core host shared with other jobs, times inflated by contention)",
               budget=f"{args.steps} steps x {args.batch_size}x{args.seq_len} tokens "
                      f"({args.steps * args.batch_size * args.seq_len} tokens), lr {args.lr} linear, AdamW",
               eval=f"wiki-eval {args.ppl_tokens} tokens / 512; zero-shot {','.join(TASKS)} limit {args.zs_limit}",
               seed=args.seed, command="python bench/qat/run.py " + " ".join(sys.argv[1:]),
               date=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"))
    return rec, history


def report(records: list[dict], curves: dict) -> None:
    cols = ["row", "method", "scheme", "loss", "train_tokens", "ppl_wiki_eval", "zeroshot_avg", "final_loss",
            "seconds", "eval_seconds"]
    fp = next((r["ppl_wiki_eval"] for r in records if r["row"] == "fp"), None)
    lines = ["# QAT benchmark — smollm2-135m (bench/qat/run.py)", "",
             "| " + " | ".join(cols + ["ΔPPL vs FP"]) + " |", "|" + "---|" * (len(cols) + 1)]
    for r in records:
        delta = "" if fp is None else f"{r['ppl_wiki_eval'] - fp:+.2f}"
        lines.append("| " + " | ".join(str(r.get(c, "")) for c in cols) + f" | {delta} |")
    if records:
        r0 = records[-1]
        lines += ["", f"Eval: {r0['eval']}. QAT budget: {next((r['budget'] for r in records if r['method'] == 'qat'), '-')}.",
                  f"Device: {r0['device']}. Loss curves: qat.png (left), PPL (right, log scale)."]
    (RESULTS / "qat.md").write_text("\n".join(lines) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.5))
    for row, hist in curves.items():
        a.plot([h["step"] for h in hist], [h["gt"] for h in hist], label=row)
    a.set_xlabel("step"), a.set_ylabel("student GT cross-entropy on the training batch"), a.legend(fontsize=8)
    a.set_title("QAT loss curves")
    b.bar([r["row"] for r in records], [r["ppl_wiki_eval"] for r in records])
    b.set_yscale("log"), b.set_ylabel("wiki-eval PPL"), b.tick_params(axis="x", rotation=60)
    fig.tight_layout()
    fig.savefig(RESULTS / "qat.png", dpi=110)


def main(argv=None) -> int:
    global RESULTS, JSON, CURVES, RUNS
    args = parse_args(argv)
    RESULTS, RUNS = Path(args.results_dir), Path(args.runs_dir)
    RESULTS.mkdir(parents=True, exist_ok=True)
    JSON, CURVES = RESULTS / "qat.json", RESULTS / "qat-curves.json"
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    records, curves = read_json(JSON, []), read_json(CURVES, {})
    if args.report:
        report(records, curves)
        return 0
    import torch

    torch.set_num_threads(int(os.environ.get("COMPACTLM_THREADS", "1")))
    from compactlm.models import load_model

    teacher, tok = load_model(MODEL)
    for row in args.rows.split(","):
        if row not in ROWS:
            raise SystemExit(f"--rows: unknown row {row!r}; known: {', '.join(ROWS)}")
        if row in {r["row"] for r in read_json(JSON, [])} or not claim(row):
            continue
        log.info("row %s", row)
        rec, history = run_row(row, args, teacher, tok)
        if not rec:
            continue
        append_row(rec, history)
        log.info("done %s: %s", row, {k: rec.get(k) for k in ("ppl_wiki_eval", "zeroshot_avg", "seconds")})
    return 0


if __name__ == "__main__":
    sys.exit(main())
