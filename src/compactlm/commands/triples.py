"""``compactlm re data|train|eval|quantize``: triple extraction measured on seen vs unseen triples.

``re data`` writes ``train.jsonl``, ``validation.jsonl``, ``test.jsonl`` (records ``text``, ``triple_list``,
``entity_types``; the format :func:`compactlm.tasks.triples.read_file` reads back), the augmented
test set ``test_augmented.jsonl`` (entity mentions swapped so every triple is unseen), with
``--augment-train`` ``train_augmented.jsonl`` (train plus the swapped copies), and ``stats.json``;
prints the corpus statistics. ``re train`` builds the same splits
(:func:`compactlm.tasks.triples.prepare.prepare_data`) and trains the span-based extractor
(:mod:`compactlm.tasks.triples.extractor`) into a run directory; ``re quantize`` writes a
weight-only quantized copy of one (RTN, FlexRound or LRQ); ``re eval`` scores any of them on seen / unseen / all triples. See
:mod:`compactlm.tasks.triples` and docs/triples.md.
"""

from __future__ import annotations

import argparse

from compactlm.commands import args as A
from compactlm.errors import CompactLMError

from compactlm.tasks.triples.prepare import SPLITS


# re quantize flags only the learned methods take: (flag, type, help); their defaults apply when unset
_LEARNED_FLAGS = (
    ("--iters", int, "steps per block"),
    ("--lr", float, "learning rate"),
    ("--calib-samples", int, "calibration windows cut from the run's validation sentences, never a test set"),
    ("--calib-seq-len", int, "tokens per window"),
)
_LEARNED_DEFAULTS = {"--iters": 200, "--lr": 3e-3, "--calib-samples": 64, "--calib-seq-len": 64}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("re", help="relational triple extraction measured on seen vs unseen triples")
    rsub = p.add_subparsers(dest="re_command", metavar="ACTION", required=True)
    d = rsub.add_parser("data", help="build/load a triple corpus, write its splits as JSONL and print its statistics")
    d.add_argument("--data", default="wikidata-distant",
                   help="wikidata-distant (offline, distant supervision), a local .json/.jsonl file or folder "
                   "(train/dev/test files), or hf:<dataset id>[:<config>] (default: %(default)s)")
    d.add_argument("--facts", default=None, help="local BIG-bench qa_wikidata task.json for wikidata-distant "
                   "(default: extracted from the bigbench==1.0.0 sdist, downloaded once)")
    d.add_argument("--split", choices=SPLITS, default="standard",
                   help="standard (seeded random), rearranged (test set with --unseen-share unseen triples) or "
                   "sifted (training sentences holding a test triple dropped) (default: %(default)s)")
    d.add_argument("--unseen-share", type=float, default=0.5, metavar="F",
                   help="--split rearranged: share of unseen triples in the test set (default: %(default)s)")
    d.add_argument("--augmented-test", type=int, default=1, metavar="N",
                   help="entity-swapped copies of each test sentence in test_augmented.jsonl; 0 = none (default: %(default)s)")
    d.add_argument("--augment-train", type=float, default=0.0, metavar="RATIO",
                   help="entity-swapped training sentences per training sentence, written with train to "
                   "train_augmented.jsonl; 0 = none (default: %(default)s)")
    from compactlm.tasks.triples.splits import SPLIT_SEED

    A.add_seed(d, default=SPLIT_SEED, help="seed of the split and the entity swaps")
    A.add_out(d, help="folder to write the splits to (written atomically)")
    d.set_defaults(func=run_data)

    t = rsub.add_parser("train", help="train the span-based triple extractor (encoder + BIO spans + pair relations)",
                        description="Fine-tune a span-based joint extractor on an encoder; picks the step with the "
                        "best validation F1; writes a run directory (resumes from <out>.ckpt/ when rerun).")
    t.add_argument("--data", default="wikidata-distant",
                   help="wikidata-distant, a folder written by `compactlm re data`, a local .json/.jsonl file or "
                   "folder, or hf:<dataset id>[:<config>] (default: %(default)s)")
    t.add_argument("--facts", default=None, help="local BIG-bench qa_wikidata task.json for wikidata-distant")
    t.add_argument("--split", choices=SPLITS, default="standard",
                   help="standard (as loaded), rearranged (--unseen-share) or sifted (default: %(default)s)")
    t.add_argument("--unseen-share", type=float, default=0.5, metavar="F",
                   help="--split rearranged: share of unseen triples in the test set (default: %(default)s)")
    t.add_argument("--split-seed", type=int, default=SPLIT_SEED, metavar="N",
                   help="seed of the split and the augmented test set, fixed across training seeds (default: %(default)s)")
    t.add_argument("--augmented-test", type=int, default=1, metavar="N",
                   help="entity-swapped copies of each test sentence kept in the run as test_augmented (default: %(default)s)")
    t.add_argument("--augment-train", type=float, default=0.0, metavar="RATIO",
                   help="entity-swapped training sentences per training sentence, drawn with --seed (default: %(default)s)")
    A.add_model(t, default="minilm-l6", help="encoder (embedded name, local folder, hub id) or an extractor run "
                "directory to continue from")
    t.add_argument("--keep-layers", type=int, default=None, metavar="N",
                   help="depth-prune the encoder to N evenly spaced layers before training (a pruned student)")
    t.add_argument("--epochs", type=float, default=3.0, help="passes over the training sentences (default: %(default)s)")
    A.add_steps(t, default=None, help="optimizer steps, instead of --epochs (None: --epochs)")
    A.add_batch_size(t, default=16, help="sentences per step")
    t.add_argument("--lr", type=float, default=2e-4, help="peak learning rate (default: %(default)s)")
    t.add_argument("--warmup", type=float, default=0.1, help="warm-up fraction of the steps (default: %(default)s)")
    t.add_argument("--max-length", type=int, default=128, metavar="N", help="word pieces per sentence (default: %(default)s)")
    t.add_argument("--neg-ratio", type=float, default=3.0, help="negative span pairs per positive pair (default: %(default)s)")
    t.add_argument("--threshold", type=float, default=None,
                   help="relation probability to predict a triple (default: chosen on validation with the step)")
    t.add_argument("--eval-every", type=int, default=None, metavar="N",
                   help="steps between validation scores (default: about once per epoch)")
    t.add_argument("--checkpoint-every", type=int, default=0, metavar="N",
                   help="steps between checkpoints besides the validation points (default: %(default)s)")
    A.add_seed(t, help="seed of the heads, negative pairs, data order, dropout and the training augmentation")
    A.add_device(t)
    A.add_out(t)
    A.add_no_progress(t)
    t.set_defaults(func=run_train)

    e = rsub.add_parser("eval", help="seen / unseen / all micro P/R/F1 of an extractor run directory")
    e.add_argument("--run", required=True, help="run directory of `compactlm re train` or `compactlm re quantize`")
    e.add_argument("--test", default="test", help="test, test_augmented, validation (sets stored in the run) or a "
                   ".json/.jsonl file (default: %(default)s)")
    A.add_batch_size(e, default=32, help="sentences per forward")
    A.add_device(e)
    e.add_argument("--json", action="store_true", help="print the scores as JSON")
    e.set_defaults(func=run_eval)

    q = rsub.add_parser("quantize", help="weight-only quantization of an extractor's encoder (RTN, FlexRound, LRQ; "
                        "e.g. w4a16, w4a16-g32)")
    q.add_argument("--run", required=True, help="run directory of `compactlm re train`")
    q.add_argument("--scheme", default="w4a16", help="weight-only scheme: w4a16 (4-bit per output channel), "
                   "w4a16-g32, w8a16, ... (default: %(default)s)")
    q.add_argument("--method", default="rtn", choices=["rtn", "flexround", "lrq"],
                   help="rtn, or block-wise reconstruction on the run's validation sentences (default: %(default)s)")
    for flag, kind, help in _LEARNED_FLAGS:
        q.add_argument(flag, type=kind, default=None, help=f"flexround / lrq: {help} (default: {_LEARNED_DEFAULTS[flag]})")
    A.add_seed(q)
    A.add_out(q)
    q.set_defaults(func=run_quantize)


