"""``compactlm export``: write a quantized run as a compressed-tensors (vLLM) or dequantized HF checkpoint,
or as a llama.cpp GGUF file holding the run's own integer codes."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from compactlm.commands import args as A

_GGUF_FLAGS = ("gguf_type", "lossy", "unquantized_type", "tokenizer_pre")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="export a quantized run to compressed-tensors (vLLM), a dequantized HF checkpoint or GGUF (llama.cpp)",
        description="Export a quantized model. compressed-tensors: packed int4 (and other <=4-bit) weights, "
        "int8 W8A8 with static input scales, per-token dynamic activations for W4A8; layers the format "
        "cannot hold fall back to a dequantized HF checkpoint (with a warning). gguf: one .gguf file for "
        "llama.cpp (llama, qwen2) whose Q4_0/Q4_1/Q8_0 blocks hold the run's own codes; a grid the type "
        "cannot hold exactly is refused unless --lossy (see docs/gguf.md).",
    )
    A.add_model(p, required=True, help="quantized run directory (compactlm quantize --out) or compressed-tensors folder")
    p.add_argument("--format", default="compressed-tensors", help="compressed-tensors | dequantized | gguf (default: %(default)s)")
    A.add_out(p, help="folder to create (gguf: the .gguf file to write)")
    p.add_argument("--verify", action="store_true",
                   help="reload the export with transformers and report the largest logit difference "
                   "(compressed-tensors)")
    p.add_argument("--type", default="q4_0", dest="gguf_type",
                   help="gguf: block type of the quantized linears, q4_0 | q4_1 | q8_0 (default: %(default)s)")
    p.add_argument("--lossy", action="store_true",
                   help="gguf: re-round grids the type cannot hold exactly (reported) instead of refusing")
    p.add_argument("--unquantized-type", default="f16",
                   help="gguf: type of unquantized matrices (embeddings, output head), f16 | f32 (default: %(default)s)")
    p.add_argument("--tokenizer-pre", default=None,
                   help="gguf: llama.cpp pre-tokenizer name (e.g. smollm, gpt-2, qwen2); default: detected")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from compactlm.export import FORMATS, export_model, load_compressed_tensors, transformers_reload_error
    from compactlm.export.compressed_tensors import EXPORT_META, is_compressed_tensors_checkpoint
    from compactlm.errors import CompactLMError
    from compactlm.io import write_json

    if args.format not in FORMATS + ("gguf",):
        raise CompactLMError(
            f"--format: unknown export format {args.format!r}; choose one of {', '.join(FORMATS + ('gguf',))}"
        )
    takes = {"gguf": ["--type", "--lossy", "--unquantized-type", "--tokenizer-pre"], "compressed-tensors": ["--verify"]}
    if args.format != "gguf":
        A.reject_unused(args, _GGUF_FLAGS, f"--format {args.format}", takes.get(args.format, []))
    if args.format != "compressed-tensors":
        A.reject_unused(args, ("verify",), f"--format {args.format}", takes.get(args.format, []))
    if args.format == "gguf":  # refuse bad gguf arguments before loading the model
        from compactlm.export.gguf import check_arguments

        check_arguments(args.gguf_type, args.unquantized_type, args.out, args.overwrite)
    if is_compressed_tensors_checkpoint(args.model):
        import transformers as T

        model, tok = load_compressed_tensors(args.model), T.AutoTokenizer.from_pretrained(args.model)
    else:
        from compactlm.models import load_model

        model, tok = load_model(args.model, backend="reference")  # export the grid, not a kernel's arithmetic
    if args.format == "gguf":
        from compactlm.export.gguf import export_gguf

        report = export_gguf(model, tok, args.out, qtype=args.gguf_type, lossy=args.lossy,
                             unquantized_type=args.unquantized_type, tokenizer_pre=args.tokenizer_pre,
                             overwrite=args.overwrite, name=Path(args.model).name)
        report.pop("tensor_report")  # per-tensor detail: export_gguf's return value
        print(f"wrote {args.out}: {json.dumps(report)}")
        return 0
    report = export_model(model, tok, args.out, format=args.format, overwrite=args.overwrite)
    if args.verify and report["format"] == "compressed-tensors":
        vocab = model.config.vocab_size
        ids = torch.randint(0, vocab, (2, 64), generator=torch.Generator().manual_seed(0))
        report["verify"] = transformers_reload_error(model, args.out, ids)
        write_json(f"{args.out}/{EXPORT_META}", report)
    print(f"wrote {args.out}: {json.dumps(report)}")
    return 0
