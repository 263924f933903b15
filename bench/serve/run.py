"""Real-inference benchmark on ``smollm2-135m`` (issue 11): size, memory, speed and accuracy of the
deployed path, FP32 / BF16 against RTN, FlexRound and LRQ grids. Resumable; one command.

Per row (one child process per row, so resident memory is measured in a clean process):

1. quantize in-process (calibration ``wiki`` 32x256, seed 0, for every method), perplexity on
   ``wiki-eval`` through the fake-quant reference path (fp32, cached dequantized weights), save the
   run directory (packed codes, bf16 unquantized tensors) into ``runs/bench-serve/<row>``;
2. perplexity of the saved run loaded as users get it (``load_model(run)``: bf16, real kernels,
   decode attention) on the same tokens;
3. ``compactlm speed`` in a fresh process at 1 and 2 threads: prefill of 512 tokens, 64 greedy
   decode tokens, ``--reps`` repetitions (median and spread), resident memory after load and a first
   forward, tensor bytes, bytes on disk.

Rows are appended to ``bench/results/serve.json`` (one record per row x threads) as they finish;
``serve.md`` and ``serve.png`` are rewritten. A rerun skips finished records; quantized run
directories and per-row perplexities (``runs/bench-serve/<row>/bench_ppl.json``) are reused.

Usage::

    .venv/bin/python bench/serve/run.py                 # every row
    .venv/bin/python bench/serve/run.py --rows rtn-w4a16,fp32
    .venv/bin/python bench/serve/run.py --report        # only rewrite serve.md / serve.png

Speed needs an otherwise idle machine: run nothing else meanwhile (2 threads use both cores).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
RESULTS = ROOT / "bench" / "results" / "serve.json"
RUNS = ROOT / "runs" / "bench-serve"
MODEL = "smollm2-135m"
PY = sys.executable


@dataclass(frozen=True)
class Row:
    name: str
    method: str  # fp | rtn | flexround | lrq
    scheme: str  # fp32 | bf16 | a compactlm scheme
    variant: str = ""  # "" | "keep-codes" | "head8" | "compile" (the deployed path differs, the grid not)
    options: dict = field(default_factory=dict)


LEARNED = {"iters": 20, "lr": 3e-3, "batch_size": 2, "seed": 0}
ROWS = [
    Row("fp32", "fp", "fp32"),
    Row("bf16", "fp", "bf16"),
    Row("rtn-w4a16", "rtn", "w4a16"),
    Row("rtn-w4a16-g64", "rtn", "w4a16-g64"),
    Row("rtn-w4a16-g32", "rtn", "w4a16-g32"),
    Row("rtn-w3a16", "rtn", "w3a16"),
    Row("rtn-w8a16", "rtn", "w8a16"),
    Row("rtn-w4a16-keep-codes", "rtn", "w4a16", "keep-codes"),
    Row("flexround-w4a16", "flexround", "w4a16", options=LEARNED),
    Row("lrq-w4a16", "lrq", "w4a16", options={**LEARNED, "rank_ratio": 0.25}),
    Row("flexround-w4a16-g64", "flexround", "w4a16-g64", options=LEARNED),
    Row("lrq-w4a16-g64", "lrq", "w4a16-g64", options={**LEARNED, "rank_ratio": 0.25}),
    Row("rtn-w4a16-head8", "rtn", "w4a16", "head8"),
    Row("rtn-w4a16-compile", "rtn", "w4a16", "compile"),
    Row("fp32-compile", "fp", "fp32", "compile"),
    Row("bf16-compile", "fp", "bf16", "compile"),
    Row("rtn-w4a16-head8-compile", "rtn", "w4a16", "head8+compile"),
]


def base_name(row: Row) -> str:
    """The row whose quantized model (and reference perplexity) a variant row reuses."""
    return row.name[: -len(row.variant) - 1] if row.variant else row.name


def cpu_info() -> dict:
    info = {"cpu": platform.processor() or platform.machine(), "cpu_flags": ""}
    try:
        text = Path("/proc/cpuinfo").read_text()
        for line in text.splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                keep = [f for f in ("avx2", "fma", "f16c", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_bf16")
                        if f in flags]
                info["cpu_flags"] = " ".join(keep)
                break
    except OSError:
        pass
    info["cores"] = os.cpu_count()
    return info


def read_records() -> list[dict]:
    return json.loads(RESULTS.read_text()) if RESULTS.is_file() else []


def write_records(rows: list[dict]) -> None:
    tmp = RESULTS.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(rows, indent=1) + "\n")
    os.replace(tmp, RESULTS)


def append(record: dict) -> None:
    rows = [r for r in read_records() if (r["row"], r["threads"]) != (record["row"], record["threads"])]
    write_records(rows + [record])


# ----------------------------------------------------------------------------- child: quality of one row


def quality(row: Row, args) -> dict:
    """Quantize (or load FP), perplexity through the reference path, save, perplexity through the kernel path."""
    import torch

    from compactlm.api import quantize
    from compactlm.data import token_samples
    from compactlm.eval import perplexity
    from compactlm.io import atomic_dir, write_json
    from compactlm.models import load_model, save_quantized

    torch.set_num_threads(args.ppl_threads)
    out = RUNS / row.name
    cached = out / "bench_ppl.json"
    if cached.is_file():
        return json.loads(cached.read_text())
    fields: dict = {}
    base = RUNS / base_name(row)
    if row.variant == "compile" and (base / "bench_ppl.json").is_file():
        fields = dict(json.loads((base / "bench_ppl.json").read_text()))  # same numerics as the base row
    elif row.method == "fp":
        dtype = torch.float32 if row.scheme == "fp32" else torch.bfloat16
        model, tok = load_model(MODEL, dtype=dtype)
        t0 = time.perf_counter()
        fields["ppl_reference"] = perplexity(model, tok, "wiki-eval", max_tokens=args.ppl_tokens)["ppl"]
        fields["ppl_seconds"] = round(time.perf_counter() - t0, 1)
        fields["ppl_kernel"] = None
    else:
        if row.variant and (base / "bench_ppl.json").is_file():
            base_fields = json.loads((base / "bench_ppl.json").read_text())
            fields = {k: base_fields[k] for k in ("quant_seconds", "learned_params", "ppl_reference", "ppl_seconds")
                      if k in base_fields}
        else:
            model, tok = load_model(MODEL)
            calib = token_samples(tok, "wiki", args.calib_samples, args.calib_seq_len, seed=0)
            report = quantize(model, row.method, row.scheme, calib=calib, **row.options)
            fields["quant_seconds"] = report["seconds"]
            fields["learned_params"] = report.get("learned_params", 0)
            t0 = time.perf_counter()
            fields["ppl_reference"] = perplexity(model, tok, "wiki-eval", max_tokens=args.ppl_tokens)["ppl"]
            fields["ppl_seconds"] = round(time.perf_counter() - t0, 1)
            with atomic_dir(base, overwrite=True) as tmp:
                save_quantized(model, tok, tmp, extra_config={"method": row.method, "scheme": row.scheme})
            del model
        from compactlm.serve import prepare_for_inference

        model, tok = load_model(str(base), dtype=torch.bfloat16, backend="reference")  # packed once, below
        prepare_for_inference(model, torch.bfloat16, torch.device("cpu"), keep_codes=row.variant == "keep-codes",
                              head_int8="head8" in row.variant)
        t0 = time.perf_counter()
        fields["ppl_kernel"] = perplexity(model, tok, "wiki-eval", max_tokens=args.ppl_tokens)["ppl"]
        fields["ppl_kernel_seconds"] = round(time.perf_counter() - t0, 1)
        fields["ppl_rel_diff"] = fields["ppl_kernel"] / fields["ppl_reference"] - 1
    fields["ppl_tokens_asked"] = args.ppl_tokens
    out.mkdir(parents=True, exist_ok=True)
    write_json(RUNS / row.name / "bench_ppl.json", fields)
    return fields


def child(args) -> int:
    row = next(r for r in ROWS if r.name == args.child)
    print(json.dumps(quality(row, args)))
    return 0


# ----------------------------------------------------------------------------- parent


def speed_cmd(row: Row, threads: int, args, out_json: Path) -> list[str]:
    model = MODEL if row.method == "fp" else str(RUNS / base_name(row))
    cmd = [str(ROOT / ".venv" / "bin" / "compactlm"), "speed", "--model", model, "--threads", str(threads),
           "--reps", str(args.reps), "--prompt-tokens", "512", "--new-tokens", "64", "--no-progress",
           "--out", str(out_json)]
    if row.method == "fp":
        cmd += ["--dtype", "float32" if row.scheme == "fp32" else "bfloat16"]
    if row.variant == "keep-codes":
        cmd += ["--keep-codes"]
    if "head8" in row.variant:
        cmd += ["--head-int8"]
    if "compile" in row.variant:
        cmd += ["--compile"]
    return cmd


def run_row(row: Row, args, done: set) -> None:
    todo = [t for t in args.threads if (row.name, t) not in done]
    if not todo:
        return
    print(f"[{row.name}] quality", flush=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.ppl_threads)}
    cmd = [PY, __file__, "--child", row.name, "--ppl-tokens", str(args.ppl_tokens), "--ppl-threads", str(args.ppl_threads),
           "--calib-samples", str(args.calib_samples), "--calib-seq-len", str(args.calib_seq_len)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-3000:])
        raise SystemExit(f"[{row.name}] quality step failed")
    fields = json.loads(proc.stdout.strip().splitlines()[-1])
    info = cpu_info()
    for threads in todo:
        out_json = RUNS / f"speed-{row.name}-t{threads}.json"
        cmd = speed_cmd(row, threads, args, out_json)
        print(f"[{row.name}] speed, {threads} thread(s)", flush=True)
        p = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": str(threads)}, capture_output=True, text=True)
        if p.returncode != 0:
            sys.stderr.write(p.stderr[-3000:])
            raise SystemExit(f"[{row.name}] speed failed")
        speed = json.loads(out_json.read_text())
        budget = "one pass" if row.method in ("fp", "rtn") else (
            f"{row.options['iters']} iters/block x 30 blocks, batch {row.options['batch_size']}x{args.calib_seq_len}, "
            f"lr {row.options['lr']}" + (f", rank_ratio {row.options['rank_ratio']}" if "rank_ratio" in row.options else ""))
        record = {
            "row": row.name, "method": row.method, "scheme": row.scheme, "variant": row.variant, "model": MODEL,
            "threads": threads, **{k: speed[k] for k in speed if k not in ("model",)}, **fields,
            "calib": f"wiki {args.calib_samples}x{args.calib_seq_len}" if row.method not in ("fp",) else None,
            "budget": budget, "seed": 0, "device": f"cpu ({info['cpu']}, {info['cpu_flags']}, {info['cores']} cores)",
            **info, "command": f".venv/bin/python bench/serve/run.py --rows {row.name}",
            "speed_command": " ".join(shlex.quote(c) for c in cmd).replace(str(ROOT) + "/", ""),
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        append(record)
        print(f"[{row.name}] t{threads}: decode {speed['decode_tok_s']:.1f} tok/s, prefill {speed['prefill_tok_s']:.0f} "
              f"tok/s, rss model {speed['rss_model_mb']} MB, disk {speed['disk_mb']} MB", flush=True)
    from report import write_report

    write_report(read_records())


INTERLEAVED = ROOT / "bench" / "results" / "serve-interleaved.json"


def interleave(names: list[str], rounds: int, args) -> None:
    """Speed of ``names`` measured in alternation (1 thread), ``rounds`` times: ratios between rows
    measured minutes apart on a shared host drift with its load; alternating them cancels the drift."""
    rows = {r.name: r for r in ROWS}
    records = json.loads(INTERLEAVED.read_text()) if INTERLEAVED.is_file() else []
    for k in range(rounds):
        for name in names:
            row = rows[name]
            out_json = RUNS / f"interleaved-{name}-r{k}.json"
            cmd = speed_cmd(row, 1, args, out_json)
            print(f"[interleaved r{k}] {name}", flush=True)
            subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, check=True)
            speed = json.loads(out_json.read_text())
            records.append({"row": name, "round": k, "threads": 1, **{x: speed[x] for x in (
                "decode_tok_s", "decode_tok_s_min", "decode_tok_s_max", "prefill_tok_s", "ttft_ms", "rss_model_mb",
                "disk_mb", "reps")}, "speed_command": " ".join(cmd).replace(str(ROOT) + "/", ""),
                "command": f".venv/bin/python bench/serve/run.py --interleave {','.join(names)} --rounds {rounds} --reps {args.reps}",
                "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
            tmp = INTERLEAVED.with_suffix(".json.tmp")
            tmp.write_text(json.dumps(records, indent=1) + "\n")
            os.replace(tmp, INTERLEAVED)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", help="comma list of row names (default: all): " + ", ".join(r.name for r in ROWS))
    p.add_argument("--threads", default="1,2", help="thread counts for speed (default: %(default)s)")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--ppl-tokens", type=int, default=16384)
    p.add_argument("--ppl-threads", type=int, default=2)
    p.add_argument("--calib-samples", type=int, default=32)
    p.add_argument("--calib-seq-len", type=int, default=256)
    p.add_argument("--report", action="store_true", help="only rewrite serve.md / serve.png")
    p.add_argument("--interleave", help="comma list of rows to time in alternation (1 thread) for drift-free ratios")
    p.add_argument("--rounds", type=int, default=2, help="rounds of --interleave (default: %(default)s)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.threads = [int(t) for t in str(args.threads).split(",")]
    sys.path.insert(0, str(HERE))
    if args.child:
        return child(args)
    if args.interleave:
        interleave(args.interleave.split(","), args.rounds, args)
    if args.report or args.interleave:
        from report import write_report

        write_report(read_records())
        return 0
    names = set(args.rows.split(",")) if args.rows else None
    unknown = (names or set()) - {r.name for r in ROWS}
    if unknown:
        raise SystemExit(f"--rows: unknown {sorted(unknown)}; known: {', '.join(r.name for r in ROWS)}")
    done = {(r["row"], r["threads"]) for r in read_records()}
    for row in ROWS:
        if names is None or row.name in names:
            run_row(row, args, done)
    return 0


if __name__ == "__main__":
    sys.exit(main())
