"""NN-LUT benchmark: function-level error tables and model-level metrics with every non-linearity replaced.

Rows go to ``bench/results/lut.json`` (appended as they finish; a rerun skips finished rows), and
``lut.md`` / ``lut.png`` are regenerated from them. The 16-entry tables used for the model rows are
written to ``bench/results/lut-tables/`` (``compactlm lut fit`` format).

    /work/cpuslot .venv/bin/python bench/lut/run.py [--only functions,minilm,smollm2] [--zs-limit 40]
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import sys
import time
from pathlib import Path

import torch

from compactlm.io import read_json, write_json
from compactlm.lut.apply import apply_luts, calibrate_luts
from compactlm.lut.export import fixed_point_error, save_luts, to_fixed_point
from compactlm.lut.fit import FitConfig, fit_lut
from compactlm.lut.functions import TARGETS
from compactlm.lut.table import table_error, uniform_lut

log = logging.getLogger("bench.lut")
ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "bench" / "results"
TASKS = ("arc_easy", "arc_challenge", "hellaswag", "piqa", "winogrande")
DEVICE = "cpu, 1 core (cpuslot; 2-core host shared with other jobs, wall times are inflated by contention)"


def _peak_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


class Rows:
    """The results file: a list of flat records keyed by ``key``; saved atomically after each row."""

    def __init__(self, path: Path, command: str):
        self.path, self.command = path, command
        self.rows = read_json(path) if path.is_file() else []

    def has(self, key: str) -> bool:
        return any(r.get("key") == key for r in self.rows)

    def get(self, key: str) -> dict | None:
        return next((r for r in self.rows if r.get("key") == key), None)

    def add(self, key: str, **rec) -> dict:
        rec = {"key": key, **rec, "device": DEVICE, "seed": 0, "command": self.command}
        self.rows = [r for r in self.rows if r.get("key") != key] + [rec]
        write_json(self.path, self.rows)
        write_markdown(self.rows, self.path.with_suffix(".md"))
        log.info("row %s: %s", key, {k: v for k, v in rec.items() if k not in ("command", "device")})
        return rec


def fit_tables(entries: int) -> dict:
    return {f: fit_lut(f, entries, FitConfig()) for f in TARGETS}


def run_functions(rows: Rows, tables16: dict) -> None:
    for entries in (8, 16, 32):
        for fn, t in TARGETS.items():
            key_nn, key_uni = f"fn/{fn}/{entries}/nn-lut", f"fn/{fn}/{entries}/uniform"
            if rows.has(key_nn) and rows.has(key_uni):
                continue
            start = time.perf_counter()
            table = tables16[fn] if entries == 16 else fit_lut(fn, entries, FitConfig())
            secs = round(time.perf_counter() - start, 2)
            extra = {}
            if entries == 16:
                fx = fixed_point_error(table, to_fixed_point(table, 16))
                extra = {"q16_max_abs_err": fx["max_abs_err"], "q16_added_max_abs_err": fx["added_max_abs_err"]}
            rows.add(key_nn, kind="function", method="nn-lut", fn=fn, entries=entries, range=f"[{t.lo:g}, {t.hi:g}]",
                     **table_error(table, t.fn), **extra, seconds=secs,
                     budget=f"{FitConfig().steps} Adam steps, {FitConfig().samples} samples")
            uni = uniform_lut(t.fn, entries, t.lo, t.hi, fn)
            rows.add(key_uni, kind="function", method="uniform", fn=fn, entries=entries, range=f"[{t.lo:g}, {t.hi:g}]",
                     **table_error(uni, t.fn), seconds=0.0, budget="closed form")


def run_minilm(rows: Rows, tables16: dict, limit: int | None) -> None:
    from compactlm.encoder.finetune import accuracy, encode_split
    from compactlm.models import load_model

    teacher = ROOT / "runs" / "encoder" / "teacher-sarcasm"
    if not (teacher / "report.json").is_file():
        log.warning("no fine-tuned sarcasm teacher at %s: skipping the encoder rows", teacher)
        return
    model, tok = load_model(str(teacher))
    test = encode_split(tok, "sarcasm", "test", limit, 0, None)
    n = int(test["labels"].numel())
    base = dict(kind="model", model="minilm-l6 (runs/encoder/teacher-sarcasm)", task="sarcasm", examples=n, entries=16)

    def measure(key, method, tables, budget):
        if rows.has(key):
            return
        start = time.perf_counter()
        if tables is None:
            acc = accuracy(model, test)
        else:
            with apply_luts(model, tables) as h:
                acc = accuracy(model, test)
            base["replaced"] = ", ".join(f"{k}x{v}" for k, v in h.replaced.items())
        rows.add(key, **base, method=method, acc=round(100 * acc, 2), seconds=round(time.perf_counter() - start, 1),
                 peak_mem_mb=_peak_mb(), budget=budget)

    measure("minilm/fp", "fp", None, "test split")
    measure("minilm/nn-lut", "nn-lut", tables16, "16-entry tables, test split")
    measure("minilm/uniform", "uniform", {f: uniform_lut(t.fn, 16, t.lo, t.hi, f) for f, t in TARGETS.items()},
            "16-entry uniform tables, test split")
    measure("minilm/nn-lut-q16", "nn-lut-q16", {f: to_fixed_point(t, 16) for f, t in tables16.items()},
            "16-entry tables as 16-bit fixed point (integer lookup), test split")
    if not rows.has("minilm/nn-lut-calibrated"):
        train = encode_split(tok, "sarcasm", "train", 64, 0, None)
        batches = [{k: v[i:i + 16] for k, v in train.items() if k != "labels"} for i in range(0, 64, 16)]
        cal = calibrate_luts(model, batches, entries=16)
        measure("minilm/nn-lut-calibrated", "nn-lut-calibrated", {**tables16, **cal},
                "16-entry tables re-fitted on 64 sarcasm train sentences")


def run_smollm2(rows: Rows, tables16: dict, zs_limit: int, with_cal: bool) -> None:
    from compactlm.data import token_samples
    from compactlm.eval import perplexity, zeroshot
    from compactlm.models import load_model

    model, tok = load_model("smollm2-135m")
    base = dict(kind="model", model="smollm2-135m", entries=16)

    def measure(key, method, tables, what, budget):
        if rows.has(key):
            return
        start = time.perf_counter()
        handle = apply_luts(model, tables) if tables is not None else None
        try:
            if what == "ppl":
                r = perplexity(model, tok, "wiki-eval", seq_len=512, max_tokens=40960)
                res = {"ppl_wiki_eval": round(r["ppl"], 4), "tokens": r["tokens"]}
            else:
                r = zeroshot(model, tok, list(TASKS), limit=zs_limit)
                res = {"zeroshot_avg": round(r["avg_acc"], 4), "zeroshot_avg_norm": round(r["avg_acc_norm"], 4),
                       **{f"acc_{k}": round(v["acc"], 4) for k, v in r["tasks"].items()}, "zs_limit": zs_limit}
        finally:
            replaced = ", ".join(f"{k}x{v}" for k, v in handle.replaced.items()) if handle else ""
            if handle:
                handle.remove()
        rows.add(key, **base, method=method, metric=what, **res, replaced=replaced,
                 seconds=round(time.perf_counter() - start, 1), peak_mem_mb=_peak_mb(), budget=budget)

    measure("smollm2/fp/ppl", "fp", None, "ppl", "wiki-eval 40960 tokens, seq 512")
    measure("smollm2/nn-lut/ppl", "nn-lut", tables16, "ppl", "wiki-eval 40960 tokens, seq 512")
    measure("smollm2/fp/zs", "fp", None, "zeroshot", f"first {zs_limit} per task x {len(TASKS)} tasks")
    measure("smollm2/nn-lut/zs", "nn-lut", tables16, "zeroshot", f"first {zs_limit} per task x {len(TASKS)} tasks")
    if with_cal and not rows.has("smollm2/nn-lut-calibrated/ppl"):
        calib = token_samples(tok, "wiki", 4, 256, seed=0)
        cal = calibrate_luts(model, [calib[i:i + 2] for i in range(0, 4, 2)], entries=16)
        save_luts(RESULTS / "lut-tables" / "smollm2-calibrated", cal)
        measure("smollm2/nn-lut-calibrated/ppl", "nn-lut-calibrated", {**tables16, **cal}, "ppl",
                "tables re-fitted on 4x256 wiki (train) tokens; wiki-eval 40960 tokens")


def write_markdown(rows: list[dict], path: Path) -> None:
    fn_rows = [r for r in rows if r.get("kind") == "function"]
    lines = ["# NN-LUT benchmark", "",
             "Generated by `bench/lut/run.py` from `lut.json`. Function errors are measured on 100,001 evenly",
             "spaced points of each function's interval. Device: " + DEVICE + ".", "",
             "## Function level (max / mean absolute error)", "",
             "| function | range | entries | NN-LUT max | uniform max | NN-LUT mean | uniform mean | NN-LUT q16 max |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for fn in TARGETS:
        for n in (8, 16, 32):
            a = next((r for r in fn_rows if r["fn"] == fn and r["entries"] == n and r["method"] == "nn-lut"), None)
            b = next((r for r in fn_rows if r["fn"] == fn and r["entries"] == n and r["method"] == "uniform"), None)
            if a and b:
                q = f"{a['q16_max_abs_err']:.2e}" if "q16_max_abs_err" in a else ""
                lines.append(f"| {fn} | {a['range']} | {n} | {a['max_abs_err']:.2e} | {b['max_abs_err']:.2e} | "
                             f"{a['mean_abs_err']:.2e} | {b['mean_abs_err']:.2e} | {q} |")
    m_rows = [r for r in rows if r.get("kind") == "model"]
    if m_rows:
        lines += ["", "## Model level (16 entries, every GELU/SiLU, softmax and LayerNorm/RMSNorm replaced)", "",
                  "| model | method | metric | value | replaced | seconds | budget |", "|---|---|---|---:|---|---:|---|"]
        for r in m_rows:
            if "acc" in r:
                metric, val = f"{r['task']} test acc (%, n={r['examples']})", f"{r['acc']:.2f}"
            elif "ppl_wiki_eval" in r:
                metric, val = f"wiki-eval ppl ({r['tokens']} tokens)", f"{r['ppl_wiki_eval']:.3f}"
            else:
                metric = f"zero-shot avg acc ({len(TASKS)} tasks, {r['zs_limit']}/task)"
                val = f"{r['zeroshot_avg']:.4f} (" + ", ".join(f"{t} {r['acc_' + t]:.3f}" for t in TASKS) + ")"
            lines.append(f"| {r['model']} | {r['method']} | {metric} | {val} | {r.get('replaced', '')} | "
                         f"{r['seconds']} | {r['budget']} |")
    path.write_text("\n".join(lines) + "\n")


def plot(tables: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(TARGETS), figsize=(4 * len(TARGETS), 6.5), sharex="col")
    for j, (fn, t) in enumerate(TARGETS.items()):
        x = torch.linspace(t.lo, t.hi, 4001, dtype=torch.float64)
        uni = uniform_lut(t.fn, 16, t.lo, t.hi, fn)
        nn_t = tables[fn]
        ax, ex = axes[0, j], axes[1, j]
        ax.plot(x, t.fn(x), "k", lw=2.5, alpha=0.35, label=fn)
        ax.plot(x, nn_t(x), "C0", lw=1, label="NN-LUT 16")
        ax.plot(x, uni(x), "C1--", lw=1, label="uniform 16")
        bp = torch.tensor([d for d in nn_t.breakpoints if t.lo <= d <= t.hi], dtype=torch.float64)
        ax.plot(bp, nn_t(bp), "C0o", ms=3)
        ax.set_title(f"{fn} on [{t.lo:g}, {t.hi:g}]")
        ax.legend(fontsize=7)
        ex.semilogy(x, (nn_t(x) - t.fn(x)).abs() + 1e-12, "C0", lw=1, label="NN-LUT 16")
        ex.semilogy(x, (uni(x) - t.fn(x)).abs() + 1e-12, "C1", lw=1, label="uniform 16")
        ex.set_ylim(1e-7, 1)
        ex.set_xlabel("x")
        ex.set_title("absolute error", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", default="functions,minilm,smollm2")
    p.add_argument("--zs-limit", type=int, default=40, help="examples per zero-shot task (default: %(default)s)")
    p.add_argument("--minilm-limit", type=int, default=None, help="sarcasm test examples (default: all 2000)")
    p.add_argument("--no-calibration", action="store_true")
    p.add_argument("--out", default=str(RESULTS / "lut.json"))
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(int(os.environ.get("COMPACTLM_THREADS", "1")))
    command = "/work/cpuslot .venv/bin/python bench/lut/run.py " + " ".join(argv if argv is not None else sys.argv[1:])
    rows = Rows(Path(args.out), command.strip())
    table_dir = RESULTS / "lut-tables" / "n16"
    if (table_dir / "gelu.json").is_file():
        from compactlm.lut.export import load_luts

        tables16 = load_luts(table_dir)
    else:
        tables16 = fit_tables(16)
        save_luts(table_dir, tables16, fixed_bits=16)
    parts = set(args.only.split(","))
    if "functions" in parts:
        run_functions(rows, tables16)
        plot(tables16, Path(args.out).with_suffix(".png"))
    if "minilm" in parts:
        run_minilm(rows, tables16, args.minilm_limit)
    if "smollm2" in parts:
        run_smollm2(rows, tables16, args.zs_limit, not args.no_calibration)
    write_markdown(rows.rows, Path(args.out).with_suffix(".md"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
