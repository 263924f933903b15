"""Distillation benchmark (issue 15): smollm2-135m teacher, depth-pruned student, every method at one budget.

Rows (``--rows``, in this order by default):

* ``teacher`` — the teacher itself, evaluated with the same protocol (no training);
* ``teacher-sft`` (only with ``--teacher-sft-steps N``) — the teacher fine-tuned (SFT, all its blocks)
  for N steps on the training tasks, as the PromptKD authors fine-tune theirs; every row after it
  then uses this fine-tuned teacher (and the student is pruned from it);
* ``sft-init`` — the depth-pruned student after the SFT warm-up (``--sft-steps``); every method
  below starts from it;
* ``sft`` (SFT only: ``--steps`` more SFT steps), ``kd``, ``rkl``, ``seqkd``, ``gkd``, ``distillm``,
  ``promptkd`` — ``--steps`` steps each from ``sft-init``, same data, batch, LR and seed.
* ``promptkd-w4`` / ``kd-w4`` (only when listed) — the same from ``sft-init`` with the student
  fake-quantized W4 (``w4a16-g32``, QAT while distilling).

Each row runs ``compactlm distill`` as a subprocess (the exact command is recorded), so each row
resumes from its own checkpoint when interrupted; finished rows are appended to
``bench/results/<name>.json`` as flat records (row, method, command, seed, device, budget, ROUGE-L
seen / unseen sampled mean ± std over the sampling seeds and greedy, wall times, parameters) and
``<name>.md`` / ``<name>.png`` are rewritten. A rerun skips finished rows of the same budget tag.

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python bench/distill/run.py --tag cpu-tiny     # the tiny one-core grid
    .venv/bin/python bench/distill/run.py --report                             # rewrite md/png only
    bash bench/distill/gpu.sh                                                  # the larger grid (GPU)
"""

from __future__ import annotations

import argparse
import fcntl
import json
import logging
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "bench" / "results"
METHOD_ROWS = ("sft", "kd", "rkl", "seqkd", "gkd", "distillm", "promptkd")
ROWS = ("teacher", "teacher-sft", "sft-init") + METHOD_ROWS
QUANT_ROWS = {"promptkd-w4": "promptkd", "kd-w4": "kd"}
W4 = "w4a16-g32"
log = logging.getLogger("bench.distill")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", default=None, help="rows to run, in order (also promptkd-w4, kd-w4); default: all of "
                   "ROWS (teacher-sft only with --teacher-sft-steps)")
    p.add_argument("--tag", default="cpu-tiny", help="budget label; rows are keyed by (tag, row)")
    p.add_argument("--name", default="distill", help="results file stem under bench/results")
    p.add_argument("--teacher", default="smollm2-135m")
    p.add_argument("--student-layers", type=int, default=20)
    p.add_argument("--teacher-sft-steps", type=int, default=0,
                   help="fine-tune the teacher on the training tasks first (row teacher-sft); 0: use it as it is")
    p.add_argument("--teacher-layers", type=int, default=30, help="block count of --teacher (smollm2-135m: 30), "
                   "kept whole by the teacher-sft row")
    p.add_argument("--data", default="olmo-gen:naturalqs_open,jeopardy,trivia_qa")
    p.add_argument("--unseen-tasks", default="trivia_qa")
    p.add_argument("--samples", type=int, default=64)
    p.add_argument("--seq-len", type=int, default=96)
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--sft-steps", type=int, default=30)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--sft-lr", type=float, default=3e-4)
    p.add_argument("--eval-samples", type=int, default=8)
    p.add_argument("--eval-seeds", default="0,1,2")
    p.add_argument("--ppl-tokens", type=int, default=0, help="wiki-eval tokens for each student's perplexity (0: skip)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--runs", default=str(ROOT / "runs" / "bench-distill"))
    p.add_argument("--report", action="store_true", help="only rewrite the markdown and the plot")
    a = p.parse_args(argv)
    if a.teacher_sft_steps < 0:
        p.error("--teacher-sft-steps: expected a step count >= 0")
    if a.rows is None:
        a.rows = ",".join(r for r in ROWS if r != "teacher-sft" or a.teacher_sft_steps)
    return a


def _paths(name: str) -> tuple[Path, Path, Path]:
    return RESULTS / f"{name}.json", RESULTS / f"{name}.md", RESULTS / f"{name}.png"


def load_rows(name: str) -> list[dict]:
    path = _paths(name)[0]
    return json.loads(path.read_text()) if path.exists() else []


