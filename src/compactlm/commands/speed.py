"""``compactlm speed``: prefill / decode tokens/s, time to first token, memory and size of a model."""

from __future__ import annotations

import argparse

from compactlm.commands import args as A
from compactlm.commands.generate import add_inference_args, format_paths, load_for_inference


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "speed",
        help="measure prefill/decode speed, time to first token, resident memory and size on disk",
        description="Batch-1 speed of a model or quantized run directory through the real-inference path: "
        "each repetition prefills --prompt-tokens (one forward) then decodes --new-tokens greedily through the "
        "KV cache; prints medians and the spread, resident memory after load and bytes on disk.",
    )
    add_inference_args(p)
    p.add_argument("--prompt-tokens", type=int, default=512, help="prompt length for prefill (default: %(default)s)")
    p.add_argument("--new-tokens", type=int, default=64, help="decoded tokens per repetition (default: %(default)s)")
    p.add_argument("--reps", type=int, default=5, help="timed repetitions (default: %(default)s)")
    p.add_argument("--warmup", type=int, default=1, help="untimed repetitions first (default: %(default)s)")
    A.add_seed(p, 0, "seed of the prompt token ids")
    A.add_out(p, required=False, help="write the result JSON here (atomically)", overwrite=False)
    A.add_no_progress(p)
    p.set_defaults(func=run)


def _import_model_code(name: str) -> None:
    """Import the modeling code of ``name`` and warm the BLAS, so resident memory after load minus
    before is the model's own share."""
    import torch
    import transformers as T

    from compactlm.models.checkpoint import is_quantized_run
    from compactlm.models.loading import _resolve, base_model_name

    torch.ones(8, 8) @ torch.ones(8, 8)
    torch.ones(8, 8, dtype=torch.bfloat16) @ torch.ones(8, 8, dtype=torch.bfloat16)
    name = base_model_name(name)  # a NN-LUT run: its base model's code
    if name.startswith("tiny-"):
        return
    source = f"{name}/model" if is_quantized_run(name) else _resolve(name)
    config = T.AutoConfig.from_pretrained(source)
    try:
        T.MODEL_FOR_CAUSAL_LM_MAPPING[type(config)]
    except KeyError:  # an encoder: speed refuses it after loading, with a clear error
        pass


def run(args: argparse.Namespace) -> int:
    import platform

    from compactlm.io import write_json
    from compactlm.memory import release_freed_memory
    from compactlm.models.loading import EMBEDDED, _embedded_dir
    from compactlm.serve import measure_speed, model_bytes, path_bytes, resident_mb

    import torch

    _import_model_code(args.model)  # the baseline includes torch, transformers and the model's code
    release_freed_memory()
    rss_before = resident_mb()
    model, tok, device, dtype, summary = load_for_inference(args)
    if not args.compile:  # touch every weight (a compiled model compiles in the timed warm-up instead)
        measure_speed(model, prompt_tokens=8, new_tokens=1, reps=1, warmup=0, progress=False)
    release_freed_memory()
    rss_loaded = resident_mb()
    on_disk = str(_embedded_dir(args.model)) if args.model in EMBEDDED else args.model
    result = {
        "model": args.model, "dtype": str(dtype).replace("torch.", ""), "backend": args.backend,
        "keep_codes": args.keep_codes, "compile": args.compile, "head_int8": args.head_int8, "paths": {k: v["layers"] for k, v in summary.items()},
        # resident memory after load and one 8-token forward (mmapped weights are only resident once read)
        "rss_before_load_mb": round(rss_before, 1), "rss_after_load_mb": round(rss_loaded, 1),
        "rss_model_mb": round(rss_loaded - rss_before, 1), "model_tensor_mb": round(model_bytes(model) / 2**20, 1),
        "disk_mb": None if path_bytes(on_disk) is None else round(path_bytes(on_disk) / 2**20, 1),
        "cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
    }
    result.update(measure_speed(model, args.prompt_tokens, args.new_tokens, args.reps, args.warmup, args.seed,
                                progress=not args.no_progress))
    result["rss_peak_after_run_mb"] = round(resident_mb(), 1)
    print(format_paths(summary))
    print(f"model: {args.model}  dtype {result['dtype']}  device {result['device']}  threads {result['threads']}")
    print(f"size: {result['disk_mb']} MB on disk, {result['model_tensor_mb']} MB of tensors in memory; resident "
          f"{result['rss_after_load_mb']} MB after load and a first forward ({result['rss_model_mb']} MB above the "
          f"{result['rss_before_load_mb']} MB of torch + transformers), {result['rss_peak_after_run_mb']} MB after the run")
    print(f"prefill {result['prompt_tokens']} tokens: {result['prefill_tok_s']:.1f} tokens/s "
          f"[{result['prefill_tok_s_min']:.1f}-{result['prefill_tok_s_max']:.1f}], time to first token "
          f"{result['ttft_ms']:.0f} ms")
    print(f"decode {result['new_tokens']} tokens: {result['decode_tok_s']:.2f} tokens/s "
          f"[{result['decode_tok_s_min']:.2f}-{result['decode_tok_s_max']:.2f}] over {result['reps']} reps")
    if args.out:
        write_json(args.out, result)
        print(f"wrote {args.out}")
    return 0
