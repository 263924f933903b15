"""Where a decode step's time goes: torch profiler over decode steps of a model as deployed.

    .venv/bin/python bench/serve/profile_decode.py --model runs/bench-serve/rtn-w4a16 --out bench/results/serve-profile.json

Loads the model through the inference path (bf16, kernels, decode attention), prefills a
``--context``-token prompt, then profiles ``--steps`` single-token decode steps on one thread and
writes self CPU time per op (ms per step) and the step time as a flat JSON list.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--context", type=int, default=512)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    from compactlm.models import load_model
    from compactlm.serve import prepare_for_inference
    from compactlm.serve.speed import _cache_of, _forward_kwargs

    torch.set_num_threads(1)
    dtype = getattr(torch, args.dtype)
    model, _ = load_model(args.model, dtype=dtype, backend="reference")  # kernels packed once, below
    prepare_for_inference(model, dtype, torch.device("cpu"))
    extra, cache_arg = _forward_kwargs(model)
    ids = torch.randint(10, model.config.vocab_size, (1, args.context), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = model(input_ids=ids, use_cache=True, **extra)
        cache, nxt = _cache_of(out), out.logits[:, -1:].argmax(-1)
        for _ in range(3):
            out = model(input_ids=nxt, use_cache=True, **{cache_arg: cache})
            cache = _cache_of(out)
        t0 = time.perf_counter()
        with torch.autograd.profiler.profile() as prof:
            for _ in range(args.steps):
                out = model(input_ids=nxt, use_cache=True, **{cache_arg: cache})
                cache = _cache_of(out)
        wall = (time.perf_counter() - t0) / args.steps * 1e3
    rows = []
    for e in sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:15]:
        rows.append({"model": args.model, "dtype": args.dtype, "context": args.context, "threads": 1,
                     "op": e.key, "self_ms_per_step": round(e.self_cpu_time_total / 1e3 / args.steps, 3),
                     "calls_per_step": e.count // args.steps, "step_ms_profiled": round(wall, 2),
                     "command": "python bench/serve/profile_decode.py " + " ".join(sys.argv[1:])})
    with open(args.out, "w") as f:
        json.dump(rows, f, indent=1)
    for r in rows:
        print(f"{r['op']:<50} {r['self_ms_per_step']:8.3f} ms/step  x{r['calls_per_step']}")
    print(f"step (under the profiler): {wall:.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
