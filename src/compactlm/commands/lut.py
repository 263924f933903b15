"""``compactlm lut fit|apply|eval``: NN-LUT tables (Yu et al., DAC 2022) for GELU, SiLU, softmax and norms.

* ``fit``: fit NN-LUT (or uniform) tables and write them to a folder as JSON and fixed-point JSON.
* ``apply``: replace a model's non-linearities by tables (optionally calibrated on real
  activations), evaluate it, and write a run directory (tables used + ``report.json``).
* ``eval``: error tables of tables against the exact functions and the uniform baseline, and with
  ``--model``, metrics of the model in FP and with the tables applied side by side.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from compactlm.commands import args as A

log = logging.getLogger(__name__)


def _add_table_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tables", default="default",
                   help="table folder written by `compactlm lut fit`, or 'default' (NN-LUT fitted with default settings, cached)")
    p.add_argument("--entries", type=int, default=16, help="table size N for --tables default (default: %(default)s)")
    p.add_argument("--bits", type=int, default=None,
                   help="use the fixed-point tables <fn>.q<bits>.json of --tables (computed on the fly for 'default')")


def _add_model_args(p: argparse.ArgumentParser, required: bool) -> None:
    A.add_model(p, default=None, required=required,
                help="embedded name (smollm2-135m, minilm-l6...), tiny-<model_type>, local folder, run dir, .gguf or hub id"
                + ("" if required else "; evaluates the model in FP and with the tables (default: tables only)"))
    p.add_argument("--ops", default="gelu,silu,softmax,layernorm,rmsnorm",
                   help="operations to replace (default: all; ops the model lacks are skipped)")
    p.add_argument("--ppl", default=None, help="perplexity corpus, e.g. wiki-eval (causal LMs)")
    p.add_argument("--max-tokens", type=int, default=40960, help="perplexity tokens (default: %(default)s)")
    p.add_argument("--seq-len", type=int, default=512, help="perplexity window length (default: %(default)s)")
    p.add_argument("--tasks", default="", help="comma-separated zero-shot tasks, e.g. arc_easy,piqa (causal LMs)")
    p.add_argument("--limit", type=int, default=None, help="first N examples per zero-shot / classification task")
    p.add_argument("--classify", default=None, help="classification task for a fine-tuned classifier, e.g. sarcasm (test split)")
    A.add_device(p)


_EVAL_FLAGS = {"ppl": ("max_tokens", "seq_len"), "limit": ("limit",)}
_MODEL_FLAGS = ("ops", "ppl", "max_tokens", "seq_len", "tasks", "limit", "classify", "device")
_CALIB_FLAGS = ("data", "calib_seq_len", "steps", "seed")


def _reject_unused_eval_flags(args, tasks: list[str]) -> None:
    """--max-tokens/--seq-len without --ppl, --limit without --tasks/--classify: flags that would be ignored."""
    if not args.ppl:
        A.reject_unused(args, _EVAL_FLAGS["ppl"], "a run without --ppl", ["--ppl"])
    if not (tasks or args.classify):
        A.reject_unused(args, _EVAL_FLAGS["limit"], "a run without --tasks or --classify", ["--tasks", "--classify"])


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("lut", help="NN-LUT: fit, apply and evaluate look-up tables for non-linearities",
                       description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    lsub = p.add_subparsers(dest="lut_command", metavar="ACTION", required=True)

    f = lsub.add_parser("fit", help="fit tables and write them as JSON + fixed-point JSON")
    A.add_out(f, help="folder for <fn>.json and <fn>.q<bits>.json (written atomically)")
    f.add_argument("--fn", default="all", help="comma-separated: gelu,silu,exp,reciprocal,rsqrt (default: all)")
    f.add_argument("--entries", type=int, default=16, help="table size N (default: %(default)s)")
    f.add_argument("--method", choices=("nn-lut", "uniform"), default="nn-lut", help="default: %(default)s")
    A.add_steps(f, None, "Adam steps of the network fit (default: FitConfig's)")
    A.add_seed(f, 0, "seed of the sampled inputs")
    f.add_argument("--bits", type=int, default=16, help="fixed-point width; 0 = float JSON only (default: %(default)s)")
    f.set_defaults(func=run_fit)

    a = lsub.add_parser("apply", help="replace a model's non-linearities by tables, evaluate, write a run dir")
    _add_model_args(a, required=True)
    _add_table_args(a)
    A.add_data(a, data="wiki", samples=0, seq_len=256, what="calibration", data_aliases=["--calib"],
               samples_aliases=["--calibrate"], seq_len_flag="--calib-seq-len")
    A.add_steps(a, None, "Adam steps of the calibration re-fit (default: FitConfig's)", aliases=["--fit-steps"])
    A.add_seed(a, 0, "seed of the calibration sequences")
    A.add_out(a, required=False, help="run directory: tables/ (the tables used), config.json, report.json; "
              "loadable by `compactlm eval --model`")
    a.set_defaults(func=run_apply)

    e = lsub.add_parser("eval", help="error tables of tables vs uniform, and model metrics FP vs tables")
    _add_model_args(e, required=False)
    _add_table_args(e)
    A.add_out(e, required=False, help="write the result JSON here", overwrite=False)
    e.set_defaults(func=run_eval)


def _functions(spec: str) -> list[str]:
    from compactlm.errors import CompactLMError
    from compactlm.lut.functions import TARGETS

    names = list(TARGETS) if spec in ("all", "") else [s.strip() for s in spec.split(",") if s.strip()]
    bad = [n for n in names if n not in TARGETS]
    if bad:
        raise CompactLMError(f"--fn: unknown function(s) {', '.join(bad)}; choose from {', '.join(TARGETS)} or all")
    return names


def _check_entries(n: int) -> None:
    from compactlm.errors import CompactLMError

    if not 2 <= n <= 4096:
        raise CompactLMError(f"--entries: expected 2..4096, got {n}")


def _resolve_tables(args, fns=None) -> dict:
    """``{fn: table}`` from ``--tables`` / ``--entries`` / ``--bits``."""
    from compactlm.lut.export import default_luts, load_luts, to_fixed_point
    from compactlm.lut.functions import TARGETS

    _check_entries(args.entries)
    if args.tables == "default":
        tables = default_luts(tuple(fns or TARGETS), entries=args.entries)
        return {f: to_fixed_point(t, args.bits) for f, t in tables.items()} if args.bits else tables
    return load_luts(args.tables, fixed_bits=args.bits)


def run_fit(args: argparse.Namespace) -> int:
    from compactlm.errors import CompactLMError
    from compactlm.io import atomic_dir, write_json
    from compactlm.lut.export import save_luts
    from compactlm.lut.fit import fit_lut
    from compactlm.lut.functions import get_target
    from compactlm.lut.table import uniform_lut

    fns = _functions(args.fn)
    _check_entries(args.entries)
    if args.steps is not None and args.steps < 0:
        raise CompactLMError(f"--steps: expected ≥ 0, got {args.steps}")
    if args.method == "uniform":
        A.reject_unused(args, ("steps", "seed"), "--method uniform (no network fit)", ["--fn", "--entries", "--bits"])
    start = time.perf_counter()
    tables = {}
    for fn in fns:
        t = get_target(fn)
        if args.method == "uniform":
            tables[fn] = uniform_lut(t.fn, args.entries, t.lo, t.hi, fn)
        else:
            over = {"seed": args.seed, **({"steps": args.steps} if args.steps is not None else {})}
            tables[fn] = fit_lut(fn, args.entries, **over)
    rows = _error_rows(tables, args.bits or None)
    with atomic_dir(args.out, args.overwrite) as tmp:
        save_luts(tmp, tables, fixed_bits=args.bits or None)
        write_json(tmp / "report.json", {"method": args.method, "entries": args.entries, "bits": args.bits,
                                         "errors": rows, "seconds": round(time.perf_counter() - start, 2)})
    print(_format_errors(rows))
    print(f"wrote {len(tables)} table(s) to {args.out}")
    return 0


def _error_rows(tables: dict, bits: int | None) -> list[dict]:
    """Max / mean abs error of each table, its same-size uniform baseline and (if ``bits``) its integer version."""
    from compactlm.lut.export import FixedPointLUT, fixed_point_bound, fixed_point_error, to_fixed_point
    from compactlm.lut.functions import TARGETS
    from compactlm.lut.table import table_error, uniform_lut

    rows = []
    for fn, table in tables.items():
        t = TARGETS[fn]
        row = {"fn": fn, "method": table.method, "entries": table.entries, "range": [table.lo, table.hi]}
        if isinstance(table, FixedPointLUT):
            row.update(table_error(table, t.fn), bits=table.bits)
        else:
            row.update(table_error(table, t.fn))
            if bits:
                q = to_fixed_point(table, bits)
                fx = fixed_point_error(table, q)
                row.update(bits=bits, fixed_max_abs_err=fx["max_abs_err"], fixed_added_bound=fixed_point_bound(q))
        uni = table_error(uniform_lut(t.fn, table.entries, t.lo, t.hi, fn), t.fn)
        row.update(uniform_max_abs_err=uni["max_abs_err"], uniform_mean_abs_err=uni["mean_abs_err"])
        rows.append(row)
    return rows


def _format_errors(rows: list[dict]) -> str:
    lines = [f"{'fn':<11}{'method':<19}{'N':>4}{'max err':>11}{'mean err':>11}{'uniform max':>13}{'uniform mean':>14}"
             f"{'fixed max':>11}"]
    for r in rows:
        fixed = f"{r['fixed_max_abs_err']:>11.2e}" if "fixed_max_abs_err" in r else f"{'':>11}"
        lines.append(f"{r['fn']:<11}{r['method']:<19}{r['entries']:>4}{r['max_abs_err']:>11.2e}{r['mean_abs_err']:>11.2e}"
                     f"{r['uniform_max_abs_err']:>13.2e}{r['uniform_mean_abs_err']:>14.2e}{fixed}")
    return "\n".join(lines)


def _load(args):
    from compactlm.errors import CompactLMError
    from compactlm.models import load_model
    from compactlm.models.loading import base_model_name

    device = A.device_of(args)
    head = "sequence-classification" if args.classify else "auto"
    model, tok = load_model(args.model, head=head, device=device)
    if tok is None and base_model_name(args.model).startswith("tiny-"):
        from compactlm.data.char_tokenizer import char_tokenizer

        tok = char_tokenizer()
    if tok is None and (args.ppl or args.tasks or args.classify or getattr(args, "samples", 0)):
        raise CompactLMError(f"--model: {args.model!r} has no tokenizer, so text cannot be evaluated")
    return model, tok


def _check_eval_args(args) -> list[str]:
    from compactlm.data import TASKS
    from compactlm.errors import CompactLMError

    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    for t in tasks:
        if t not in TASKS:
            raise CompactLMError(f"--tasks: unknown task {t!r}; choose from {', '.join(TASKS)}")
    if args.limit is not None and args.limit < 1:
        raise CompactLMError("--limit must be a positive number of examples")
    if args.classify:
        from compactlm.data.classification import get_task

        get_task(args.classify)
    _reject_unused_eval_flags(args, tasks)
    return tasks


def _metrics(model, tok, args, tasks: list[str]) -> dict:
    """Perplexity / zero-shot / classification accuracy as requested by the flags."""
    from compactlm.eval import perplexity, zeroshot

    out = {}
    if args.ppl:
        r = perplexity(model, tok, args.ppl, seq_len=args.seq_len, max_tokens=args.max_tokens)
        out.update(ppl=r["ppl"], ppl_tokens=r["tokens"])
    if tasks:
        r = zeroshot(model, tok, tasks, limit=args.limit)
        out.update(zeroshot_avg=r["avg_acc"], zeroshot_avg_norm=r["avg_acc_norm"],
                   **{f"acc_{k}": v["acc"] for k, v in r["tasks"].items()})
    if args.classify:
        from compactlm.encoder.finetune import accuracy, check_classifier, encode_split

        check_classifier(model, args.classify)
        out[f"{args.classify}_acc"] = accuracy(model, encode_split(tok, args.classify, "test", args.limit, 0, None))
    return out


def _calibration_batches(model, tok, args) -> list:
    from compactlm.errors import CompactLMError

    n = args.samples
    if args.classify:
        from compactlm.encoder.finetune import encode_split

        enc = encode_split(tok, args.classify, "train", n, args.seed, None)
        return [{k: v[i:i + 8] for k, v in enc.items() if k != "labels"} for i in range(0, n, 8)]
    from compactlm.data import token_samples

    ids = token_samples(tok, args.data, n, args.calib_seq_len, seed=args.seed)
    return [ids[i:i + 4] for i in range(0, n, 4)]


def run_apply(args: argparse.Namespace) -> int:
    from compactlm.errors import CompactLMError
    from compactlm.io import atomic_dir, write_json
    from compactlm.lut.apply import apply_luts, calibrate_luts
    from compactlm.lut.export import save_luts
    from compactlm.lut.functions import check_ops, needed_functions

    tasks = _check_eval_args(args)
    ops = check_ops(args.ops)
    if args.samples < 0:
        raise CompactLMError(f"--samples: expected a number of calibration sequences ≥ 0, got {args.samples}")
    if not args.samples:
        A.reject_unused(args, _CALIB_FLAGS, "lut apply without calibration (--samples 0)", ["--samples N"])
    if args.tables != "default" and not args.samples:
        A.reject_unused(args, ("entries",), f"--tables {args.tables} without calibration (the tables' own size)",
                        ["--tables default", "--samples N"])
    if not (args.out or args.ppl or tasks or args.classify):
        raise CompactLMError("lut apply: nothing to do; pass --out RUN_DIR and/or --ppl / --tasks / --classify")
    if args.samples and args.bits:
        raise CompactLMError("--bits: calibration fits float tables; export them with --out, then apply with --bits")
    start = time.perf_counter()
    tables = _resolve_tables(args, needed_functions(ops))
    model, tok = _load(args)
    if args.samples:
        over = {} if args.steps is None else {"steps": args.steps}
        cal = calibrate_luts(model, _calibration_batches(model, tok, args), ops=ops, entries=args.entries, **over)
        tables = {**tables, **cal}
    handle = apply_luts(model, tables, ops=ops)
    report = {"model": args.model, "ops": list(ops), **handle.report(), "metrics": _metrics(model, tok, args, tasks)}
    report["seconds"] = round(time.perf_counter() - start, 2)
    _print_report(report)
    if args.out:
        used = {f: tables[f] for f in handle.tables}
        with atomic_dir(args.out, args.overwrite) as tmp:
            if args.bits:  # fixed-point tables as `lut fit` writes them: tables/<fn>.q<bits>.json
                for f, t in used.items():
                    write_json(tmp / "tables" / f"{f}.q{args.bits}.json", t.to_dict())
            else:
                save_luts(tmp / "tables", used, fixed_bits=16)
            write_json(tmp / "config.json", _run_config(args, ops))
            write_json(tmp / "report.json", report)
        again = f"--tables {args.out}/tables" + (f" --bits {args.bits}" if args.bits else "")
        print(f"wrote {args.out} (compactlm eval --model {args.out}; apply to another model with {again})")
    return 0


def _run_config(args: argparse.Namespace, ops) -> dict:
    """``config.json`` of a LUT run: the settings, and what :func:`compactlm.models.load_model` needs to
    rebuild the model (``command``/``lut_command``, base ``model`` and its absolute ``model_path``, ``ops``, ``bits``)."""
    config = {k: v for k, v in vars(args).items() if k != "func" and not k.startswith("_")}
    config.update(command="lut", lut_command="apply", ops=list(ops), bits=args.bits or None)
    if Path(args.model).expanduser().exists():
        config["model_path"] = str(Path(args.model).expanduser().resolve())
    return config


def _print_report(report: dict) -> None:
    print(f"model: {report['model']}")
    print("replaced: " + (", ".join(f"{k} x{v}" for k, v in report["replaced"].items()) or "nothing"))
    for k, v in report.get("metrics", {}).items():
        print(f"  {k:<24}{v:.4f}" if isinstance(v, float) else f"  {k:<24}{v}")


def run_eval(args: argparse.Namespace) -> int:
    from compactlm.errors import CompactLMError
    from compactlm.io import write_json
    from compactlm.lut.apply import apply_luts
    from compactlm.lut.functions import check_ops

    if not args.model:
        A.reject_unused(args, _MODEL_FLAGS, "lut eval without --model (table errors only)", ["--model"])
    tasks = _check_eval_args(args)
    start = time.perf_counter()
    tables = _resolve_tables(args)
    result: dict = {"tables": args.tables, "errors": _error_rows(tables, None if args.bits else 16)}
    print(_format_errors(result["errors"]))
    if args.model:
        if not (args.ppl or tasks or args.classify):
            raise CompactLMError("--model: pass --ppl CORPUS, --tasks T1,T2 or --classify TASK to evaluate it")
        ops = check_ops(args.ops)
        model, tok = _load(args)
        result["model"] = args.model
        result["fp"] = _metrics(model, tok, args, tasks)
        with apply_luts(model, tables, ops=ops) as handle:
            result["lut"] = _metrics(model, tok, args, tasks)
            result["replaced"] = dict(handle.replaced)
        print(f"model: {args.model}; replaced: " + ", ".join(f"{k} x{v}" for k, v in result["replaced"].items()))
        print(f"  {'metric':<24}{'fp':>10}{'lut':>10}")
        for k, v in result["fp"].items():
            print(f"  {k:<24}{v:>10.4f}{result['lut'][k]:>10.4f}")
    result["seconds"] = round(time.perf_counter() - start, 2)
    if args.out:
        write_json(args.out, result)
        print(f"wrote {args.out}")
    return 0
