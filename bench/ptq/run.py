"""PTQ benchmark on ``smollm2-135m`` (issue 3): one command for the whole grid, resumable.

Rows (see ``grid.py`` for the order): FP reference; RTN, SmoothQuant+RTN, FlexRound, LRQ (compactlm,
in ``.venv``); GPTQ, AWQ, SmoothQuant+RTN through llm-compressor (``peers_llmcompressor.py``, run in
``.venv-peers`` as a subprocess, its compressed-tensors checkpoint then loaded by compactlm's importer
and evaluated by *our* evaluator, so every number comes from the same code) × W4A16, W3A16, W4A8,
W8A8, W2A16-g64; plus an LRQ iterations sweep.

Every row: calibration = the same ``wiki`` token samples for every method (saved once to
``--calib-file``, also read by the peers), perplexity on ``wiki-eval`` (``--ppl-tokens`` tokens in
512-token windows), optional zero-shot accuracy (``--zeroshot-limit`` examples per task, arc_easy,
arc_challenge, hellaswag, piqa, winogrande), quantization wall time, peak RSS, learned parameters.
Each row runs in its own child process (a clean peak-memory measurement), is appended to
``bench/results/ptq.json`` as soon as it finishes, and ``ptq.md`` / ``ptq.png`` are rewritten. A
rerun skips finished rows; an interrupted learned row resumes from its last finished block
(``runs/bench-ptq/work/<row>``). Quantized models are kept in ``runs/bench-ptq/models/<row>`` so
``--refresh`` can re-evaluate finished rows later with a larger evaluation (more perplexity tokens,
zero-shot) without quantizing again. Sweep rows report perplexity only.

Usage (one CPU slot; two disjoint selections may run in the two slots at once; ``--cpuslot``
takes a slot per row instead, so other jobs can run between rows)::

    /work/cpuslot .venv/bin/python bench/ptq/run.py                   # whole grid
    /work/cpuslot .venv/bin/python bench/ptq/run.py --groups main --methods lrq,flexround
    .venv/bin/python bench/ptq/run.py --report                         # only rewrite ptq.md / ptq.png
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))

from grid import LEARNED, Row, grid, select  # noqa: E402
from records import RESULTS, ZEROSHOT_TASKS, append_record, read_records, row_key  # noqa: E402

log = logging.getLogger("bench.ptq")
MODEL = "smollm2-135m"
DEVICE = "cpu, 1 core (cpuslot; 2-core host shared with other jobs, wall times are inflated by contention)"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--groups", help="comma list of main,w2,sweep,extra (default: all, in priority order)")
    p.add_argument("--methods", help="comma list of methods to run (default: all)")
    p.add_argument("--exclude-methods", help="comma list of methods to skip")
    p.add_argument("--schemes", help="comma list of schemes (fp32 = the reference)")
    p.add_argument("--calib-samples", type=int, default=32)
    p.add_argument("--calib-seq-len", type=int, default=256)
    p.add_argument("--calib-file", default=None, help="default: runs/peers/calib-wiki-<N>x<L>.safetensors")
    p.add_argument("--iters", type=int, default=20, help="reconstruction iterations per block (FlexRound, LRQ)")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--rank-ratio", type=float, default=0.25)
    p.add_argument("--sweep-iters", default="10,50,100",
                   help="iterations per block of the W3A16 sweep rows (LRQ and FlexRound; 20 is the main grid)")
    p.add_argument("--ppl-tokens", type=int, default=40960)
    p.add_argument("--zeroshot-limit", type=int, default=0, help="examples per task; 0: no zero-shot")
    p.add_argument("--refresh", action="store_true",
                   help="only re-evaluate finished rows (from their saved models) whose perplexity used fewer than "
                        "--ppl-tokens tokens or whose zero-shot limit differs from --zeroshot-limit")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--results", default=str(RESULTS))
    p.add_argument("--work", default="runs/bench-ptq")
    p.add_argument("--peers-python", default=".venv-peers/bin/python")
    p.add_argument("--peers-out", default="runs/peers", help="llm-compressor checkpoints (one folder per cell)")
    p.add_argument("--cpuslot", default=None,
                   help="run each row through this slot wrapper (e.g. /work/cpuslot), releasing the slot between rows")
    p.add_argument("--report", action="store_true", help="only rewrite ptq.md and ptq.png")
    p.add_argument("--row", help=argparse.SUPPRESS)  # internal: run one row in this process
    args = p.parse_args(argv)
    if args.calib_file is None:
        args.calib_file = f"runs/peers/calib-wiki-{args.calib_samples}x{args.calib_seq_len}.safetensors"
    return args


def budget_text(row: Row, args) -> str:
    if row.method in LEARNED:
        o = learned_options(row, args)
        extra = f", rank_ratio={o['rank_ratio']}" if row.method == "lrq" else ""
        smooth = f", smoothquant alpha={o['smooth_alpha']} first" if o.get("smooth_alpha") else ""
        return f"{o['iters']} iters/block x 30 blocks, batch {o['batch_size']}x{args.calib_seq_len}, lr {o['lr']} (cosine){extra}{smooth}"
    if row.method == "fp":
        return "no quantization"
    if row.peer:
        return "llm-compressor oneshot, see peers_llmcompressor.py"
    return "one pass" + (f", alpha={row.options['alpha']}" if "alpha" in row.options else "")


def learned_options(row: Row, args) -> dict:
    o = {"iters": args.iters, "lr": args.lr, "batch_size": args.batch_size, "seed": args.seed}
    if row.method == "lrq":
        o["rank_ratio"] = args.rank_ratio
    return {**o, **row.options}


# ----------------------------------------------------------------------------- child: one row


def _threads() -> None:
    import torch

    torch.set_num_threads(int(os.environ.get("COMPACTLM_THREADS", torch.get_num_threads())))


def load_calib(args):
    from safetensors import safe_open

    path = Path(args.calib_file)
    if not path.exists():
        from peers_calib import write_calib

        from compactlm.models import load_model

        _, tok = load_model(MODEL)
        write_calib(tok, path, MODEL, "wiki", args.calib_samples, args.calib_seq_len, args.seed)
    with safe_open(str(path), "pt") as f:
        ids, meta = f.get_tensor("input_ids"), f.metadata()
    if list(ids.shape) != [args.calib_samples, args.calib_seq_len] or int(meta["seed"]) != args.seed:
        raise SystemExit(f"--calib-file {path} holds {list(ids.shape)} seed {meta['seed']}, expected "
                         f"{[args.calib_samples, args.calib_seq_len]} seed {args.seed}; remove it")
    return ids


def peer_checkpoint(row: Row, args) -> tuple[Path, dict]:
    """Run the llm-compressor peer (if its checkpoint is missing) and return its folder and meta."""
    out = Path(args.peers_out)
    folder = out / f"{row.method}-{row.scheme}"
    calib = f"wiki {args.calib_samples}x{args.calib_seq_len}"
    meta_file = folder / "peer_meta.json"
    if meta_file.is_file() and json.loads(meta_file.read_text()).get("calib") != calib:
        raise SystemExit(f"{folder} was calibrated on {json.loads(meta_file.read_text())['calib']}, not {calib}; remove it")
    if not meta_file.is_file():
        cmd = [args.peers_python, str(HERE / "peers_llmcompressor.py"), "--calib", args.calib_file,
               "--out", str(out), "--methods", row.method, "--schemes", row.scheme, "--seed", str(args.seed)]
        log.info("peer: %s", shlex.join(cmd))
        subprocess.run(cmd, check=True, cwd=ROOT)
    return folder, json.loads(meta_file.read_text())


def quantize_row(row: Row, args):
    """Return ``(model, tokenizer, fields)`` with the row's quantized model."""
    from compactlm.models import load_model

    if row.method == "fp":
        model, tok = load_model(MODEL)
        return model, tok, {"implementation": "transformers", "seconds": 0.0, "learned_params": 0}
    if row.peer:
        from compactlm.export import load_compressed_tensors

        folder, meta = peer_checkpoint(row, args)
        _, tok = load_model(MODEL)
        model = load_compressed_tensors(folder)
        return model, tok, {"implementation": meta["implementation"], "seconds": meta["seconds"],
                            "peak_mem_mb": meta["peak_mem_mb"], "learned_params": 0, "checkpoint": str(folder),
                            "peer_recipe": meta["recipe"]}

    from compactlm.api import quantize
    from compactlm.io import atomic_dir, write_json
    from compactlm.models import save_quantized

    calib = load_calib(args)
    model, tok = load_model(MODEL)
    options = dict(row.options)
    if row.method in LEARNED:
        options = learned_options(row, args)
        options["work_dir"] = str(Path(args.work) / "work" / row.slug)
    report = quantize(model, row.method, row.scheme, calib=calib, **options)
    folder = Path(args.work) / "models" / row.slug
    with atomic_dir(folder, overwrite=True) as tmp:
        save_quantized(model, tok, tmp, extra_config={"method": row.method, "scheme": row.scheme})
        write_json(tmp / "report.json", report)
    fields = {"implementation": "compactlm", "seconds": report["seconds"], "peak_mem_mb": report["peak_mem_mb"],
              "learned_params": report.get("learned_params", 0), "checkpoint": str(folder),
              "options": {k: v for k, v in report["options"].items() if k not in ("work_dir", "spill_mb")}}
    if "blocks" in report:
        fields["resumed_blocks"] = report.get("resumed_blocks", 0)
        fields["block_loss_before_sum"] = round(sum(b["loss_before"] for b in report["blocks"]), 4)
        fields["block_loss_after_sum"] = round(sum(b["loss_after"] for b in report["blocks"]), 4)
    return model, tok, fields


