"""``compactlm export``: write a quantized run as a compressed-tensors (vLLM) or dequantized HF checkpoint."""

from __future__ import annotations

import argparse
import json


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="export a quantized run to compressed-tensors (vLLM) or a dequantized HF checkpoint",
        description="Export a quantized model. compressed-tensors: packed int4 (and other <=4-bit) weights, "
        "int8 W8A8 with static input scales, per-token dynamic activations for W4A8; layers the format "
        "cannot hold fall back to a dequantized HF checkpoint (with a warning).",
    )
    p.add_argument("--model", required=True, help="quantized run directory (compactlm quantize --out) or compressed-tensors folder")
    p.add_argument("--format", default="compressed-tensors", help="compressed-tensors | dequantized (default: %(default)s)")
    p.add_argument("--out", required=True, help="folder to create")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument("--verify", action="store_true",
                   help="reload the export with transformers and report the largest logit difference")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from compactlm.export import FORMATS, export_model, load_compressed_tensors, transformers_reload_error
    from compactlm.export.compressed_tensors import EXPORT_META, is_compressed_tensors_checkpoint
    from compactlm.errors import CompactLMError
    from compactlm.io import write_json

    if args.format not in FORMATS:
        raise CompactLMError(f"--format: unknown export format {args.format!r}; choose one of {', '.join(FORMATS)}")
    if is_compressed_tensors_checkpoint(args.model):
        import transformers as T

        model, tok = load_compressed_tensors(args.model), T.AutoTokenizer.from_pretrained(args.model)
    else:
        from compactlm.models import load_model

        model, tok = load_model(args.model, backend="reference")  # export the grid, not a kernel's arithmetic
    report = export_model(model, tok, args.out, format=args.format, overwrite=args.overwrite)
    if args.verify and report["format"] == "compressed-tensors":
        vocab = model.config.vocab_size
        ids = torch.randint(0, vocab, (2, 64), generator=torch.Generator().manual_seed(0))
        report["verify"] = transformers_reload_error(model, args.out, ids)
        write_json(f"{args.out}/{EXPORT_META}", report)
    print(f"wrote {args.out}: {json.dumps(report)}")
    return 0
