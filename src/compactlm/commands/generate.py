"""``compactlm generate``: prompt -> text through the real-inference path (kernels, KV cache)."""

from __future__ import annotations

import argparse

from compactlm.commands import args as A


def add_inference_args(p: argparse.ArgumentParser) -> None:
    """Model, device, dtype, threads and kernel flags shared by ``generate`` and ``speed``."""
    A.add_model(p)
    A.add_device(p)
    A.add_dtype(p, default="auto", auto="bfloat16")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--backend", default="auto", choices=("auto", "reference", "dequant"),
                   help="quantized linears: auto = real int4/int8 kernels where the grid has one; reference = cached "
                   "dequantized weights (the fake-quant path); dequant = dequantize every call (default: %(default)s)")
    p.add_argument("--keep-codes", action="store_true",
                   help="keep the packed codes beside the kernel packing (+0.5 byte/weight at 4 bits) so long prompts use a dense GEMM")
    p.add_argument("--dense-from-tokens", type=int, default=None,
                   help="with --keep-codes: rows from which a call uses the dense GEMM (default: 32)")
    p.add_argument("--head-int8", action="store_true",
                   help="round the output head to 8-bit per-channel codes at load (RTN; fewer bytes read per token)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the forward (minutes of compilation first; faster decode after)")


def load_for_inference(args: argparse.Namespace):
    """``(model, tokenizer, device, dtype, path summary)`` from the shared inference flags."""
    import torch

    from compactlm.errors import CompactLMError
    from compactlm.models import load_model
    from compactlm.models.checkpoint import is_quantized_run
    from compactlm.models.loading import base_model_name
    from compactlm.serve import choose_dtype, prepare_for_inference

    if args.threads is not None:
        if args.threads < 1:
            raise CompactLMError("--threads: expected a positive number of threads")
        torch.set_num_threads(args.threads)
    if not args.keep_codes:
        A.reject_unused(args, ("dense_from_tokens",), "a run without --keep-codes", ["--keep-codes"])
    if not is_quantized_run(base_model_name(args.model)):
        A.reject_unused(args, ("backend", "keep_codes", "dense_from_tokens"),
                        f"--model {args.model} (no quantized linears)", ["--head-int8", "--compile", "--dtype", "--threads"])
    device = A.device_of(args)
    dtype = choose_dtype(args.dtype, device)
    # Kernels are packed once, by prepare_for_inference after the cast and move (packing at load
    # and moving after would read every layer's codes back out of its kernel and pack them again).
    model, tok = load_model(args.model, dtype=dtype, backend="reference")
    summary = prepare_for_inference(model, dtype, device, args.backend, args.keep_codes, args.dense_from_tokens,
                                    compile=args.compile, head_int8=args.head_int8)
    return model, tok, device, dtype, summary


def format_paths(summary: dict) -> str:
    """One line per matmul path: how many quantized linears take it, and why some have no kernel."""
    if not summary:
        return "quantized linears: none (full-precision model)"
    lines = []
    for path, entry in summary.items():
        lines.append(f"quantized linears on {path}: {entry['layers']}")
        lines.extend(f"  no kernel: {e}" for e in entry["examples"])
    return "\n".join(lines)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "generate",
        help="generate text from a prompt (real low-bit kernels for quantized runs)",
        description="Answer a prompt with a model or quantized run directory: KV cache, greedy (default) or "
        "sampled decoding, the tokenizer's chat template when it has one. Tokens are printed as they come.",
    )
    add_inference_args(p)
    p.add_argument("prompt", help="the prompt text")
    p.add_argument("--max-new-tokens", type=int, default=64, help="tokens to generate (default: %(default)s)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy; > 0 samples (default: %(default)s)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass when sampling (default: %(default)s)")
    A.add_seed(p, 0, "sampling seed (with --temperature > 0)")
    p.add_argument("--no-chat-template", action="store_true", help="feed the prompt as plain text")
    p.add_argument("--quiet", action="store_true", help="print only the generated text")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import sys
    import time

    from transformers import TextStreamer

    from compactlm.errors import CompactLMError
    from compactlm.serve import generate_text

    if args.temperature < 0:
        raise CompactLMError(f"--temperature: expected ≥ 0, got {args.temperature}")
    if args.temperature == 0:
        A.reject_unused(args, ("top_p", "seed"), "greedy decoding (--temperature 0)", ["--temperature T > 0"])
    model, tok, device, dtype, summary = load_for_inference(args)
    if tok is None:
        raise CompactLMError(f"--model: {args.model!r} has no tokenizer, so it cannot generate text")
    if not args.quiet:
        print(f"model: {args.model} ({str(dtype).replace('torch.', '')}, {device})\n{format_paths(summary)}", file=sys.stderr)
    streamer = None if args.quiet else TextStreamer(tok, skip_prompt=True, skip_special_tokens=True)
    start = time.perf_counter()
    out = generate_text(model, tok, args.prompt, args.max_new_tokens, args.temperature, args.top_p, args.seed,
                        chat=not args.no_chat_template, streamer=streamer)
    seconds = time.perf_counter() - start
    if args.quiet:
        print(out["text"])
    else:
        print(f"[{out['new_tokens']} tokens in {seconds:.2f} s: {out['new_tokens'] / seconds:.1f} tokens/s "
              f"including the {out['prompt_tokens']}-token prompt]", file=sys.stderr)
    return 0