def run_data(args: argparse.Namespace) -> int:
    from compactlm.io import atomic_dir, write_json, write_text
    from compactlm.tasks.triples import DISTANT
    from compactlm.tasks.triples.example import dumps_jsonl
    from compactlm.tasks.triples.prepare import prepare_data

    if args.split != "rearranged":
        A.reject_unused(args, ["unseen_share"], f"--split {args.split}")
    if args.data != DISTANT:
        A.reject_unused(args, ["facts"], f"--data {args.data}")
    prep = prepare_data(args.data, args.split, seed=args.seed, unseen_share=args.unseen_share,
                        augmented_test=args.augmented_test, augment_train=args.augment_train, facts=args.facts)
    splits, stats = prep.splits, prep.stats
    summary = stats["summary"]
    files = {name: dumps_jsonl(ex) for name, ex in splits.items()}
    if "augmented_test" in stats:
        files["test_augmented"] = dumps_jsonl(prep.test_augmented)
    if args.augment_train:
        files["train_augmented"] = dumps_jsonl(prep.train_all)
    with atomic_dir(args.out, overwrite=args.overwrite) as tmp:
        for name, text in files.items():
            write_text(tmp / f"{name}.jsonl", text)
        write_json(tmp / "stats.json", stats)
    print(f"{args.data} ({args.split} split): {summary['relations']} relations, "
          f"test unseen share {summary['unseen_share']:.3f}")
    for name, _ in splits.items():
        print(f"  {name:<11} {summary[name]['sentences']:>6} sentences {summary[name]['triples']:>6} triples")
    if "augmented_test" in stats:
        a = stats["augmented_test"]
        skipped = f" ({a['skipped']} test sentences could not be swapped)" if "skipped" in a else ""
        print(f"  {'test (aug)':<11} {a['sentences']:>6} sentences, unseen share {a['unseen_share']:.3f}{skipped}")
    if "augment_train" in stats:
        print(f"  {'train (aug)':<11} +{stats['augment_train']['made']} swapped sentences")
    print(f"wrote {args.out}")
    return 0


