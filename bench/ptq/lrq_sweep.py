"""LRQ as its authors run it (issue 14): rank rule, 2-D clip init, held-out block loss, out-of-domain PPL.

A small, resumable sweep on ``smollm2-135m`` at W3A16 (default 20 iterations per block, 32 x 256
``wiki`` calibration tokens, the PTQ benchmark's calibration file): FlexRound, LRQ low rank
everywhere (``rank_rule=all``), the authors' Llama-2-7B hybrid (``rank_rule=authors``: attention
low rank, MLP full) with and without the authors' 2-D clip search (``clip=lp2d``). Every row
reports train and held-out block loss (summed over the 30 blocks; 1/8 of the calibration samples are
held out of every training batch), perplexity on ``wiki-eval`` (in domain: the calibration is
``wiki``) and on ``c4-sample`` (web text the calibration does not contain), learned parameters,
quantization seconds and reconstruction iterations per second (``it_per_s``).

Each row runs in its own process and is appended to ``bench/results/ptq-lrq.json`` when it
finishes (flat records with command, seed, device, budget); ``ptq-lrq.md`` / ``ptq-lrq.png`` are
rewritten after each row. A rerun skips finished rows; a killed learned row resumes from its last
finished block (``runs/bench-ptq-lrq/work/<row>``).

Usage::

    nice -n 10 env OMP_NUM_THREADS=1 COMPACTLM_THREADS=1 .venv/bin/python bench/ptq/lrq_sweep.py
    .venv/bin/python bench/ptq/lrq_sweep.py --rows fp,flexround,lrq-all     # a subset
    .venv/bin/python bench/ptq/lrq_sweep.py --report                        # only rewrite md / png
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))

from records import append_record, read_records  # noqa: E402
from run import load_calib  # noqa: E402  (the PTQ benchmark's calibration file, same model)

log = logging.getLogger("bench.ptq.lrq")
MODEL = "smollm2-135m"
RESULTS = ROOT / "bench" / "results" / "ptq-lrq.json"
OOD = "c4-sample"
DEFAULT_LR = 3e-3

# name -> (method, options); the order is the priority order of a run
ROWS: dict[str, tuple[str, dict]] = {
    "fp": ("fp", {}),
    "flexround": ("flexround", {}),
    "lrq-all": ("lrq", {"rank_rule": "all"}),
    "lrq-authors": ("lrq", {"rank_rule": "authors"}),
    "lrq-authors-lp2d": ("lrq", {"rank_rule": "authors", "clip": "lp2d"}),
    "lrq-all-lp2d": ("lrq", {"rank_rule": "all", "clip": "lp2d"}),
    "lrq-saving": ("lrq", {"rank_rule": "saving", "saving_fraction": 0.4}),
    "flexround-lp2d": ("flexround", {"clip": "lp2d"}),
    "rtn": ("rtn", {}),  # the clip-search ablation without learning: min/max vs the 2-D search
    "rtn-lp2d": ("rtn", {"clip": "lp2d"}),
    "gptq": ("gptq", {}),  # the peer through llm-compressor (.venv-peers), the PTQ benchmark's checkpoint
    "autoround": ("autoround", {}),  # the peer: quantized by peers_autoround.py in .venv-peers, scored here
}
PEERS = ROOT / "runs" / "peers"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", default="fp,flexround,lrq-all,lrq-authors,lrq-authors-lp2d",
                   help=f"comma list of {', '.join(ROWS)}")
    p.add_argument("--scheme", default="w3a16")
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--lr", type=float, default=DEFAULT_LR)
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--calib-samples", type=int, default=32)
    p.add_argument("--calib-seq-len", type=int, default=256)
    p.add_argument("--calib-file", default=None, help="default: runs/peers/calib-wiki-<N>x<L>[-s<seed>].safetensors (seed 0 unsuffixed)")
    p.add_argument("--ppl-tokens", type=int, default=8192, help="tokens per perplexity corpus")
    p.add_argument("--zeroshot-limit", type=int, default=0,
                   help="examples per zero-shot task (arc_easy, arc_challenge, hellaswag, piqa, winogrande); the "
                   "issue asks >= 250 to rank methods (~15 core-minutes per row at 250); 0: none")
    p.add_argument("--eval-every", type=int, default=0,
                   help="measure train and held-out block loss every N iterations of every block (the row's "
                   "curve_* fields and the curve plot; costs ~5 iterations a point); 0: only before / after")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu or cuda (the GPU run: gpu_lrq.sh)")
    p.add_argument("--amp", default=None, choices=["bf16", "fp16"], help="autocast of the reconstruction steps")
    p.add_argument("--results", default=str(RESULTS))
    p.add_argument("--work", default="runs/bench-ptq-lrq")
    p.add_argument("--report", action="store_true")
    p.add_argument("--row", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.calib_file is None:
        # a seed is the calibration draw as well as the training randomness: each seed its own file
        suffix = f"-s{args.seed}" if args.seed else ""
        args.calib_file = f"runs/peers/calib-wiki-{args.calib_samples}x{args.calib_seq_len}{suffix}.safetensors"
    return args


def row_variant(name: str, args) -> str:
    """Row key: name, scheme, budget, seed, and the learning rate when it is not the default (an LR
    sweep row is a row of its own; the peer's is AutoRound's own rule)."""
    lr = "" if args.lr == DEFAULT_LR or ROWS[name][0] in ("fp", "rtn", "gptq", "autoround") else f"|lr={args.lr:g}"
    return f"{name}|{args.scheme}|iters={args.iters}|seed={args.seed}{lr}"


def autoround_dir(args) -> Path:
    """The folder ``peers_autoround.py`` writes for this scheme / budget / seed. A dynamic per-token
    activation scheme (W4A8) reads the weight-only cell of the same weight bits: our engine also
    reconstructs those weights weight-only and quantizes activations at evaluation (the LRQ paper's
    W4A8 protocol), so both sides see the same thing."""
    from peers_autoround import cell_name

    from compactlm.quant.scheme import QuantScheme

    scheme = QuantScheme.parse(args.scheme)
    if scheme.a_bits is not None and scheme.a_static:
        raise SystemExit(f"--rows autoround: {args.scheme} has static activation ranges, which AutoRound's "
                         "weight-only tuning does not calibrate; use a weight-only or per-token scheme")
    weights = args.scheme if scheme.a_bits is None else f"w{scheme.w_bits}a16"
    return PEERS / cell_name(weights, args.iters, args.seed)


def quantize_inputs(model, scheme_name: str) -> int:
    """Fake-quantize the input of every block linear of ``model`` as ``scheme_name``'s activations
    (forward pre-hooks; nothing when the scheme keeps activations in float). Returns the hook count."""
    import torch

    from compactlm.models.specs import get_blocks
    from compactlm.quant.activation import act_quantizer_for
    from compactlm.quant.scheme import QuantScheme

    scheme = QuantScheme.parse(scheme_name)
    if scheme.a_bits is None:
        return 0
    n = 0
    for block in get_blocks(model):
        for mod in block.modules():
            if isinstance(mod, torch.nn.Linear):
                quantizer = act_quantizer_for(scheme)
                mod.register_forward_pre_hook(lambda _m, args, q=quantizer: (q(args[0]), *args[1:]))
                n += 1
    return n


def curve_fields(blocks: list[dict]) -> dict:
    """The blocks' loss curves (``--eval-every``) summed over blocks at each measured iteration:
    ``curve_iters``, ``curve_train_sum``, ``curve_holdout_sum`` (nothing when no block has a curve, or
    when a resumed block's curve is missing: a sum over part of the blocks would mislead)."""
    curves = [b.get("curve") for b in blocks]
    if not curves or any(not c for c in curves) or len({tuple(p[0] for p in c) for c in curves}) != 1:
        return {}
    iters = [p[0] for p in curves[0]]
    return {"curve_iters": iters,
            "curve_train_sum": [round(sum(c[k][1] for c in curves), 4) for k in range(len(iters))],
            "curve_holdout_sum": [round(sum(c[k][2] for c in curves), 4) for k in range(len(iters))]}


def reconstruction_seconds(report: dict) -> float:
    """The row's reconstruction time: the wall time of this run, or, when blocks were replayed from an
    earlier (interrupted or re-evaluated) run's work directory, the sum of every block's own seconds —
    the replay itself takes seconds and would otherwise stand for the method's time."""
    if report.get("resumed_blocks"):
        return round(sum(b["seconds"] for b in report["blocks"]), 2)
    return report["seconds"]


def load_autoround(model, folder: Path, bits: int) -> dict:
    """Load AutoRound's fake-quantized weights from ``folder`` into ``model`` (every tensor must match;
    a tied ``lm_head`` may be absent), check every block linear holds at most ``2^bits`` values per
    output channel, and return the row's fields (seconds and settings from ``peer_meta.json``)."""
    import torch
    from safetensors.torch import load_file

    from compactlm.models.specs import get_blocks

    if not (folder / "peer_meta.json").is_file():
        raise SystemExit(f"--rows autoround: {folder} not found; run `make autoround` and .venv/bin/python bench/ptq/peers_autoround.py "
                         "with the same --schemes / --iters / --seed first")
    meta = json.loads((folder / "peer_meta.json").read_text())
    missing, unexpected = model.load_state_dict(load_file(str(folder / "model.safetensors")), strict=False)
    missing = [k for k in missing if not (k == "lm_head.weight" and model.config.tie_word_embeddings)]
    if missing or unexpected:
        raise SystemExit(f"{folder}: weights do not match the model (missing {missing[:3]}, unexpected {unexpected[:3]})")
    learned = 0
    for i, block in enumerate(get_blocks(model)):
        for name, mod in block.named_modules():
            if isinstance(mod, torch.nn.Linear):
                levels = max(len(row.unique()) for row in mod.weight.detach())
                if levels > 2**bits:
                    raise SystemExit(f"{folder}: block {i} {name} has {levels} values in a row, more than 2^{bits}")
                learned += mod.weight.numel() + 2 * mod.weight.shape[0]  # SignRound: offset per weight, 2 scales per row
    return {"seconds": meta["seconds"], "learned_params": learned, "peer_settings": meta["settings"],
            "peer_versions": meta["versions"], "peer_threads": meta["threads"]}


def run_row(name: str, args, command: str) -> None:
    import torch

    from compactlm.api import peak_memory_mb, quantize
    from compactlm.eval import perplexity
    from compactlm.models import load_model

    torch.set_num_threads(int(os.environ.get("COMPACTLM_THREADS", torch.get_num_threads())))
    torch.manual_seed(args.seed)
    method, extra = ROWS[name]
    model, tok = load_model(MODEL, device=args.device)
    fields: dict = {"seconds": 0.0, "learned_params": 0}
    if method == "autoround":
        from compactlm.quant.scheme import QuantScheme

        fields = load_autoround(model, autoround_dir(args), QuantScheme.parse(args.scheme).w_bits)
        fields["act_quant_linears"] = quantize_inputs(model, args.scheme)
    elif method == "gptq":
        from types import SimpleNamespace

        from compactlm.export import load_compressed_tensors
        from grid import Row
        from run import peer_checkpoint

        peer_args = SimpleNamespace(peers_out=str(PEERS), calib_samples=args.calib_samples, calib_seq_len=args.calib_seq_len,
                                    calib_file=args.calib_file, seed=args.seed, peers_python=str(ROOT / ".venv-peers/bin/python"))
        folder, meta = peer_checkpoint(Row("gptq", args.scheme, "main"), peer_args)
        model = load_compressed_tensors(folder).to(args.device)
        fields = {"seconds": meta["seconds"], "learned_params": 0, "checkpoint": str(folder), "peer_recipe": meta["recipe"]}
    elif method == "rtn":
        report = quantize(model, "rtn", args.scheme, **extra)
        fields = {"seconds": report["seconds"], "learned_params": 0,
                  "options": {k: v for k, v in report["options"].items() if k not in ("work_dir", "spill_mb")}}
    elif method != "fp":
        calib = load_calib(args)
        options = {"iters": args.iters, "lr": args.lr, "batch_size": args.batch_size, "seed": args.seed, "amp": args.amp,
                   "holdout": 0.125, "eval_every": args.eval_every, "work_dir": str(Path(args.work) / "work" / row_variant(name, args).replace("|", "_")), **extra}
        report = quantize(model, method, args.scheme, calib=calib, **options)
        blocks = report["blocks"]
        fields = {
            "seconds": reconstruction_seconds(report), "learned_params": report["learned_params"],
            **({"seconds_source": "blocks"} if report.get("resumed_blocks") else {}),
            "it_per_s": report.get("it_per_s"), "resumed_blocks": report.get("resumed_blocks", 0),
            "holdout_samples": report["holdout"]["count"],
            "train_loss_before_sum": round(sum(b["train_loss_before"] for b in blocks), 4),
            "train_loss_after_sum": round(sum(b["train_loss_after"] for b in blocks), 4),
            "holdout_loss_before_sum": round(sum(b["holdout_loss_before"] or 0 for b in blocks), 4),
            "holdout_loss_after_sum": round(sum(b["holdout_loss_after"] or 0 for b in blocks), 4),
            "holdout_loss_after": [b["holdout_loss_after"] for b in blocks],
            "train_loss_after": [b["train_loss_after"] for b in blocks],
            "options": {k: v for k, v in report["options"].items() if k not in ("work_dir", "spill_mb")},
        }
        fields.update(curve_fields(blocks))
        if "rank_rule" in report:
            fields["linears"] = {k: {"form": v["form"], "rank": v["rank"], "learned_params": v["learned_params"]}
                                 for k, v in report["rank_rule"]["linears"].items()}
    model.eval()
    ppl = {}
    for corpus in ("wiki-eval", OOD):
        r = perplexity(model, tok, corpus, seq_len=512, max_tokens=args.ppl_tokens)
        ppl[f"ppl_{corpus.replace('-', '_')}"] = round(r["ppl"], 4)
        ppl["ppl_tokens"] = r["tokens"]
    if args.zeroshot_limit > 0:
        from compactlm.eval import zeroshot
        from records import ZEROSHOT_TASKS

        start = time.perf_counter()
        z = zeroshot(model, tok, list(ZEROSHOT_TASKS), limit=args.zeroshot_limit)
        ppl.update(zeroshot_avg=round(z["avg_acc"], 4), zeroshot_limit=args.zeroshot_limit,
                   zeroshot_seconds=round(time.perf_counter() - start, 1),
                   **{f"zs_{t}": round(v["acc"], 4) for t, v in z["tasks"].items()})
    record = {
        "row": name, "method": method, "scheme": args.scheme if method != "fp" else "fp32",
        "variant": row_variant(name, args), "model": MODEL, **fields, **ppl,
        "peak_mem_mb": round(peak_memory_mb(), 1),
        "calib": f"wiki {args.calib_samples}x{args.calib_seq_len}" if method not in ("fp", "rtn") else "",  # gptq: the same file
        "budget": ("no quantization" if method == "fp" else "no training" if method == "rtn" else
                   "GPTQ (llm-compressor 0.14: block 128, dampening 0.01, min/max observer), same calibration" if method == "gptq" else
                   f"{args.iters} iters/block x 30 blocks, batch {args.batch_size}x{args.calib_seq_len}, "
                   + (f"lr {fields['peer_settings']['lr'] or f'1/{args.iters} (AutoRound default)'}, no holdout"
                      if method == "autoround" else f"lr {args.lr} (cosine), holdout 1/8")),
        "device": (torch.cuda.get_device_name() if args.device.startswith("cuda") else
                   f"cpu, {torch.get_num_threads()} thread(s), nice 10 on a shared 2-core host (wall times inflated)"),
        "seed": args.seed, "command": command,
    }
    append_record(record, Path(args.results))


# ----------------------------------------------------------------------------- report


def label(r: dict) -> str:
    """Row name, with its learning rate when an LR sweep changed it."""
    lr = (r.get("options") or {}).get("lr")
    return r["row"] + ("" if lr in (None, DEFAULT_LR) else f" (lr {lr:g})")


def zs(group: list[dict]) -> str:
    """Zero-shot cell of a seed group: mean ± std over the seeds that were evaluated, with the examples
    per task, and which seeds when not all of them were."""
    done = [r for r in group if r.get("zeroshot_avg") is not None]
    if not done:
        return ""
    limits = sorted({r["zeroshot_limit"] for r in done})
    which = "" if len(done) == len(group) else f", seed{'s' if len(done) > 1 else ''} {', '.join(str(r['seed']) for r in done)}"
    return f"{_ms([100 * r['zeroshot_avg'] for r in done], '.1f')} ({'/'.join(map(str, limits))}{which})"


def resumed(r: dict) -> str:
    """Marker for a row that replayed finished blocks: its seconds are then the blocks' recorded times
    (``seconds_source == "blocks"``), or, in records written before that, the time of the rest only."""
    if not r.get("resumed_blocks"):
        return ""
    if r.get("seconds_source") == "blocks":
        return f" (replayed {r['resumed_blocks']} finished blocks: their recorded times)"
    return f" (resumed after {r['resumed_blocks']} blocks: time of the rest only)"


def _group_key(r: dict) -> str:
    """A row's key without its seed: rows that differ only in seed are one table row (mean ± std)."""
    return "|".join(part for part in r["variant"].split("|") if not part.startswith("seed="))


def _iters(r: dict) -> int:
    return int(next((p.split("=")[1] for p in r["variant"].split("|") if p.startswith("iters=")), 0)) \
        if r["method"] not in ("fp", "rtn", "gptq") else 0


def _ms(values: list[float], fmt: str = ".2f") -> str:
    values = [v for v in values if v is not None]
    if not values:
        return ""
    if len(values) == 1:
        return format(values[0], fmt)
    return f"{format(statistics.fmean(values), fmt)} ± {format(statistics.stdev(values), fmt)}"


def grouped(records: list[dict]) -> list[list[dict]]:
    """Records grouped over seeds, ordered by scheme, budget (iterations) and the ROWS order."""
    groups: dict[str, list[dict]] = {}
    for r in records:
        groups.setdefault(_group_key(r), []).append(r)
    order = list(ROWS)
    return sorted(groups.values(), key=lambda g: (g[0]["method"] != "fp", g[0]["scheme"], _iters(g[0]),
                                                  order.index(g[0]["row"]) if g[0]["row"] in order else 99, label(g[0])))


def mean_of(group: list[dict], key: str) -> float | None:
    values = [r[key] for r in group if r.get(key) is not None]
    return statistics.fmean(values) if values else None


def noise_note(a: list[dict], b: list[dict], key: str = "ppl_c4_sample") -> str:
    """`` (within noise: ...)`` when the means of ``key`` over two seed groups differ by less than the
    larger sample std (both with ≥ 2 seeds), or by under 5% when either has one seed (issue 14's
    threshold); else ``""``."""
    ma, mb = mean_of(a, key), mean_of(b, key)
    diff = abs(ma - mb)
    if len(a) > 1 and len(b) > 1:
        spread = max(statistics.stdev([r[key] for r in g]) for g in (a, b))
        return f" (within noise: Δ {diff:.2f} < std {spread:.2f})" if diff < spread else ""
    return f" (within noise: Δ {100 * diff / mb:.1f}% < 5% at one seed)" if diff < 0.05 * mb else ""


def paired_note(a: list[dict], b: list[dict], key: str = "ppl_c4_sample") -> str:
    """`` paired by seed ...``: the per-seed relative difference of ``key`` (a against b) over the seeds
    both groups ran (a seed is the calibration draw too, so the pairs share their data); ``""`` under
    two shared seeds."""
    by_seed = {r["seed"]: r[key] for r in b if r.get(key) is not None}
    pairs = [(r["seed"], r[key] / by_seed[r["seed"]] - 1) for r in sorted(a, key=lambda r: r["seed"])
             if r.get(key) is not None and r["seed"] in by_seed]
    if len(pairs) < 2:
        return ""
    lower = sum(d < 0 for _, d in pairs)
    return (f", paired by seed {', '.join(f'{s}: {100 * d:+.1f}%' for s, d in pairs)} "
            f"(LRQ lower at {lower} of {len(pairs)} seeds)")


def selection_lines(records: list[dict]) -> list[str]:
    """Per (scheme, iterations): the LRQ variant with the lowest held-out block loss (never the
    evaluation data), and the issue's targets read against FlexRound (best of its starts, by the same
    held-out rule), AutoRound and GPTQ."""
    groups = grouped(records)
    cells = sorted({(g[0]["scheme"], _iters(g[0])) for g in groups if g[0]["method"] == "lrq"})
    out = []
    for scheme, iters in cells:
        def pick(method: str):
            cands = [g for g in groups if g[0]["method"] == method and g[0]["scheme"] == scheme and _iters(g[0]) == iters
                     and mean_of(g, "holdout_loss_after_sum") is not None]
            return min(cands, key=lambda g: mean_of(g, "holdout_loss_after_sum")) if cands else None

        lrq, flex = pick("lrq"), pick("flexround")
        peers = {m: next((g for g in groups if g[0]["method"] == m and g[0]["scheme"] == scheme
                          and (m == "gptq" or _iters(g[0]) == iters)), None) for m in ("autoround", "gptq")}

        def ppl(g, corpus):
            return mean_of(g, f"ppl_{corpus}")

        def n(g):
            return f"{len(g)} seed{'s' if len(g) > 1 else ''}"

        text = (f"- **{scheme}, {iters} it/block**: LRQ chosen on held-out block loss: `{label(lrq[0])}` "
                f"({n(lrq)}; held-out {mean_of(lrq, 'holdout_loss_after_sum'):,.0f}, "
                f"wiki-eval {ppl(lrq, 'wiki_eval'):.2f}, {OOD} {ppl(lrq, 'c4_sample'):.2f}, "
                f"{lrq[0]['learned_params'] / 1e6:.1f}M learned).")
        checks = []
        if flex:
            checks.append(f"FlexRound (`{label(flex[0])}`, {n(flex)}) {OOD} {ppl(flex, 'c4_sample'):.2f}: LRQ "
                          + ("lower" if ppl(lrq, "c4_sample") < ppl(flex, "c4_sample") else "**not lower**")
                          + noise_note(lrq, flex) + paired_note(lrq, flex) + f"; params {lrq[0]['learned_params'] / max(flex[0]['learned_params'], 1):.2f}x (target ≤ 0.5x)")
        if peers["autoround"]:
            g = peers["autoround"]
            checks.append(f"AutoRound {OOD} {ppl(g, 'c4_sample'):.2f}: LRQ "
                          + ("lower" if ppl(lrq, "c4_sample") < ppl(g, "c4_sample") else "**not lower**") + noise_note(lrq, g))
        if peers["gptq"]:
            g = peers["gptq"]
            both = ppl(lrq, "wiki_eval") < ppl(g, "wiki_eval") and ppl(lrq, "c4_sample") < ppl(g, "c4_sample")
            checks.append(f"GPTQ {ppl(g, 'wiki_eval'):.2f} / {ppl(g, 'c4_sample'):.2f}: LRQ "
                          + ("better in both domains" if both else "**not better in both domains**"))
        out.append(text + (" Against " + "; ".join(checks) + "." if checks else ""))
    return out


def crossing_lines(records: list[dict]) -> list[str]:
    """Per (scheme, iterations) with curves (``--eval-every``): for each pair of one FlexRound and one LRQ
    row of the same seed, the first measured iteration at which LRQ's summed held-out block loss is
    below FlexRound's (or that it never is), and the train / held-out gap at the end."""
    out = []
    with_curves = [r for r in records if r.get("curve_iters")]
    for flex in (r for r in with_curves if r["method"] == "flexround"):
        for lrq in (r for r in with_curves if r["method"] == "lrq"):
            if (lrq["scheme"], _iters(lrq), lrq["seed"]) != (flex["scheme"], _iters(flex), flex["seed"]) \
                    or lrq["curve_iters"] != flex["curve_iters"]:
                continue
            below = [it for it, a, b in zip(flex["curve_iters"], lrq["curve_holdout_sum"], flex["curve_holdout_sum"]) if a < b]
            first = (f"below FlexRound's from iteration {below[0]}" if below and below == flex["curve_iters"][-len(below):]
                     else f"below FlexRound's at iterations {', '.join(map(str, below))}" if below else "never below FlexRound's")
            gap = "; ".join(f"{label(r)} held-out / train {r['curve_holdout_sum'][-1] / r['curve_train_sum'][-1]:.1f}x"
                            for r in (flex, lrq))
            out.append(f"- **{flex['scheme']}, {_iters(flex)} it/block, seed {flex['seed']}**: `{label(lrq)}`'s summed "
                       f"held-out block loss is {first} (measured every {flex['curve_iters'][1] - flex['curve_iters'][0]} "
                       f"iterations of each block's cosine schedule); at the end {gap}.")
    return out


def spearman(a: list[float], b: list[float]) -> float:
    """Spearman rank correlation of two equal-length lists (ties broken by order; they do not occur in
    measured losses and perplexities)."""
    import numpy as np

    d = np.argsort(np.argsort(a)) - np.argsort(np.argsort(b))
    n = len(a)
    return float(1 - 6 * int((d * d).sum()) / (n * (n * n - 1)))


PROXIES = {"summed held-out": lambda r: sum(r["holdout_loss_after"]),
           "last block held-out": lambda r: r["holdout_loss_after"][-1],
           "last block train": lambda r: r["train_loss_after"][-1]}


def proxy_lines(records: list[dict], min_rows: int = 4) -> list[str]:
    """Per scheme (learned rows with per-block losses, every seed and budget): how well each block-loss
    statistic ranks the rows as their perplexity does (Spearman ρ) — which statistic is a usable
    selection rule. The selection itself stays on the summed held-out loss (the issue's rule)."""
    out = []
    for scheme in sorted({r["scheme"] for r in records}):
        rows = [r for r in records if r["scheme"] == scheme and r.get("holdout_loss_after") and r.get("train_loss_after")]
        if len(rows) < min_rows:
            continue
        cells = [f"{spearman([f(r) for r in rows], [r[f'ppl_{c}'] for r in rows]):.2f}"
                 for f in PROXIES.values() for c in ("wiki_eval", "c4_sample")]
        out.append(f"| {scheme} | {len(rows)} | " + " | ".join(cells) + " |")
    if not out:
        return []
    head = " | ".join(f"{name} vs {c}" for name in PROXIES for c in ("wiki-eval", "c4-sample"))
    return [f"| scheme | rows | {head} |", "|---|---:|" + "---:|" * 2 * len(PROXIES), *out]


def rerun_lines(records: list[dict], reruns_file: Path) -> list[str]:
    """Table rows comparing each superseded record in ``reruns_file`` with the current record of its variant."""
    if not reruns_file.exists():
        return []
    now = {r["variant"]: r for r in records}
    out = ["| row | scheme | budget | earlier wiki-eval / c4-sample | now | Δ c4-sample | earlier / now held-out | dates |",
           "|---|---|---|---|---|---:|---|---|"]
    for old in json.loads(reruns_file.read_text()):
        new = now.get(old["variant"])
        if new is None:
            continue
        delta = 100 * (new["ppl_c4_sample"] / old["ppl_c4_sample"] - 1)
        held = " / ".join(f"{r['holdout_loss_after_sum']:,.0f}" if r.get("holdout_loss_after_sum") else "–" for r in (old, new))
        out.append(f"| {label(old)} | {old['scheme']} | {old['budget'].split(',')[0]} | {old['ppl_wiki_eval']:.2f} / "
                   f"{old['ppl_c4_sample']:.2f} | {new['ppl_wiki_eval']:.2f} / {new['ppl_c4_sample']:.2f} | {delta:+.1f}% | {held} | "
                   f"{old.get('date', '?')[:10]} / {new.get('date', '?')[:10]} |")
    return out if len(out) > 2 else []


def section(title: str, intro: str, body: list[str]) -> list[str]:
    """A report section (heading, one intro paragraph, its lines), or nothing when ``body`` is empty."""
    return ["", f"## {title}", "", intro, "", *body] if body else []


def write_report(records: list[dict], results: Path) -> None:
    fp = next((r for r in records if r["method"] == "fp"), None)
    lines = [
        "# LRQ as its authors run it: rank rule, 2-D clip init, held-out block loss (issue 14)",
        "",
        "smollm2-135m; calibration `wiki`, 1/8 of the samples held out of every training batch; "
        f"perplexity on `wiki-eval` (in domain) and `{OOD}` (out of domain), 512-token windows. "
        "Block losses are summed over the 30 blocks after reconstruction. Rows that differ only in seed are "
        "one line, mean ± sample std over the seeds (the seeds column); one seed: differences under ~5% "
        "between learned rows are not evidence (issue 14).",
        "",
        *(["W4A8 (8-bit per-token dynamic activations) follows the LRQ paper: the weights are reconstructed "
           "weight-only and the activations are quantized at evaluation, so a W4A8 row's block losses are its "
           "W4A16 twin's (same seed) and only the perplexities differ; AutoRound's W4A8 row is its W4A16 "
           "weights with the same per-token 8-bit inputs; GPTQ's is llm-compressor's W4A8 preset.", ""]
          if any(r["scheme"] == "w4a8" for r in records) else []),
        "| row | scheme | budget | seeds | learned params | train loss | held-out loss | wiki-eval PPL | c4-sample PPL | "
        "x FP (wiki / c4) | zero-shot avg (n/task) | seconds | it/s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for g in grouped(records):
        r = g[0]
        ratio = ""
        if fp and r is not fp:
            ratio = f"{mean_of(g, 'ppl_wiki_eval') / fp['ppl_wiki_eval']:.2f} / {mean_of(g, 'ppl_c4_sample') / fp['ppl_c4_sample']:.2f}"
        seconds = _ms([x["seconds"] for x in g], ".0f") + (resumed(r) if len(g) == 1 else "")
        lines.append(
            f"| {label(r)} | {r['scheme']} | {r['budget'].split(',')[0]} | {', '.join(str(x['seed']) for x in g)} | "
            f"{r['learned_params']:,} | {_ms([x.get('train_loss_after_sum') for x in g], ',.0f')} | "
            f"{_ms([x.get('holdout_loss_after_sum') for x in g], ',.0f')} | {_ms([x['ppl_wiki_eval'] for x in g])} | "
            f"{_ms([x['ppl_c4_sample'] for x in g])} | {ratio} | {zs(g)} | {seconds} | "
            f"{_ms([x.get('it_per_s') for x in g], '.2f')} |")
    lines += section("Selection and targets",
                     "LRQ's variant (rank rule, start, LR) and FlexRound's start are each chosen on the summed held-out "
                     "block loss, never on perplexity; the targets (issue 14) are then read on the out-of-domain corpus.",
                     selection_lines(records))
    lines += section("Held-out block-loss curves",
                     "Rows run with `--eval-every N`: train and held-out block loss of every block measured every N "
                     "iterations, summed over the 30 blocks (plot: right-hand panels). Within one run a point is the "
                     "loss part-way through the cosine schedule, not the end of a shorter run, and iteration 0 of "
                     "block k already sees blocks 1..k-1 trained (its input is the quantized path's), so the sums "
                     "at iteration 0 differ between methods too.", crossing_lines(records))
    lines += section("The same command run twice",
                     "Earlier records of a row that a rerun (e.g. for `--eval-every` or a larger zero-shot) replaced, "
                     f"kept in `{results.stem}-reruns.json`: how far one seed moves between runs of one command.",
                     rerun_lines(records, results.with_name(results.stem + "-reruns.json")))
    lines += section("Which block loss predicts perplexity",
                     "Spearman rank correlation, over every learned row of a scheme (all methods, budgets, seeds), "
                     "between a block-loss statistic and perplexity (1 = the same order). The summed loss is "
                     "dominated by the late blocks' large absolute losses; the last block's loss is the error that "
                     "reaches the LM head.", proxy_lines(records))
    lrq = [r for r in records if r.get("linears")]
    if lrq:
        lines += ["", "Per-linear choice (`rank_rule`): form and learned parameters over the 30 blocks.", "",
                  "| rank rule | " + " | ".join(next(iter(lrq))["linears"]) + " |",
                  "|---|" + "---|" * len(next(iter(lrq))["linears"])]
        seen = set()
        for r in lrq:
            cells = [f"{v['form']}{'' if v['rank'] is None else ' r' + str(v['rank'])} ({v['learned_params'] / 1e6:.2f}M)"
                     for v in r["linears"].values()]
            rule = (r.get("options") or {}).get("rank_rule", r["row"])
            if (rule, tuple(cells)) not in seen:
                seen.add((rule, tuple(cells)))
                lines.append(f"| {rule} | " + " | ".join(cells) + " |")
    lines += ["", "Commands: " + "; ".join(sorted({r['command'] for r in records})), ""]
    results.with_suffix(".md").write_text("\n".join(lines))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover
        return
    learned = [g for g in grouped(records) if g[0]["method"] != "fp"]
    schemes = sorted({g[0]["scheme"] for g in learned})
    if not schemes:
        return
    fig, axes = plt.subplots(len(schemes), 3, figsize=(17, 4.2 * len(schemes)), squeeze=False)
    for row_axes, scheme in zip(axes, schemes):
        ax_loss, ax_ppl, ax_curve = row_axes
        for r in records:
            if r["scheme"] == scheme and r.get("curve_iters"):
                line, = ax_curve.plot(r["curve_iters"], r["curve_holdout_sum"], "o-",
                                      label=f"{label(r)} {_iters(r)}it s{r['seed']} held-out")
                ax_curve.plot(r["curve_iters"], r["curve_train_sum"], "x:", color=line.get_color())
        if ax_curve.lines:
            ax_curve.set(yscale="log", xlabel="iteration within the run", ylabel="summed block loss (solid: held-out, dotted: train)",
                         title=f"{scheme}: block loss during training (--eval-every)")
            ax_curve.legend(fontsize=6)
        else:
            ax_curve.axis("off")
        curves: dict[str, list] = {}
        for g in learned:
            r = g[0]
            if r["scheme"] != scheme:
                continue
            if mean_of(g, "holdout_loss_after_sum") is not None:  # our engine's rows (AutoRound reports no block loss)
                name = label(r)
                curves.setdefault(name, []).append((_iters(r), mean_of(g, "holdout_loss_after_sum"), mean_of(g, "train_loss_after_sum")))
            ax_ppl.scatter(mean_of(g, "ppl_wiki_eval"), mean_of(g, "ppl_c4_sample"), s=15 + r["learned_params"] / 2e6,
                           marker="o" if _iters(r) <= 20 else "s", alpha=0.7)
            ax_ppl.annotate(f"{label(r)}" + (f" {_iters(r)}it" if _iters(r) else ""),
                            (mean_of(g, "ppl_wiki_eval"), mean_of(g, "ppl_c4_sample")), fontsize=6)
        for name, pts in sorted(curves.items()):
            pts.sort()
            line, = ax_loss.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=f"{name} held-out")
            ax_loss.plot([p[0] for p in pts], [p[2] for p in pts], "x:", color=line.get_color())
        ax_loss.set(xscale="log", yscale="log", xlabel="iterations per block", title=f"{scheme}: summed block loss",
                    ylabel="solid: held-out, dotted: train")
        ax_loss.legend(fontsize=6)
        ax_ppl.set(xscale="log", yscale="log", xlabel="wiki-eval PPL (in domain)", ylabel=f"{OOD} PPL (out of domain)",
                   title=f"{scheme}: circle ≤ 20 it, square more; size ~ learned params")
        if fp:
            ax_ppl.axvline(fp["ppl_wiki_eval"], color="k", lw=0.5, ls="--")
            ax_ppl.axhline(fp["ppl_c4_sample"], color="k", lw=0.5, ls="--")
    fig.suptitle("smollm2-135m: LRQ vs FlexRound / AutoRound / GPTQ (mean over seeds)")
    fig.tight_layout()
    fig.savefig(results.with_suffix(".png"), dpi=110)
    plt.close(fig)


def main(argv=None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    results = Path(args.results)
    if args.report:
        write_report(read_records(results), results)
        return
    if args.row:
        run_row(args.row, args, os.environ.get("LRQ_SWEEP_COMMAND", ""))
        return
    command = "python bench/ptq/lrq_sweep.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    names = [n for n in args.rows.split(",") if n]
    unknown = [n for n in names if n not in ROWS]
    if unknown:
        raise SystemExit(f"--rows: unknown {', '.join(unknown)}; known: {', '.join(ROWS)}")
    for name in names:
        done = {r["variant"]: r for r in read_records(results)}
        previous = done.get(row_variant(name, args))
        if previous and (previous.get("zeroshot_limit") or 0) >= args.zeroshot_limit:
            log.info("skip %s (done)", name)
            continue
        if previous:
            log.info("rerun %s: its record has no zero-shot at --zeroshot-limit %d (the new record replaces it)",
                     name, args.zeroshot_limit)
        t0 = time.perf_counter()
        child = [sys.executable, str(Path(__file__).resolve()), *(argv if argv is not None else sys.argv[1:]), "--row", name]
        rc = subprocess.run(child, cwd=ROOT, env={**os.environ, "LRQ_SWEEP_COMMAND": command}).returncode
        log.info("row %s rc=%d in %.0fs", name, rc, time.perf_counter() - t0)
        write_report(read_records(results), results)


if __name__ == "__main__":
    main()
