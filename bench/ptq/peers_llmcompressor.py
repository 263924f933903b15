"""Peer PTQ methods through llm-compressor: GPTQ, AWQ and SmoothQuant+RTN on ``smollm2-135m``.

Runs in ``.venv-peers`` (llm-compressor pins transformers <= 5.17, so it lives apart from
``.venv``) and imports nothing from compactlm. Inputs are files written by compactlm:

* the FP32 model cached by ``compactlm.models.load_model("smollm2-135m")``
  (``$COMPACTLM_CACHE/models/smollm2-135m``, a plain HF folder);
* calibration token ids written by ``bench/ptq/peers_calib.py`` (identical samples to ours).

For every (method, scheme) it runs ``llmcompressor.oneshot`` and saves a compressed-tensors
checkpoint to ``<out>/<method>-<scheme>/`` (atomically: written to a temp folder, then renamed)
with ``peer_meta.json`` (wall time, peak memory, recipe, versions). Finished cells are skipped,
so an interrupted grid resumes. ``bench/ptq/peers_eval.py`` (in ``.venv``) then evaluates the
checkpoints through compactlm's importer and appends the rows to ``bench/results/ptq.json``.

Schemes (compressed-tensors arguments; activations asymmetric as in the LRQ paper)::

    w4a16      weights int4 asym per channel
    w3a16      weights int3 asym per channel
    w2a16-g64  weights int2 asym, groups of 64 (128 does not divide 576)
    w4a8       weights int4 asym per channel + input int8 asym per token, dynamic
    w8a8       weights int8 sym per channel + input int8 asym per tensor, static (static_minmax)

Methods::

    gptq               GPTQModifier (block 128, dampening 0.01, actorder static), minmax observer
    awq                AWQModifier (n_grid 20, duo scaling, mappings inferred) then
                       QuantizationModifier with the same scheme (minmax observer)
    smoothquant-llmc   SmoothQuantModifier (alpha 0.5, mappings inferred) then QuantizationModifier (RTN)

Usage::

    /work/cpuslot .venv-peers/bin/python bench/ptq/peers_llmcompressor.py \
        --calib runs/peers/calib.safetensors --out runs/peers
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import shutil
import time
from pathlib import Path

log = logging.getLogger("peers")

METHODS = ("gptq", "awq", "smoothquant-llmc")
SCHEMES = ("w4a16", "w3a16", "w2a16-g64", "w4a8", "w8a8")


def weights_args(bits: int, group: int | None = None, symmetric: bool = False) -> dict:
    args = {"num_bits": bits, "type": "int", "symmetric": symmetric,
            "strategy": "group" if group else "channel", "observer": "minmax"}
    if group:
        args["group_size"] = group
    return args


def scheme_config(scheme: str) -> dict:
    """compressed-tensors ``QuantizationScheme`` fields (without targets) for a benchmark scheme."""
    table = {
        "w4a16": {"weights": weights_args(4)},
        "w3a16": {"weights": weights_args(3)},
        "w2a16-g64": {"weights": weights_args(2, 64)},
        "w4a8": {"weights": weights_args(4),
                 "input_activations": {"num_bits": 8, "type": "int", "symmetric": False,
                                       "strategy": "token", "dynamic": True}},
        "w8a8": {"weights": weights_args(8, symmetric=True),
                 "input_activations": {"num_bits": 8, "type": "int", "symmetric": False,
                                       "strategy": "tensor", "dynamic": False, "observer": "static_minmax"}},
    }
    return table[scheme]


def recipe_for(method: str, scheme: str, alpha: float) -> list:
    from llmcompressor.modifiers.transform.awq import AWQModifier  # not the .awq shim
    from llmcompressor.modifiers.quantization import GPTQModifier, QuantizationModifier
    from llmcompressor.modifiers.smoothquant import SmoothQuantModifier

    groups = {"group_0": {"targets": ["Linear"], **scheme_config(scheme)}}
    if method == "gptq":
        return [GPTQModifier(config_groups=groups, ignore=["lm_head"], block_size=128, dampening_frac=0.01)]
    if method == "awq":
        return [AWQModifier(n_grid=20, duo_scaling=True),
                QuantizationModifier(config_groups=groups, ignore=["lm_head"])]
    if method == "smoothquant-llmc":
        return [SmoothQuantModifier(smoothing_strength=alpha),
                QuantizationModifier(config_groups=groups, ignore=["lm_head"])]
    raise SystemExit(f"--methods: unknown method {method!r}; known: {', '.join(METHODS)}")


def cpu_only_workaround() -> None:
    """llm-compressor 0.14's AWQ pins cached activations (``IntermediatesCache.pin_memory``), which
    raises "Cannot access accelerator device" on a CPU-only torch; pinning only speeds up host-to-GPU
    copies, so without a GPU it is skipped."""
    import torch

    if not torch.cuda.is_available():
        from llmcompressor.pipelines.cache import IntermediatesCache

        IntermediatesCache.pin_memory = lambda self, *args, **kwargs: None


def peak_mem_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_cell(method: str, scheme: str, args, ids) -> None:
    import torch
    import transformers as T
    from datasets import Dataset
    from llmcompressor import oneshot

    final = Path(args.out) / f"{method}-{scheme}"
    if (final / "peer_meta.json").is_file():
        log.info("skip %s %s (done)", method, scheme)
        return
    tmp = final.parent / f".{final.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    torch.manual_seed(args.seed)
    model = T.AutoModelForCausalLM.from_pretrained(args.model_dir, dtype=torch.float32)
    tok = T.AutoTokenizer.from_pretrained(args.model_dir)
    ds = Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": torch.ones_like(ids).tolist()})
    recipe = recipe_for(method, scheme, args.alpha)
    log.info("run %s %s", method, scheme)
    start = time.perf_counter()
    oneshot(model=model, dataset=ds, recipe=recipe, num_calibration_samples=len(ids),
            max_seq_length=ids.shape[1], shuffle_calibration_samples=False, batch_size=1)
    seconds = time.perf_counter() - start
    model.save_pretrained(tmp, save_compressed=True)
    tok.save_pretrained(tmp)
    import compressed_tensors
    import llmcompressor

    meta = {
        "method": method, "scheme": scheme, "seconds": round(seconds, 1), "peak_mem_mb": round(peak_mem_mb(), 1),
        "recipe": [repr(m) for m in recipe], "scheme_config": scheme_config(scheme),
        "implementation": f"llm-compressor {llmcompressor.__version__}",
        "versions": {"llmcompressor": llmcompressor.__version__, "compressed_tensors": compressed_tensors.__version__,
                     "transformers": T.__version__, "torch": torch.__version__},
        "calib": f"{args.calib_meta['source']} {len(ids)}x{ids.shape[1]}", "seed": int(args.calib_meta["seed"]),
        "threads": torch.get_num_threads(),
        "command": f"{Path(__file__).name} --methods {method} --schemes {scheme}",
    }
    (tmp / "peer_meta.json").write_text(json.dumps(meta, indent=1))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    log.info("done %s %s in %.1fs", method, scheme, seconds)


def main() -> None:
    p = argparse.ArgumentParser(description="GPTQ / AWQ / SmoothQuant+RTN through llm-compressor")
    p.add_argument("--model-dir", default=str(Path(os.environ.get("COMPACTLM_CACHE", "~/.cache/compactlm"))
                                            .expanduser() / "models" / "smollm2-135m"))
    p.add_argument("--calib", default="runs/peers/calib.safetensors")
    p.add_argument("--out", default="runs/peers")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--schemes", default=",".join(SCHEMES))
    p.add_argument("--alpha", type=float, default=0.5, help="SmoothQuant migration strength")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    import torch
    from safetensors import safe_open

    torch.set_num_threads(int(os.environ.get("COMPACTLM_THREADS", torch.get_num_threads())))
    cpu_only_workaround()
    with safe_open(args.calib, "pt") as f:
        ids = f.get_tensor("input_ids")
        args.calib_meta = f.metadata()
    for method in args.methods.split(","):
        for scheme in args.schemes.split(","):
            if scheme not in SCHEMES:
                raise SystemExit(f"--schemes: unknown scheme {scheme!r}; known: {', '.join(SCHEMES)}")
            run_cell(method, scheme, args, ids)


if __name__ == "__main__":
    main()
