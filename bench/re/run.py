"""Triple-extraction benchmark (issue 17): seen vs unseen F1 of the span extractor, with and without the
entity-swap training augmentation, on the standard / sifted / rearranged splits, and compressed.

    OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python bench/re/run.py --seeds 0,1,2

Rows (priority order; ``--only`` filters by substring of ``method|scheme|variant``):

* ``fp|fp32|standard-base-s<seed>`` / ``standard-aug1-s<seed>``: ``compactlm re train`` on the
  standard split of ``wikidata-distant`` without / with ``--augment-train 1.0``, every seed;
* ``rtn|w4a16|standard-aug1-s<seed>`` (and ``w4a16-g32`` for the first seed, and the baseline's):
  ``compactlm re quantize`` of that run (weight-only RTN of the encoder's block linears; heads FP32);
* ``pruned|fp32-l3|standard-aug1-s0``: a 3-of-6-layer depth-pruned student of the augmented seed-0
  extractor, fine-tuned with the same data, budget and augmentation (``re train --model <run>
  --keep-layers 3``);
* ``fp|fp32|sifted-*`` and ``rearranged-*`` (unseen share 0.5): the other splits, first seed only
  (both baselines, then both augmented rows; then RTN of the other seeds' baselines).

Every trained row has the same budget (``--steps``, batch, LR; selection on validation every
``--eval-every`` steps), so the augmented rows see the same number of sentences as the baseline
(fewer passes over the original ones). Each model is scored on ``test`` and ``test_augmented``
(by ``re train`` itself; RTN rows by ``compactlm re eval --json``). Resumable: a row already in ``bench/results/re.json`` is skipped; a
finished run directory is re-evaluated rather than retrained; an interrupted ``re train`` resumes
from its ``<out>.ckpt/``. Each finished row is appended at once (atomic, locked:
``bench/ptq/records.py``), then ``re.md`` / ``re.png`` are rewritten (``bench/re/report.py``).
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
from typing import Callable

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench" / "ptq"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from records import append_record, read_records, row_key  # noqa: E402
from report import write_report  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "re.json"
TESTS = ("test", "test_augmented")
log = logging.getLogger("bench.re")


def plan(seeds: list[int], ratio: float) -> list[dict]:
    """The rows in priority order: ``{method, scheme, variant, split, augment, seed, source?}``."""
    aug = f"aug{ratio:g}"

    def fp(split, kind, seed):
        return {"method": "fp", "scheme": "fp32", "variant": f"{split}-{kind}-s{seed}", "split": split,
                "augment": ratio if kind != "base" else 0.0, "seed": seed}

    def rtn(scheme, kind, seed):
        return {"method": "rtn", "scheme": scheme, "variant": f"standard-{kind}-s{seed}", "split": "standard",
                "augment": ratio if kind != "base" else 0.0, "seed": seed, "source": f"standard-{kind}-s{seed}"}

    first, rest = seeds[0], seeds[1:]
    out = [fp("standard", "base", first), fp("standard", aug, first),
           rtn("w4a16", aug, first), rtn("w4a16-g32", aug, first), rtn("w4a16", "base", first)]
    for s in rest:
        out += [fp("standard", "base", s), fp("standard", aug, s)]
    out += [rtn("w4a16", aug, s) for s in rest]
    out.append({"method": "pruned", "scheme": "fp32-l3", "variant": f"standard-{aug}-s{first}", "split": "standard",
                "augment": ratio, "seed": first, "source": f"standard-{aug}-s{first}", "layers": 3})
    out += [fp(split, "base", first) for split in ("sifted", "rearranged")]
    out += [fp(split, aug, first) for split in ("sifted", "rearranged")]
    out += [rtn("w4a16", "base", s) for s in rest]
    # the best learned method (FlexRound, the PTQ benchmark's) beside RTN, on every augmented seed and the baseline
    out += [dict(rtn("w4a16", kind, s), method="flexround") for kind, s in ((aug, first), ("base", first),
                                                                             *((aug, s) for s in rest))]
    # the augmented rows at twice the steps: as many passes over the original sentences as the baseline
    out += [dict(fp("standard", aug, s), variant=f"standard-{aug}-x2-s{s}", steps_factor=2) for s in seeds]
    # and the baseline at the same longer budget (equal steps again, at 2x)
    out += [dict(fp("standard", "base", s), variant=f"standard-base-x2-s{s}", steps_factor=2) for s in seeds]
    return out


def _run(cmd: list[str], env: dict) -> tuple[str, float]:
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{tail}")
    return proc.stdout, time.perf_counter() - start


def _cmdline(cmd: list[str]) -> str:
    return " ".join(["compactlm", *(shlex.quote(c) for c in cmd[1:])])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="wikidata-distant")
    p.add_argument("--model", default="minilm-l6")
    p.add_argument("--steps", type=int, default=180)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--eval-every", type=int, default=60)
    p.add_argument("--ptq-iters", type=int, default=200, help="iterations per block of the learned quantization rows")
    p.add_argument("--augment", type=float, default=1.0, help="--augment-train ratio of the augmented rows")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--only", default=None, help="comma-separated substrings of method|scheme|variant")
    p.add_argument("--runs", default="runs/re", help="where the run directories go")
    p.add_argument("--results", default=str(RESULTS))
    p.add_argument("--device", default="auto")
    p.add_argument("--report-only", action="store_true", help="rewrite re.md / re.png from the JSON and stop")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    results = Path(args.results)
    if args.report_only:
        write_report(read_records(results), results)
        return 0
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
           "COMPACTLM_THREADS": os.environ.get("COMPACTLM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))}
    threads = env["COMPACTLM_THREADS"]
    import torch

    device = (torch.cuda.get_device_name() if torch.cuda.is_available() and args.device != "cpu"
              else f"cpu-{threads}thread (2-core host, shared)")
    def budget(steps: int) -> str:
        return (f"{steps} steps x batch {args.batch_size}, lr {args.lr}, warmup 0.1, max_length 128, "
                f"validation F1 every {args.eval_every} steps selects the step and the relation threshold")
    bench_cmd = "python bench/re/run.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    seeds = [int(s) for s in args.seeds.split(",")]
    filters = args.only.split(",") if args.only else None
    runs = Path(args.runs)
    cli = [str(Path(sys.executable).parent / "compactlm")]  # the console script of this environment
    for row in plan(seeds, args.augment):
        key = row_key(row)
        if filters and not any(f in key for f in filters):
            continue
        if key in {row_key(r) for r in read_records(results)}:
            log.info("skip %s (done)", key)
            continue
        log.info("run %s", key)
        try:
            run_row(row, args, cli, env, runs, results, device, budget, bench_cmd)
        except (RuntimeError, OSError, KeyError) as e:  # a failed row (and the rows built on it) is left for a rerun
            log.error("%s failed: %s", key, e)
    return 0


def run_row(row: dict, args, cli: list[str], env: dict, runs: Path, results: Path, device: str,
            budget: Callable[[int], str], bench_cmd: str) -> None:
    """Train / quantize, evaluate and append one row."""
    key = row_key(row)
    steps = args.steps * row.get("steps_factor", 1)  # trained rows
    load_start = os.getloadavg()
    start = time.perf_counter()
    record = dict(row)
    commands = []
    if row["method"] in ("fp", "pruned"):
        name = row["variant"] if row["method"] == "fp" else f"{row['variant']}-l{row['layers']}"
        out = runs / name
        model = str(runs / row["source"]) if row["method"] == "pruned" else args.model
        cmd = [*cli, "re", "train", "--data", args.data, "--split", row["split"], "--model", model,
               "--steps", str(steps), "--batch-size", str(args.batch_size), "--lr", str(args.lr),
               "--eval-every", str(args.eval_every), "--seed", str(row["seed"]), "--device", args.device,
               "--no-progress", "--out", str(out)]
        if row["split"] == "rearranged":
            cmd += ["--unseen-share", "0.5"]
        if row["augment"]:
            cmd += ["--augment-train", f"{row['augment']:g}"]
        if row["method"] == "pruned":
            cmd += ["--keep-layers", str(row["layers"])]
        if not (out / "report.json").is_file():
            _, train_s = _run(cmd, env)
            record["train_wall_seconds"] = round(train_s, 1)
        commands.append(_cmdline(cmd))
        rep = json.loads((out / "report.json").read_text())
        record.update(selected_step=rep["selected_step"], steps=rep["steps"], validation_f1=rep["validation_f1"],
                      validation_curve=rep["validation_curve"], train_sentences=rep["train_sentences"],
                      train_seconds=rep["train_seconds"], loss_first=rep["loss_first"], loss_last=rep["loss_last"],
                      data_stats={k: rep["data"].get(k) for k in ("summary", "augmented_test", "augment_train")})
    else:
        suffix = "" if row["method"] == "rtn" else f"-{row['method']}"
        out = runs / f"{row['source']}-{row['scheme']}{suffix}"
        cmd = [*cli, "re", "quantize", "--run", str(runs / row["source"]), "--scheme", row["scheme"], "--out", str(out)]
        if row["method"] != "rtn":
            cmd += ["--method", row["method"], "--iters", str(args.ptq_iters), "--seed", str(row["seed"])]
        if not (out / "report.json").is_file():
            _run(cmd, env)
        commands.append(_cmdline(cmd))
        rep = json.loads((out / "report.json").read_text())
        record.update(quantized_weights=rep.get("quantized_weights"), quantize_seconds=rep.get("seconds"),
                      calib=rep.get("calib"), block_losses=rep.get("block_losses"))
    for test in TESTS:
        if row["method"] in ("fp", "pruned"):  # scored by re train itself (the same evaluate_extractor as re eval)
            record[test] = {k: rep[test][k] for k in ("seen", "unseen", "all", "unseen_share", "sentences")}
            record[f"{test}_eval_seconds"] = rep[test]["seconds"]
            continue
        ecmd = [*cli, "re", "eval", "--run", str(out), "--test", test, "--device", args.device, "--json"]
        stdout, eval_s = _run(ecmd, env)
        scores = json.loads(stdout)
        record[test] = {k: scores[k] for k in ("seen", "unseen", "all", "unseen_share", "sentences")}
        record[f"{test}_eval_seconds"] = round(eval_s, 1)
        commands.append(_cmdline(ecmd))
    meta = json.loads((out / "extractor.json").read_text())
    record.update(model=args.model, layers=meta["layers"], run=str(out), data=args.data,
                  seconds=round(time.perf_counter() - start, 1), device=device,
                  budget=(budget(steps) if row["method"] in ("fp", "pruned") else
                          f"no training (RTN of {row['source']})" if row["method"] == "rtn" else
                          f"{args.ptq_iters} iters/block on 64 x 64 validation tokens ({row['method']} of {row['source']})"),
                  loadavg_start=[round(x, 2) for x in load_start], loadavg_end=[round(x, 2) for x in os.getloadavg()],
                  command=" && ".join(commands), bench_command=bench_cmd)
    append_record(record, results)
    t = record["test"]
    log.info("%s: test seen F1 %.4f unseen %.4f; aug-test F1 %.4f (%.0f s)", key, t["seen"]["f1"],
             t["unseen"]["f1"], record["test_augmented"]["all"]["f1"], record["seconds"])
    write_report(read_records(results), results)


if __name__ == "__main__":
    raise SystemExit(main())