def add_row(name: str, rec: dict) -> None:
    """Replace the (tag, row) record with ``rec`` and write the file atomically; an exclusive ``flock``
    on the results folder serialises the read-modify-write, so two lanes can share one file."""
    path = _paths(name)[0]
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = os.open(path.parent, os.O_RDONLY)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        rows = [r for r in load_rows(name) if not (r["tag"] == rec["tag"] and r["row"] == rec["row"])] + [rec]
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(rows, indent=1) + "\n")
        os.replace(tmp, path)
        write_report(name)
    finally:
        os.close(lock)


def _budget(a) -> dict:
    return {"teacher": a.teacher, "student_layers": a.student_layers, "data": a.data, "unseen_tasks": a.unseen_tasks,
            "samples": a.samples, "seq_len": a.seq_len, "max_new_tokens": a.max_new_tokens, "sft_steps": a.sft_steps,
            "steps": a.steps, "batch_size": a.batch_size, "lr": a.lr, "sft_lr": a.sft_lr,
            "eval_samples": a.eval_samples, "eval_seeds": a.eval_seeds, "ppl_tokens": a.ppl_tokens,
            "teacher_sft_steps": a.teacher_sft_steps}


def _common(a) -> list[str]:
    return ["--data", a.data, "--unseen-tasks", a.unseen_tasks, "--samples", str(a.samples), "--seq-len", str(a.seq_len),
            "--max-new-tokens", str(a.max_new_tokens), "--batch-size", str(a.batch_size), "--seed", str(a.seed),
            "--eval-samples", str(a.eval_samples), "--eval-seeds", a.eval_seeds, "--device", a.device,
            "--no-progress"] + (["--ppl-tokens", str(a.ppl_tokens)] if a.ppl_tokens else [])


def distill_teacher(a) -> str:
    """The teacher the students learn from: the fine-tuned one when ``--teacher-sft-steps`` is set."""
    return str(Path(a.runs) / a.tag / "teacher-sft") if a.teacher_sft_steps else a.teacher


def command(a, row: str) -> list[str]:
    runs = Path(a.runs) / a.tag
    if row == "teacher-sft":
        return [sys.executable, "-m", "compactlm.cli", "distill", "--teacher", a.teacher,
                "--student-layers", str(a.teacher_layers), "--loss", "sft", "--steps", str(a.teacher_sft_steps),
                "--lr", str(a.sft_lr), "--out", str(runs / row)] + _common(a)
    base = [sys.executable, "-m", "compactlm.cli", "distill", "--teacher", distill_teacher(a)]
    if row == "sft-init":
        return base + ["--student-layers", str(a.student_layers), "--loss", "sft", "--steps", str(a.sft_steps),
                       "--lr", str(a.sft_lr), "--out", str(runs / row)] + _common(a)
    method = QUANT_ROWS.get(row, row)
    extra = ["--student-scheme", W4] if row in QUANT_ROWS else []
    return base + ["--student", str(runs / "sft-init"), "--loss", method, "--steps", str(a.steps), "--lr", str(a.lr),
                   "--out", str(runs / row)] + extra + _common(a)


def _device_name(device: str) -> str:
    import torch

    if device in ("auto", "cuda") and torch.cuda.is_available() or device.startswith("cuda"):
        return torch.cuda.get_device_name(0)
    return f"cpu ({platform.processor() or platform.machine()}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '?')})"


def _record(a, row: str, report: dict, cmd: list[str], wall: float) -> dict:
    s = report.get("summary") or {}
    ev = report.get("eval") or {}
    rec = {"tag": a.tag, "row": row, "method": report.get("method", row), "seed": a.seed, "device": _device_name(a.device),
           "command": " ".join(shlex.quote(c) for c in cmd), "budget": _budget(a),
           "steps": report.get("steps", 0), "seconds_train": report.get("seconds_train", 0.0),
           "seconds_eval": report.get("seconds_eval"), "seconds_wall": round(wall, 1),
           "student_params": report.get("params", {}).get("student"), "prompt_params": report.get("params", {}).get("prompt", 0),
           "prompt_fraction_of_teacher": report.get("params", {}).get("prompt_fraction_of_teacher", 0.0),
           "student_scheme": report.get("student_scheme"),
           "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    for k in ("rougeL_seen", "rougeL_seen_std", "rougeL_seen_greedy", "rougeL_unseen", "rougeL_unseen_std",
              "rougeL_unseen_greedy"):
        rec[k] = s.get(k)
    tasks = (ev.get("sampled") or {}).get("tasks") or {}
    rec["wiki_eval_ppl"] = report.get("wiki_eval_ppl")
    rec["per_task"] = {t: round(v["mean"], 2) for t, v in tasks.items()}
    hist = report.get("history") or []
    if hist:
        rec["loss_first"], rec["loss_last"] = round(hist[0]["loss"], 4), round(hist[-1]["loss"], 4)
    return rec


