"""``compactlm quantize`` and ``compactlm methods``.

Every registered method's options dataclass contributes its fields as flags (``--iters``,
``--rank``...), so a new method needs no CLI code; a flag that the chosen method does not take is
rejected with the list of the flags it does take.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import types
import typing

log = logging.getLogger(__name__)

_RESERVED = {"model", "method", "scheme", "calib", "calib_samples", "calib_seq_len", "seed", "out", "overwrite"}


def _flag_type(tp):
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        tp = args[0] if args else str
    if tp is bool:
        return lambda s: {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}[s.lower()]
    return tp if tp in (int, float, str) else str


def _method_options() -> dict[str, tuple[object, list[str]]]:
    """``{field: (type, [methods])}`` over all registered methods."""
    from compactlm.registry import list_methods

    options: dict[str, tuple[object, list[str]]] = {}
    for m in list_methods():
        hints = typing.get_type_hints(m.config_cls)
        for f in dataclasses.fields(m.config_cls):
            if f.name in _RESERVED:
                continue
            tp, owners = options.get(f.name, (_flag_type(hints.get(f.name, str)), []))
            owners.append(m.name)
            options[f.name] = (tp, owners)
    return options


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "quantize",
        help="post-training quantization of a model into a run directory",
        description="Quantize a model with a registered method; writes <out>/model, quantization.json, "
        "quant_state.safetensors, config.json and report.json (atomically).",
    )
    p.add_argument("--model", default="smollm2-135m", help="embedded name, local folder, .gguf, hub id (default: %(default)s)")
    p.add_argument("--method", default="rtn", help="quantization method (compactlm methods); default: %(default)s")
    p.add_argument("--scheme", default="w4a16", help="w8a8 | w4a8 | w4a16 | w3a16 | w2a16, modifiers -g<N> -sym -kv8 (default: %(default)s)")
    p.add_argument("--calib", default="wiki", help="calibration corpus or file (default: %(default)s)")
    p.add_argument("--calib-samples", type=int, default=32, help="calibration sequences (default: %(default)s)")
    p.add_argument("--calib-seq-len", type=int, default=512, help="tokens per calibration sequence (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed for calibration sampling and learned methods")
    p.add_argument("--out", required=True, help="run directory to create")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    group = p.add_argument_group("method options (each applies to the methods named in its help)")
    for name, (tp, owners) in sorted(_method_options().items()):
        group.add_argument(f"--{name.replace('_', '-')}", dest=f"opt_{name}", type=tp, default=None,
                           help=f"option of {', '.join(owners)}")
    p.set_defaults(func=run)
    add_methods_parser(sub)


def run(args: argparse.Namespace) -> int:
    import torch

    from compactlm.api import quantize
    from compactlm.data import token_samples
    from compactlm.errors import CompactLMError
    from compactlm.io import atomic_dir, write_json
    from compactlm.models import load_model, save_quantized
    from compactlm.quant.scheme import QuantScheme
    from compactlm.registry import get_method

    method = get_method(args.method)
    scheme = QuantScheme.parse(args.scheme)
    options = {k[4:]: v for k, v in vars(args).items() if k.startswith("opt_") and v is not None}
    fields = {f.name for f in dataclasses.fields(method.config_cls)}
    if "seed" in fields:
        options.setdefault("seed", args.seed)
    method.make_config(options)  # reject foreign flags before any slow work
    if args.calib_samples < 1 or args.calib_seq_len < 1:
        raise CompactLMError("--calib-samples and --calib-seq-len must be positive")
    torch.manual_seed(args.seed)
    model, tok = load_model(args.model)
    calib = None
    if method.needs_calibration or scheme.a_static:
        if tok is None:  # tiny random models have no tokenizer: random ids stand in
            calib = torch.randint(2, model.config.vocab_size, (args.calib_samples, args.calib_seq_len),
                                  generator=torch.Generator().manual_seed(args.seed))
        else:
            calib = token_samples(tok, args.calib, n=args.calib_samples, seq_len=args.calib_seq_len, seed=args.seed)
    with atomic_dir(args.out, overwrite=args.overwrite) as tmp:
        report = quantize(model, args.method, scheme, calib=calib, **options)
        config = {
            "command": "quantize", "model": args.model, "method": args.method, "scheme": scheme.name,
            "scheme_fields": scheme.to_dict(), "options": report["options"], "seed": args.seed,
            "calib": None if calib is None else {"source": args.calib, "samples": args.calib_samples,
                                                 "seq_len": args.calib_seq_len},
        }
        save_quantized(model, tok, tmp, extra_config={"method": args.method, "scheme": scheme.name})
        write_json(tmp / "config.json", config)
        write_json(tmp / "report.json", report)
    summary = {k: report[k] for k in ("method", "scheme", "seconds", "peak_mem_mb") if k in report}
    print(f"wrote {args.out}: {json.dumps(summary)}")
    return 0


def add_methods_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("methods", help="list quantization methods and their options")
    p.set_defaults(func=run_methods)


def run_methods(args: argparse.Namespace) -> int:
    from compactlm.registry import list_methods

    for m in list_methods():
        calib = "needs calibration" if m.needs_calibration else "no calibration"
        print(f"{m.name:<12} {m.description} ({calib})")
        for f in dataclasses.fields(m.config_cls):
            print(f"    --{f.name.replace('_', '-'):<16} default {f.default!r}")
    return 0
