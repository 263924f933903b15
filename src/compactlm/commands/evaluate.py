"""``compactlm eval``: perplexity and zero-shot multiple-choice accuracy of a model or run directory."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from compactlm.commands import args as A


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="perplexity and zero-shot accuracy of a model or run directory",
        description="Evaluate perplexity on a corpus and/or zero-shot multiple-choice accuracy; prints a "
        "table and writes the result JSON (atomically) to --out, and to <run dir>/eval.json for run dirs.",
    )
    A.add_model(p, help="embedded name, tiny-<model_type>, local folder, .gguf, run directory (quantized or NN-LUT) "
                "or hub id")
    p.add_argument("--ppl", default="wiki-eval", help="perplexity corpus (name or file); 'none' to skip (default: %(default)s)")
    p.add_argument("--tasks", default="", help="comma-separated zero-shot tasks, e.g. arc_easy,piqa (default: none)")
    p.add_argument("--limit", type=int, default=None, help="first N examples per task (default: all)")
    p.add_argument("--seq-len", type=int, default=512, help="perplexity window length (default: %(default)s)")
    p.add_argument("--stride", type=int, default=None, help="perplexity window stride (default: --seq-len, no overlap)")
    p.add_argument("--max-tokens", type=int, default=40960, help="perplexity tokens (default: %(default)s)")
    A.add_batch_size(p, None, "sequences per forward (default: 4 for perplexity, 16 for zero-shot)")
    A.add_device(p)
    A.add_dtype(p, default="float32")
    p.add_argument("--backend", default="auto", choices=("auto", "reference", "dequant"),
                   help="quantized run dirs: auto = real int4/int8 kernels where the grid has one; reference = the "
                   "fake-quant path (cached dequantized weights); dequant = dequantize every call (default: %(default)s)")
    A.add_out(p, required=False, help="write the result JSON here", overwrite=False)
    p.set_defaults(func=run)


def format_table(result: dict) -> str:
    """A readable text table of an eval result."""
    lines = [f"model: {result['model']}"]
    if result.get("perplexity"):
        p = result["perplexity"]
        lines.append(f"perplexity on {p['source']}: {p['ppl']:.3f}  ({p['tokens']} tokens, seq_len {p['seq_len']}, stride {p['stride']})")
    zs = result.get("zeroshot")
    if zs:
        lines.append(f"{'task':<16}{'n':>7}{'acc':>9}{'acc_norm':>10}")
        for name, r in zs["tasks"].items():
            lines.append(f"{name:<16}{r['n']:>7}{r['acc']:>9.4f}{r['acc_norm']:>10.4f}")
        lines.append(f"{'average':<16}{'':>7}{zs['avg_acc']:>9.4f}{zs['avg_acc_norm']:>10.4f}")
    lines.append(f"seconds: {result['seconds']:.1f}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from compactlm.data import TASKS
    from compactlm.errors import CompactLMError
    from compactlm.eval import perplexity, zeroshot
    from compactlm.io import write_json
    from compactlm.models import load_model
    from compactlm.models.checkpoint import is_quantized_run
    from compactlm.models.loading import base_model_name

    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    for t in tasks:
        if t not in TASKS:
            raise CompactLMError(f"--tasks: unknown task {t!r}; choose from {', '.join(TASKS)}")
    ppl_source = None if args.ppl.lower() in ("", "none") else args.ppl
    if ppl_source is None and not tasks:
        raise CompactLMError("eval: nothing to do; pass --ppl CORPUS and/or --tasks T1,T2")
    if args.limit is not None and args.limit < 1:
        raise CompactLMError("--limit must be a positive number of examples")
    if ppl_source is None:
        A.reject_unused(args, ("seq_len", "stride", "max_tokens"), "--ppl none", ["--tasks", "--limit", "--batch-size"])
    if not tasks:
        A.reject_unused(args, ("limit",), "a run without --tasks", ["--tasks"])
    if not is_quantized_run(base_model_name(args.model)):
        A.reject_unused(args, ("backend",), f"--model {args.model} (no quantized linears)")
    device = A.device_of(args)
    start = time.perf_counter()
    from compactlm.serve import choose_dtype

    model, tok = load_model(args.model, device=device, dtype=choose_dtype(args.dtype, device), backend=args.backend)
    if tok is None and base_model_name(args.model).startswith("tiny-"):
        from compactlm.data.char_tokenizer import char_tokenizer

        tok = char_tokenizer()  # tiny random models ship no tokenizer
    if tok is None:
        raise CompactLMError(f"--model: {args.model!r} has no tokenizer, so text cannot be evaluated")
    result: dict = {"model": args.model}
    if ppl_source is not None:
        ppl = perplexity(model, tok, ppl_source, seq_len=args.seq_len, max_tokens=args.max_tokens,
                         stride=args.stride, batch_size=args.batch_size or 4)
        result["perplexity"] = {"source": ppl_source, **ppl}
    if tasks:
        result["zeroshot"] = zeroshot(model, tok, tasks, limit=args.limit, batch_size=args.batch_size or 16)
        result["zeroshot"]["limit"] = args.limit
    result["device"] = str(device)
    result["dtype"], result["backend"] = args.dtype, args.backend
    result["seconds"] = round(time.perf_counter() - start, 2)
    print(format_table(result))
    if args.out:
        write_json(args.out, result)
        print(f"wrote {args.out}")
    run_dir = Path(args.model)
    if run_dir.is_dir() and (run_dir / "report.json").is_file():  # a run dir (quantize, qat, lut apply ...)
        write_json(run_dir / "eval.json", result)
        print(f"wrote {run_dir / 'eval.json'}")
    return 0
