"""NN-LUT benchmark: function-level error tables and model-level metrics with every non-linearity replaced.

Rows go to ``bench/results/lut.json`` (appended as they finish; a rerun skips finished rows), and
``lut.md`` / ``lut.png`` are regenerated from them. The 16-entry tables used for the model rows are
written to ``bench/results/lut-tables/`` (``compactlm lut fit`` format).

    nice -n 10 env OMP_NUM_THREADS=1 COMPACTLM_THREADS=1 .venv/bin/python bench/lut/run.py \
        [--only functions,minilm,smollm2] [--zs-limit 40]

Ablation (what the network training adds), all at the same entry count: ``uniform`` (interpolating
table on uniform breakpoints), ``lstsq`` (least-squares knot values on the same breakpoints,
:func:`compactlm.lut.table.lstsq_lut`), ``nn-lut-init`` (the network at its initial breakpoints,
before any Adam step, :func:`compactlm.lut.fit.initial_lut`) and ``nn-lut`` (trained).
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
from compactlm.lut.fit import FitConfig, fit_lut, initial_lut
from compactlm.lut.functions import TARGETS
from compactlm.lut.table import lstsq_lut, table_error, uniform_lut

log = logging.getLogger("bench.lut")
ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "bench" / "results"
TASKS = ("arc_easy", "arc_challenge", "hellaswag", "piqa", "winogrande")
DEVICE = "cpu, 1 core (2-core host shared with other jobs, wall times are inflated by contention)"
# Function-level methods in ablation order: what each adds over the one before.
METHODS = ("uniform", "lstsq", "nn-lut-init", "nn-lut")
METHOD_LABELS = {"uniform": "uniform", "lstsq": "lstsq", "nn-lut-init": "NN-LUT init", "nn-lut": "NN-LUT"}


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


def ablation_tables(method: str, entries: int) -> dict:
    """The ``entries``-entry tables of one ablation method for every target (not ``nn-lut``)."""
    if method == "uniform":
        return {f: uniform_lut(t.fn, entries, t.lo, t.hi, f) for f, t in TARGETS.items()}
    if method == "lstsq":
        return {f: lstsq_lut(t.fn, entries, t.lo, t.hi, f) for f, t in TARGETS.items()}
    if method == "nn-lut-init":
        return {f: initial_lut(f, entries, FitConfig()) for f in TARGETS}
    raise ValueError(method)


def run_functions(rows: Rows, tables16: dict) -> None:
    for entries in (8, 16, 32):
        for fn, t in TARGETS.items():
            common = dict(kind="function", fn=fn, entries=entries, range=f"[{t.lo:g}, {t.hi:g}]")
            key = f"fn/{fn}/{entries}/lstsq"
            if not rows.has(key):
                start = time.perf_counter()
                table = lstsq_lut(t.fn, entries, t.lo, t.hi, fn)
                rows.add(key, **common, method="lstsq", **table_error(table, t.fn),
                         seconds=round(time.perf_counter() - start, 2),
                         budget=f"closed form: continuous least squares on {table.meta['lstsq_points']} even points")
            key = f"fn/{fn}/{entries}/nn-lut-init"
            if not rows.has(key):
                start = time.perf_counter()
                table = initial_lut(fn, entries, FitConfig())
                rows.add(key, **common, method="nn-lut-init", **table_error(table, t.fn),
                         train_mse=table.meta["mse"], seconds=round(time.perf_counter() - start, 2),
                         budget=f"0 Adam steps (initial breakpoints, m, c by least squares), {FitConfig().samples} samples")
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
    measure("minilm/uniform", "uniform", ablation_tables("uniform", 16), "16-entry uniform tables, test split")
    measure("minilm/lstsq", "lstsq", ablation_tables("lstsq", 16),
            "16-entry least-squares tables on uniform breakpoints, test split")
    measure("minilm/nn-lut-init", "nn-lut-init", ablation_tables("nn-lut-init", 16),
            "16-entry NN-LUT tables before training, test split")
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
    for method in ("lstsq", "nn-lut-init", "uniform"):  # the ablation, same 16 entries
        if not rows.has(f"smollm2/{method}/ppl"):
            tables = ablation_tables(method, 16)
            save_luts(RESULTS / "lut-tables" / f"{method}-n16", tables)
            measure(f"smollm2/{method}/ppl", method, tables, "ppl", f"16-entry {method} tables; wiki-eval 40960 tokens, seq 512")
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
    labels = [METHOD_LABELS[m] for m in METHODS]
    lines = ["# NN-LUT benchmark", "",
             "Generated by `bench/lut/run.py` from `lut.json`. Function errors are measured on 100,001 evenly",
             "spaced points of each function's interval. Device: " + DEVICE + ".", "",
             "Ablation, same entry count in every column: `uniform` interpolates the function at N equal",
             "segments' ends; `lstsq` keeps those breakpoints and fits the knot values of the continuous",
             "piecewise-linear function by least squares; `NN-LUT init` is the network converted at its",
             "initial (curvature-placed) breakpoints with `m, c` solved by least squares, before any Adam",
             "step; `NN-LUT` is the trained network (1500 Adam steps).", "",
             "## Function level (max / mean absolute error)", "",
             "| function | range | entries | " + " | ".join(f"{x} max" for x in labels) + " | "
             + " | ".join(f"{x} mean" for x in labels) + " | NN-LUT q16 max |",
             "|---|---|---:|" + "---:|" * (2 * len(METHODS) + 1)]
    for fn in TARGETS:
        for n in (8, 16, 32):
            got = {m: next((r for r in fn_rows if r["fn"] == fn and r["entries"] == n and r["method"] == m), None)
                   for m in METHODS}
            some = next((r for r in got.values() if r), None)
            if some is None:
                continue
            def cell(r, k):
                return f"{r[k]:.2e}" if r and k in r else ""

            lines.append(f"| {fn} | {some['range']} | {n} | " + " | ".join(cell(got[m], "max_abs_err") for m in METHODS)
                         + " | " + " | ".join(cell(got[m], "mean_abs_err") for m in METHODS)
                         + f" | {cell(got['nn-lut'], 'q16_max_abs_err')} |")
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

    others = {m: ablation_tables(m, 16) for m in ("uniform", "lstsq", "nn-lut-init")}
    styles = {"nn-lut-init": ("C2:", "NN-LUT init 16"), "lstsq": ("C3-.", "lstsq 16"), "uniform": ("C1--", "uniform 16")}
    fig, axes = plt.subplots(2, len(TARGETS), figsize=(4 * len(TARGETS), 6.5), sharex="col")
    for j, (fn, t) in enumerate(TARGETS.items()):
        x = torch.linspace(t.lo, t.hi, 4001, dtype=torch.float64)
        nn_t = tables[fn]
        ax, ex = axes[0, j], axes[1, j]
        ax.plot(x, t.fn(x), "k", lw=2.5, alpha=0.35, label=fn)
        ax.plot(x, nn_t(x), "C0", lw=1, label="NN-LUT 16")
        ex.semilogy(x, (nn_t(x) - t.fn(x)).abs() + 1e-12, "C0", lw=1, label="NN-LUT 16")
        for m, (style, label) in styles.items():
            other = others[m][fn]
            ax.plot(x, other(x), style, lw=1, label=label)
            ex.semilogy(x, (other(x) - t.fn(x)).abs() + 1e-12, style, lw=1, label=label)
        bp = torch.tensor([d for d in nn_t.breakpoints if t.lo <= d <= t.hi], dtype=torch.float64)
        ax.plot(bp, nn_t(bp), "C0o", ms=3)
        ax.set_title(f"{fn} on [{t.lo:g}, {t.hi:g}]")
        ax.legend(fontsize=7)
        ex.set_ylim(1e-7, 1)
        ex.set_xlabel("x")
        ex.set_title("absolute error (16 entries)", fontsize=9)
    axes[1, 0].legend(fontsize=6)
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
    command = ("nice -n 10 env OMP_NUM_THREADS=1 COMPACTLM_THREADS=1 .venv/bin/python bench/lut/run.py "
               + " ".join(argv if argv is not None else sys.argv[1:]))
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