def teacher_report(a) -> dict:
    """The teacher evaluated with the same data split and protocol as the students (in-process)."""
    import torch

    from compactlm.distill.generative import DistillConfig, _load, prepare_data, summarize
    from compactlm.devices import choose_device
    from compactlm.eval.generation import evaluate_rouge

    torch.manual_seed(a.seed)
    cfg = DistillConfig(teacher=a.teacher, loss="sft", data=a.data, unseen_tasks=a.unseen_tasks, samples=a.samples,
                        seq_len=a.seq_len, max_new_tokens=a.max_new_tokens, eval_samples=a.eval_samples,
                        eval_seeds=a.eval_seeds, seed=a.seed, device=a.device)
    cfg.validate()
    model, tok = _load(a.teacher, choose_device(a.device))
    splits, _ = prepare_data(cfg, tok)
    t0 = time.perf_counter()
    ev = evaluate_rouge(model, tok, splits.eval, splits.seen, cfg.eval_seeds, True, cfg.max_new_tokens)
    n = sum(p.numel() for p in model.parameters())
    report = {"method": "teacher", "steps": 0, "seconds_train": 0.0, "seconds_eval": round(time.perf_counter() - t0, 2),
              "params": {"student": n, "prompt": 0, "prompt_fraction_of_teacher": 0.0}, "eval": ev}
    if a.ppl_tokens:
        from compactlm.eval.perplexity import perplexity

        report["wiki_eval_ppl"] = perplexity(model, tok, "wiki-eval", seq_len=min(512, a.ppl_tokens),
                                             max_tokens=a.ppl_tokens)["ppl"]
    report["summary"] = summarize(report)
    return report


def run_row(a, row: str) -> dict:
    t0 = time.perf_counter()
    if row == "teacher":
        cmd = [sys.executable, "bench/distill/run.py", "--rows", "teacher", "--tag", a.tag]
        report = teacher_report(a)
    else:
        cmd = command(a, row)
        out = Path(cmd[cmd.index("--out") + 1])
        runs = Path(a.runs) / a.tag
        needs = [] if row == "teacher-sft" else (["teacher-sft"] if a.teacher_sft_steps else []) + \
            ([] if row == "sft-init" else ["sft-init"])
        missing = [n for n in needs if not (runs / n / "report.json").exists()]
        if missing:
            raise SystemExit(f"row {row} starts from {', '.join(missing)} ({runs}): run that row first")
        if not (out / "report.json").exists():
            log.info("%s: %s", row, " ".join(cmd))
            env = dict(os.environ, TQDM_DISABLE="1")
            res = subprocess.run(cmd, cwd=ROOT, env=env)
            if res.returncode != 0:
                raise SystemExit(f"row {row} failed (exit {res.returncode}); rerun to resume it")
        report = json.loads((out / "report.json").read_text())
    return _record(a, row, report, cmd, time.perf_counter() - t0)


# --------------------------------------------------------------------------- report

def _fmt(v, std=None):
    if v is None:
        return "–"
    return f"{v:.2f}" + (f" ± {std:.2f}" if std is not None else "")