def wants_zeroshot(row: Row, args) -> bool:
    """Zero-shot is asked for (``--zeroshot-limit``) and the row is not a sweep row (perplexity only)."""
    return args.zeroshot_limit > 0 and row.group != "sweep"


def evaluate(model, tok, args, row: Row, ppl: bool = True, zeroshot: bool = True) -> dict:
    from compactlm.eval import perplexity
    from compactlm.eval import zeroshot as run_zeroshot

    out: dict = {}
    if ppl:
        start = time.perf_counter()
        r = perplexity(model, tok, "wiki-eval", seq_len=512, max_tokens=args.ppl_tokens)
        out.update(ppl_wiki_eval=round(r["ppl"], 4), ppl_tokens=r["tokens"], ppl_max_tokens=args.ppl_tokens,
                   ppl_seq_len=r["seq_len"],
                   eval_seconds=round(time.perf_counter() - start, 1))
    if zeroshot and wants_zeroshot(row, args):
        start = time.perf_counter()
        z = run_zeroshot(model, tok, list(ZEROSHOT_TASKS), limit=args.zeroshot_limit)
        out.update(zeroshot_avg=round(z["avg_acc"], 4), zeroshot_avg_norm=round(z["avg_acc_norm"], 4),
                   zeroshot_limit=args.zeroshot_limit, zeroshot_seconds=round(time.perf_counter() - start, 1),
                   **{f"zs_{t}": round(v["acc"], 4) for t, v in z["tasks"].items()})
    return out