def _threads() -> None:
    import os

    import torch

    if os.environ.get("COMPACTLM_THREADS"):
        torch.set_num_threads(int(os.environ["COMPACTLM_THREADS"]))


def run_train(args: argparse.Namespace) -> int:
    import dataclasses
    import shutil
    from pathlib import Path

    from compactlm.io import atomic_dir
    from compactlm.tasks.triples import DISTANT, triple_set
    from compactlm.tasks.triples.extractor import META, TripleExtractor
    from compactlm.tasks.triples.prepare import prepare_data
    from compactlm.tasks.triples.training import (
        ExtractorTrainConfig, build_extractor, evaluate_extractor, prune_extractor, save_run, train_extractor,
    )
    from compactlm.train import resume_dir

    _threads()
    if args.split != "rearranged":
        A.reject_unused(args, ["unseen_share"], f"--split {args.split}")
    if args.data != DISTANT:
        A.reject_unused(args, ["facts"], f"--data {args.data}")
    if args.keep_layers is not None and args.keep_layers < 1:
        raise CompactLMError(f"--keep-layers: expected a positive number of layers, got {args.keep_layers}")
    device = A.device_of(args)
    config = ExtractorTrainConfig(epochs=args.epochs, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                                  warmup=args.warmup, max_length=args.max_length, neg_ratio=args.neg_ratio,
                                  threshold=args.threshold, eval_every=args.eval_every, seed=args.seed,
                                  checkpoint_every=args.checkpoint_every)
    ckpt = resume_dir(args.out, args.overwrite)
    prep = prepare_data(args.data, args.split, seed=args.split_seed, unseen_share=args.unseen_share,
                        augmented_test=args.augmented_test, augment_train=args.augment_train,
                        augment_seed=args.seed, facts=args.facts)
    train_keys = triple_set(prep.train)
    relations = sorted({r for e in prep.train_all for _, r, _ in e.triples})
    if (Path(args.model).expanduser() / META).is_file():
        extractor = TripleExtractor.load(args.model, device)
        A.reject_unused(args, ["max_length"], "--model <extractor run> (its word-piece length is kept)")
        config = dataclasses.replace(config, max_length=extractor.config.max_length)
    else:
        extractor = build_extractor(args.model, relations, args.max_length, args.threshold, device, args.seed)
    if args.keep_layers is not None:
        prune_extractor(extractor, args.keep_layers)
    with atomic_dir(args.out, overwrite=args.overwrite) as tmp:
        report = train_extractor(extractor, prep.train_all, prep.splits.validation, config, train_keys=train_keys,
                                 checkpoint_dir=ckpt, progress=not args.no_progress)
        evals = {"test": prep.splits.test, "test_augmented": prep.test_augmented}
        for name, examples in evals.items():
            if examples:
                report[name] = evaluate_extractor(extractor, examples, train_keys)
        report["data"] = prep.stats
        run_config = {"command": "re train", "model": args.model, "data": args.data, "split": args.split,
                      "unseen_share": args.unseen_share if args.split == "rearranged" else None,
                      "split_seed": args.split_seed, "augmented_test": args.augmented_test,
                      "augment_train": args.augment_train, "keep_layers": args.keep_layers, "device": str(device),
                      **dataclasses.asdict(config)}
        save_run(extractor, tmp, run_config, report, train_keys,
                 {"validation": prep.splits.validation, **evals})
    shutil.rmtree(ckpt, ignore_errors=True)
    t = report["test"]
    print(f"re train: step {report['selected_step']} of {report['steps']} selected (validation F1 "
          f"{report['validation_f1'] if report['validation_f1'] is not None else 'n/a'}); test F1 seen "
          f"{t['seen']['f1']:.4f} unseen {t['unseen']['f1']:.4f} all {t['all']['f1']:.4f} -> {args.out}")
    return 0


