"""Peer PTQ method: AutoRound (Intel's ``auto-round`` package, SignRound) on ``smollm2-135m`` (issue 14).

Runs in ``.venv`` after ``make autoround`` (auto-round 0.16 cannot share ``.venv-peers`` with
llm-compressor 0.14: pip finds their requirements in conflict); from compactlm it takes only
``compactlm.io.atomic_dir`` (the quantization is AutoRound's own). Inputs are files written by compactlm, so AutoRound sees exactly our calibration:

* the FP32 model cached by ``compactlm.models.load_model("smollm2-135m")``
  (``$COMPACTLM_CACHE/models/smollm2-135m``, a plain HF folder);
* calibration token ids written by ``bench/ptq/peers_calib.py`` (``runs/peers/calib-wiki-32x256.safetensors``).

For every (scheme, iters) it runs ``AutoRound(...).quantize()`` with the benchmark's calibration
(all samples, their length, batch 2 as our engine), weights asymmetric per output channel (as our
w3a16 / w4a16), ``lm_head`` and embeddings left in FP as ours, and saves AutoRound's ``fake``
export (the dequantized weights, a plain HF folder) to ``<out>/autoround-<scheme>-it<iters>/`` with
``peer_meta.json`` (wall time, peak memory, settings, versions) — written through
``compactlm.io.atomic_dir``, so a killed run leaves nothing half-written; finished cells are skipped. ``lrq_sweep.py
--rows autoround`` (in ``.venv``) checks that every quantized row holds at most ``2^bits`` values,
evaluates it with compactlm's evaluator and appends the row.

    make autoround && .venv/bin/python bench/ptq/peers_autoround.py --schemes w3a16 --iters 20

AutoRound's learning rate defaults to ``1/iters`` (its own rule); ``--lr`` overrides it.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import time
from pathlib import Path

log = logging.getLogger("peers.autoround")
SCHEMES = {"w4a16": 4, "w3a16": 3}


def peak_mem_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cell_name(scheme: str, iters: int, seed: int) -> str:
    return f"autoround-{scheme}-it{iters}" + (f"-s{seed}" if seed else "")


def run_cell(scheme: str, args, ids) -> None:
    import torch
    import transformers as T

    from compactlm.io import atomic_dir

    try:
        from auto_round import AutoRound
    except ImportError:
        raise SystemExit("auto-round is not installed: run `make autoround`") from None

    final = Path(args.out) / cell_name(scheme, args.iters, args.seed)
    if (final / "peer_meta.json").is_file():
        log.info("skip %s (done)", final.name)
        return
    torch.manual_seed(args.seed)
    model = T.AutoModelForCausalLM.from_pretrained(args.model_dir, dtype=torch.float32)
    tok = T.AutoTokenizer.from_pretrained(args.model_dir)
    batches = [ids[i : i + args.batch_size] for i in range(0, len(ids), args.batch_size)]
    settings = {"bits": SCHEMES[scheme], "group_size": -1, "sym": False, "iters": args.iters,
                "nsamples": len(ids), "seqlen": ids.shape[1], "batch_size": args.batch_size, "seed": args.seed,
                "lr": args.lr, "device_map": "cpu", "enable_torch_compile": False, "amp": False}
    log.info("run %s: %s", final.name, settings)
    start = time.perf_counter()
    ar = AutoRound(model, tok, dataset=batches, **{k: v for k, v in settings.items() if v is not None})
    ar.quantize()
    seconds = time.perf_counter() - start
    import auto_round

    meta = {"method": "autoround", "scheme": scheme, "iters": args.iters, "seconds": round(seconds, 1),
            "peak_mem_mb": round(peak_mem_mb(), 1), "settings": settings,
            "versions": {"auto_round": auto_round.__version__, "torch": torch.__version__,
                         "transformers": T.__version__},
            "calib": str(args.calib), "threads": torch.get_num_threads()}
    with atomic_dir(final, overwrite=True) as tmp:  # a half-written export never looks finished
        ar.save_quantized(str(tmp), format="fake", inplace=True)
        (tmp / "peer_meta.json").write_text(json.dumps(meta, indent=1))
    log.info("%s done in %.0f s", final.name, seconds)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cache = Path(os.environ.get("COMPACTLM_CACHE", Path.home() / ".cache" / "compactlm"))
    p.add_argument("--model-dir", default=str(cache / "models" / "smollm2-135m"))
    p.add_argument("--calib", default="runs/peers/calib-wiki-32x256.safetensors")
    p.add_argument("--schemes", default="w3a16", help=f"comma list of {', '.join(SCHEMES)}")
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--lr", type=float, default=None, help="default: AutoRound's 1/iters")
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/peers")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    import torch
    from safetensors.torch import load_file

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))
    if not Path(args.calib).is_file():
        raise SystemExit(f"--calib: {args.calib} not found; write it with bench/ptq/peers_calib.py")
    if not (Path(args.model_dir) / "config.json").is_file():
        raise SystemExit(f"--model-dir: {args.model_dir} has no config.json; run compactlm once to cache smollm2-135m")
    ids = load_file(args.calib)["input_ids"]
    for scheme in args.schemes.split(","):
        if scheme not in SCHEMES:
            raise SystemExit(f"--schemes: unknown scheme {scheme!r}; known: {', '.join(SCHEMES)}")
        run_cell(scheme, args, ids)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
