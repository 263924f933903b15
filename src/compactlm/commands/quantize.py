"""``compactlm quantize`` and ``compactlm methods``.

Every method's options dataclass contributes its fields as flags (``--iters``, ``--rank``...) with
help text from the dataclass's ``Attributes:`` docs, so a new method needs no CLI code. A flag the
chosen method does not take, or a calibration flag for a run that needs no calibration, is a
one-line error naming the flag, the method and the flags it takes.

Resume: methods with a ``work_dir`` option (the reconstruction methods) keep their state in
``<out>.work`` beside the run directory unless ``--work-dir`` is given. A killed run rerun with the
same command continues from the last finished block; after success that default work directory is
removed, and ``--overwrite`` discards it before starting.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from pathlib import Path

from compactlm.commands import args as A

log = logging.getLogger(__name__)

_SPINE = ("model", "method", "scheme", "device", "data", "samples", "seq_len", "seed")
_CALIB = ("data", "samples", "seq_len")
_WORK_DIR_HELP = ("Directory for resumable state: a killed run rerun with the same command continues from its last "
                  "finished block. Default: <out>.work, removed after success and by --overwrite")

_options: dict[str, A.ConfigOption] = {}


def default_work_dir(out: str | Path) -> Path:
    """Where ``compactlm quantize --out OUT`` keeps resume state without ``--work-dir``: ``OUT.work``."""
    out = Path(out)
    return out.with_name(out.name + ".work")


def _configs() -> dict[str, type]:
    from compactlm.registry import list_methods

    return {m.name: m.config_cls for m in list_methods()}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "quantize",
        help="post-training quantization of a model into a run directory",
        description="Quantize a model with a method (compactlm methods); writes <out>/model, quantization.json, "
        "quant_state.safetensors, config.json and report.json (atomically). Reconstruction methods resume a killed "
        "run from <out>.work when the same command is run again.",
    )
    A.add_recipe(p)
    A.add_model(p)
    p.add_argument("--method", default="rtn", help="quantization method (compactlm methods); default: %(default)s")
    p.add_argument("--scheme", default="w4a16",
                   help="w8a8 | w4a8 | w4a16 | w3a16 | w2a16 | gguf-q4_0 ..., modifiers -g<N> -sym -kv8 (default: %(default)s)")
    A.add_device(p)
    A.add_data(p, data="wiki", samples=32, seq_len=512, what="calibration", data_aliases=["--calib"],
               samples_aliases=["--calib-samples"], seq_len_aliases=["--calib-seq-len"])
    A.add_seed(p, 0, "seed of calibration sampling and of learned methods")
    A.add_out(p)  # no --no-progress: the methods' bars have no switch yet (tqdm reads TQDM_DISABLE at import)
    group = p.add_argument_group("method options (each names the methods that take it)")
    _options.clear()
    _options.update(A.add_config_options(group, _configs(), skip={"seed"}, help_overrides={"work_dir": _WORK_DIR_HELP}))
    p.set_defaults(func=run)
    add_methods_parser(sub)


def _recipe(args: argparse.Namespace) -> dict:
    from compactlm.recipes import load_recipe

    if not args.recipe:
        return {}
    return load_recipe(args.recipe, known=set(_SPINE) | set(_options))


def run(args: argparse.Namespace) -> int:
    import torch

    from compactlm.api import quantize
    from compactlm.data import token_samples
    from compactlm.errors import CompactLMError
    from compactlm.io import atomic_dir, write_json
    from compactlm.models import load_model, save_quantized
    from compactlm.quant.scheme import QuantScheme
    from compactlm.registry import get_method

    recipe = _recipe(args)
    s = {k: A.value(args, k, recipe) for k in _SPINE}
    method = get_method(s["method"])
    scheme = QuantScheme.parse(s["scheme"])
    fields = {f.name for f in dataclasses.fields(method.config_cls)}
    takes = [A.flag_name(f) for f in sorted(fields - {"seed"})]
    _reject_foreign_options(args, recipe, method.name, fields, takes)
    options = {k: v for k, v in A.config_values(args, _options, recipe).items() if k in fields}
    if "seed" in fields:
        options.setdefault("seed", s["seed"])
    needs_calib = method.needs_calibration or scheme.a_static
    if not needs_calib:
        A.reject_unused(args, _CALIB, f"method {method.name!r} with scheme {scheme.name} (no calibration)", takes)
        bad = sorted(set(_CALIB) & set(recipe))
        if bad:
            raise CompactLMError(f"--recipe: {args.recipe}: key {bad[0]!r} is not used by method {method.name!r} with "
                                 f"scheme {scheme.name} (no calibration)")
    if s["samples"] < 1 or s["seq_len"] < 1:
        raise CompactLMError(f"--samples / --seq-len: expected positive numbers, got {s['samples']} and {s['seq_len']}")
    out = Path(args.out)
    work_dir = _default_work_dir(out, fields, options, overwrite=args.overwrite)
    method.make_config(options)  # option values checked before any slow work
    if out.exists() and any(out.iterdir()) and not args.overwrite:
        raise CompactLMError(f"--out: {out} already exists; choose another path or pass --overwrite")
    device = A.device_of(args)
    torch.manual_seed(s["seed"])
    model, tok = load_model(s["model"], device=device)
    calib = None
    if needs_calib:
        if tok is None:  # tiny random models have no tokenizer: random ids stand in
            calib = torch.randint(2, model.config.vocab_size, (s["samples"], s["seq_len"]),
                                  generator=torch.Generator().manual_seed(s["seed"]))
        else:
            calib = token_samples(tok, s["data"], n=s["samples"], seq_len=s["seq_len"], seed=s["seed"])
    with atomic_dir(out, overwrite=args.overwrite) as tmp:
        try:
            report = quantize(model, method.name, scheme, calib=calib, **options)
        except CompactLMError as e:
            if work_dir is not None and str(e).startswith("--work-dir"):
                raise CompactLMError(f"--out: {work_dir} holds the state of an interrupted run with other settings; "
                                     "rerun that command to finish it, or pass --overwrite to discard it") from None
            raise
        if work_dir is not None:  # a default work dir is an implementation detail of this run
            report["options"]["work_dir"] = None
            report["work_dir"] = None
        config = {
            "command": "quantize", "model": s["model"], "method": method.name, "scheme": scheme.name,
            "scheme_fields": scheme.to_dict(), "options": report["options"], "seed": s["seed"],
            "calib": None if calib is None else {"source": s["data"], "samples": s["samples"], "seq_len": s["seq_len"]},
        }
        save_quantized(model, tok, tmp, extra_config={"method": method.name, "scheme": scheme.name})
        write_json(tmp / "config.json", config)
        write_json(tmp / "report.json", report)
    if work_dir is not None:  # the output is saved: the default resume state has served its purpose
        remove_work_dir(work_dir)
    summary = {k: report[k] for k in ("method", "scheme", "seconds", "peak_mem_mb", "resumed_blocks") if k in report}
    print(f"wrote {out}: {json.dumps(summary)}")
    return 0


def _reject_foreign_options(args, recipe: dict, method: str, fields: set[str], takes: list[str]) -> None:
    from compactlm.errors import CompactLMError

    foreign = [o.dest for name, o in _options.items() if name not in fields]
    A.reject_unused(args, foreign, f"method {method!r}", takes)
    bad = sorted(k for k in recipe if k in _options and k not in fields)
    if bad:
        raise CompactLMError(f"--recipe: {args.recipe}: key {bad[0]!r} is not an option of method {method!r}; "
                             f"it takes {', '.join(takes) or 'no options'}")


def remove_work_dir(path: Path) -> None:
    from compactlm.ptq.store import remove_work_dir as remove

    remove(path)


def _default_work_dir(out: Path, fields: set[str], options: dict, overwrite: bool) -> Path | None:
    """Set ``options['work_dir']`` to ``<out>.work`` for resumable methods when none was given."""
    if "work_dir" not in fields or options.get("work_dir") is not None:
        return None
    work = default_work_dir(out)
    if overwrite and work.exists():
        log.info("--overwrite: discarding the resume state in %s", work)
        remove_work_dir(work)  # refuses a folder that is not a reconstruction work dir
    elif work.exists():
        log.info("resuming from %s", work)
    options["work_dir"] = str(work)
    return work


def add_methods_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("methods", help="list quantization methods and their options")
    p.set_defaults(func=run_methods)


def run_methods(args: argparse.Namespace) -> int:
    from compactlm.registry import list_methods

    for m in list_methods():
        calib = "needs calibration" if m.needs_calibration else "no calibration"
        print(f"{m.name:<12} {m.description} ({calib})")
        docs = A.field_docs(m.config_cls)
        for f in dataclasses.fields(m.config_cls):
            flag = "--seed" if f.name == "seed" else A.flag_name(f.name)
            doc = _WORK_DIR_HELP if f.name == "work_dir" else A.plain_doc(docs.get(f.name, "")).replace("%%", "%")
            print(f"    {flag:<18} default {f.default!r:<10} {doc}")
    return 0