def write_report(name: str) -> None:
    rows = load_rows(name)
    _, md, png = _paths(name)
    lines = [f"# Distillation benchmark ({name})", "",
             "Generated by `bench/distill/run.py` from `bench/results/" + f"{name}.json`. ROUGE-L ×100 (rouge-score "
             "rougeL F, stemming, max over references); sampled = temperature 1, top-p 1, mean ± std over the sampling "
             "seeds; greedy beside it. Seen = training tasks (their held-out pairs), unseen = tasks never trained on.",
             ""]
    for tag in dict.fromkeys(r["tag"] for r in rows):
        rs = [r for r in rows if r["tag"] == tag]
        b = rs[0]["budget"]
        lines += [f"## {tag}", "",
                  f"Device: {rs[0]['device']}. Teacher `{b['teacher']}`"
                  + (f", fine-tuned {b['teacher_sft_steps']} SFT steps (LR {b['sft_lr']}) on the training tasks (row "
                     "teacher-sft; the students learn from it)" if b.get("teacher_sft_steps") else "")
                  + f"; student: {b['student_layers']} of its blocks "
                  f"after {b['sft_steps']} SFT steps (LR {b['sft_lr']}); each method {b['steps']} steps, batch "
                  f"{b['batch_size']}, LR {b['lr']}; data `{b['data']}` (unseen: {b['unseen_tasks']}), "
                  f"{b['samples']} training pairs, prompts ≤ {b['seq_len'] - b['max_new_tokens']} tokens, responses ≤ "
                  f"{b['max_new_tokens']} tokens; {b['eval_samples']} evaluation pairs per task, seeds "
                  f"{b['eval_seeds']}.", "",
                  "| row | ROUGE-L seen (sampled) | unseen (sampled) | seen greedy | unseen greedy | per task (sampled) "
                  "| wiki-eval PPL | train s | prompt params (% of teacher) |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in rs:
            per = ", ".join(f"{t} {v:.1f}" for t, v in sorted(r.get("per_task", {}).items()))
            prompt = (f"{r['prompt_params']} ({100 * r['prompt_fraction_of_teacher']:.4f}%)" if r.get("prompt_params")
                      else "–")
            lines.append(f"| {r['row']} | {_fmt(r['rougeL_seen'], r['rougeL_seen_std'])} | "
                         f"{_fmt(r['rougeL_unseen'], r['rougeL_unseen_std'])} | {_fmt(r['rougeL_seen_greedy'])} | "
                         f"{_fmt(r['rougeL_unseen_greedy'])} | {per} | {_fmt(r.get('wiki_eval_ppl'))} | "
                         f"{r['seconds_train']:.0f} | {prompt} |")
        lines.append("")
        methods = [r for r in rs if r["row"] in METHOD_ROWS and r.get("rougeL_unseen") is not None]
        if methods:
            best = max(methods, key=lambda r: r["rougeL_unseen"])
            sft = next((r for r in methods if r["row"] == "sft"), None)
            beat = [r["row"] for r in methods if sft and r["row"] != "sft" and r["rougeL_unseen"] > sft["rougeL_unseen"]]
            lines += [f"Targets: best unseen ROUGE-L: **{best['row']}** ({best['rougeL_unseen']:.2f}); "
                      f"PromptKD highest on unseen: {'met' if best['row'] == 'promptkd' else 'missed'}. "
                      f"KD methods above SFT-only on unseen: {', '.join(beat) or 'none'}"
                      + (f" (of {len(methods) - 1})." if sft else "."),
                      "", f"Read with care: {b['eval_samples']} evaluation pairs per task and {b['steps']} steps per "
                      "method; the std is over sampling seeds only (not over training seeds or evaluation pairs), so "
                      "differences of a few points are within noise at this budget.", ""]
    md.write_text("\n".join(lines) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    tags = list(dict.fromkeys(r["tag"] for r in rows))
    if not tags:
        return
    fig, axes = plt.subplots(1, len(tags), figsize=(7 * len(tags), 4), squeeze=False)
    for ax, tag in zip(axes[0], tags):
        rs = [r for r in rows if r["tag"] == tag]
        xs = range(len(rs))
        for off, group, color in ((-0.2, "seen", "tab:blue"), (0.2, "unseen", "tab:orange")):
            vals = [r[f"rougeL_{group}"] or 0 for r in rs]
            errs = [r[f"rougeL_{group}_std"] or 0 for r in rs]
            ax.bar([x + off for x in xs], vals, 0.4, yerr=errs, label=group, color=color, capsize=2)
        ax.set_xticks(list(xs), [r["row"] for r in rs], rotation=45, ha="right")
        ax.set_ylabel("ROUGE-L (sampled, mean ± std over seeds)")
        ax.set_title(tag)
        ax.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    a = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if a.report:
        write_report(a.name)
        return 0
    for row in [r.strip() for r in a.rows.split(",") if r.strip()]:
        if row not in ROWS and row not in QUANT_ROWS:
            raise SystemExit(f"--rows: unknown row {row!r}; rows: {', '.join(ROWS + tuple(QUANT_ROWS))}")
        rows = load_rows(a.name)
        if any(r["tag"] == a.tag and r["row"] == row for r in rows):
            log.info("%s: done already (tag %s)", row, a.tag)
            continue
        if row == "teacher-sft" and not a.teacher_sft_steps:
            raise SystemExit("--rows teacher-sft: needs --teacher-sft-steps N (the fine-tuning steps)")
        rec = run_row(a, row)
        add_row(a.name, rec)
        log.info("%s: seen %s unseen %s (%.0f s)", row, rec["rougeL_seen"], rec["rougeL_unseen"], rec["seconds_wall"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