def stale(row: Row, record: dict, args) -> tuple[bool, bool]:
    """``(perplexity, zero-shot)``: which evaluations of a finished row are smaller than asked."""
    # windows score all tokens but the first, so ask for what was asked, not what was scored
    ppl = record.get("ppl_max_tokens", record.get("ppl_tokens", 0)) < args.ppl_tokens
    zs = wants_zeroshot(row, args) and record.get("zeroshot_limit") != args.zeroshot_limit
    return ppl, zs


def run_row(row: Row, args, command: str) -> None:
    import torch

    _threads()
    torch.manual_seed(args.seed)
    model, tok, fields = quantize_row(row, args)
    if "peak_mem_mb" not in fields:
        from compactlm.api import peak_memory_mb

        fields["peak_mem_mb"] = round(peak_memory_mb(), 1)
    model.eval()
    record = {
        "method": row.method, "scheme": row.scheme, "variant": row.variant, "model": MODEL, **fields,
        **evaluate(model, tok, args, row),
        "calib": f"wiki {args.calib_samples}x{args.calib_seq_len}" if row.method != "fp" else "",
        "budget": budget_text(row, args), "device": DEVICE, "threads": torch.get_num_threads(),
        "seed": args.seed, "command": command,
    }
    append_record(record, Path(args.results))


def refresh_row(row: Row, record: dict, args, command: str) -> None:
    """Re-run the stale evaluations of a finished row from its saved model; keep everything else."""
    _threads()
    from compactlm.models import load_model

    if row.method == "fp":
        model, tok = load_model(MODEL)
    elif row.peer:
        from compactlm.export import load_compressed_tensors

        _, tok = load_model(MODEL)
        model = load_compressed_tensors(record["checkpoint"])
    else:
        model, tok = load_model(record["checkpoint"], backend="reference")  # the fake-quant path the rows were scored on
    model.eval()
    ppl, zs = stale(row, record, args)
    new = evaluate(model, tok, args, row, ppl=ppl, zeroshot=zs)
    append_record({**record, **new, "eval_command": command,
                   "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}, Path(args.results))


# ----------------------------------------------------------------------------- parent


def main(argv=None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    from report import write_report

    results = Path(args.results)
    rows = grid(tuple(int(x) for x in args.sweep_iters.split(",") if x))
    if args.report:
        write_report(read_records(results), results)
        return
    if args.row:
        row = next(r for r in rows if r.key == args.row)
        if args.refresh:
            refresh_row(row, next(r for r in read_records(results) if row_key(r) == row.key), args,
                        os.environ.get("PTQ_BENCH_COMMAND", ""))
        else:
            run_row(row, args, os.environ.get("PTQ_BENCH_COMMAND", ""))
        return

    command = "python bench/ptq/run.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    todo = select(rows, args.groups, args.methods, args.schemes, args.exclude_methods)
    for row in todo:
        done = {row_key(r): r for r in read_records(results)}
        if args.refresh:
            rec = done.get(row.key)
            if rec is None or not any(stale(row, rec, args)):
                continue
        elif row.key in done:
            log.info("skip %s (done)", row.key)
            continue
        log.info("row %s", row.key)
        child = ([args.cpuslot] if args.cpuslot else []) + [sys.executable, str(Path(__file__).resolve()), *(argv if argv is not None else sys.argv[1:]),
                 "--row", row.key]
        t0 = time.perf_counter()
        rc = subprocess.run(child, cwd=ROOT, env={**os.environ, "PTQ_BENCH_COMMAND": command}).returncode
        log.info("row %s finished rc=%d in %.0fs", row.key, rc, time.perf_counter() - t0)
        write_report(read_records(results), results)


if __name__ == "__main__":
    main()