def _print_scores(run: str, name: str, rep: dict) -> None:
    print(f"{run} on {name}: {rep['sentences']} sentences, unseen share {rep['unseen_share']:.3f}")
    print(f"  {'part':<7} {'P':>7} {'R':>7} {'F1':>7} {'gold':>6} {'pred':>6} {'tp':>6}")
    for part in ("seen", "unseen", "all"):
        r = rep[part]
        print(f"  {part:<7} {r['precision']:>7.4f} {r['recall']:>7.4f} {r['f1']:>7.4f} {r['gold']:>6} "
              f"{r['predicted']:>6} {r['tp']:>6}")


def run_eval(args: argparse.Namespace) -> int:
    import json

    from compactlm.tasks.triples.extractor import TripleExtractor
    from compactlm.tasks.triples.training import evaluate_extractor, run_test_set, run_train_keys

    _threads()
    device = A.device_of(args)
    extractor = TripleExtractor.load(args.run, device)
    keys = run_train_keys(args.run)
    name, test = run_test_set(args.run, args.test)
    rep = evaluate_extractor(extractor, test, keys, batch_size=args.batch_size)
    rep.update(run=str(args.run), test=name)
    if args.json:
        print(json.dumps(rep, indent=1))
    else:
        _print_scores(args.run, name, rep)
    return 0


def run_quantize(args: argparse.Namespace) -> int:
    import time
    from pathlib import Path

    from compactlm.commands.quantize import default_work_dir
    from compactlm.io import atomic_dir, read_json, write_json
    from compactlm.ptq.store import remove_work_dir
    from compactlm.tasks.triples.extractor import META, TripleExtractor
    from compactlm.tasks.triples.training import calibration_ids, copy_run_data, quantize_extractor, run_test_set

    _threads()
    extractor = TripleExtractor.load(args.run)
    if read_json(Path(args.run).expanduser() / META).get("quantized"):
        raise CompactLMError(f"--run: {args.run} is already quantized; give the full-precision run")
    learned = args.method != "rtn"
    given = {flag: getattr(args, flag[2:].replace("-", "_")) for flag in _LEARNED_DEFAULTS}
    if not learned and any(v is not None for v in given.values()):
        flags = ", ".join(f for f, v in given.items() if v is not None)
        raise CompactLMError(f"{flags}: only used by --method flexround / lrq (RTN needs no calibration)")
    settings = {f: _LEARNED_DEFAULTS[f] if x is None else x for f, x in given.items()}
    calib, options = None, {}
    if learned:
        _, validation = run_test_set(args.run, "validation")
        calib = calibration_ids(extractor, [e.sentence for e in validation], settings["--calib-samples"],
                                settings["--calib-seq-len"])
        options = {"iters": settings["--iters"], "lr": settings["--lr"], "seed": args.seed,
                   "work_dir": str(default_work_dir(args.out))}
    start = time.perf_counter()
    with atomic_dir(args.out, overwrite=args.overwrite) as tmp:
        report = quantize_extractor(extractor, args.scheme, args.method, calib, **options)
        report["seconds"] = round(time.perf_counter() - start, 2)
        if calib is not None:
            report["calib"] = {"source": "validation", "samples": int(calib.shape[0]), "seq_len": int(calib.shape[1])}
        extractor.save(tmp)
        copy_run_data(args.run, tmp)
        write_json(tmp / "config.json", {"command": "re quantize", "run": str(args.run), "scheme": report["scheme"],
                                         "method": args.method, **options})
        write_json(tmp / "report.json", report)
    if learned:  # the output is saved: the resume state has served its purpose
        remove_work_dir(default_work_dir(args.out))
    name = {"rtn": "RTN", "flexround": "FlexRound", "lrq": "LRQ"}[args.method]
    print(f"re quantize: {report['scheme']} {name} of {args.run} ({report['quantized_weights']} weights) -> {args.out}")
    return 0
