"""``compactlm re data``: relational-triple corpora and the splits that measure unseen triples.

Writes ``train.jsonl``, ``validation.jsonl``, ``test.jsonl`` (records ``text``, ``triple_list``,
``entity_types``; the format :func:`compactlm.tasks.triples.read_file` reads back), the augmented
test set ``test_augmented.jsonl`` (entity mentions swapped so every triple is unseen), with
``--augment-train`` ``train_augmented.jsonl`` (train plus the swapped copies), and ``stats.json``;
prints the corpus statistics. See :mod:`compactlm.tasks.triples` and docs/triples.md.
"""

from __future__ import annotations

import argparse

from compactlm.commands import args as A

SPLITS = ("standard", "rearranged", "sifted")


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


def run_data(args: argparse.Namespace) -> int:
    from compactlm.errors import CompactLMError
    from compactlm.io import atomic_dir, write_json, write_text
    from compactlm.tasks.triples import (
        DISTANT, DistantConfig, EntityPool, augment_test_set, augment_training, load_splits, rearrange, sifted,
        triple_set, unseen_share,
    )
    from compactlm.tasks.triples.example import dumps_jsonl
    from compactlm.tasks.triples.splits import all_examples

    if args.split != "rearranged":
        A.reject_unused(args, ["unseen_share"], f"--split {args.split}")
    if args.data != DISTANT:
        A.reject_unused(args, ["facts"], f"--data {args.data}")
    if args.augmented_test < 0:
        raise CompactLMError(f"--augmented-test: expected 0 or more copies, got {args.augmented_test}")
    config = DistantConfig(facts=args.facts) if args.data == DISTANT else None
    splits = load_splits(args.data, seed=args.seed, config=config)
    if args.split == "rearranged":
        splits = rearrange(all_examples(splits), args.unseen_share, test_size=len(splits.test),
                           validation_size=len(splits.validation), seed=args.seed)
    elif args.split == "sifted":
        splits = sifted(splits)
    summary = splits.summary()
    files = {name: dumps_jsonl(ex) for name, ex in splits.items()}
    extra: dict = {}
    if args.augmented_test:
        pool = EntityPool.from_examples(all_examples(splits))
        aug, extra["augmented_test"] = augment_test_set(splits.test, splits.train, pool, seed=args.seed,
                                                        copies=args.augmented_test)
        extra["augmented_test"]["sentences"] = len(aug)
        extra["augmented_test"]["unseen_share"] = unseen_share(aug, splits.train)
        files["test_augmented"] = dumps_jsonl(aug)
    if args.augment_train:
        new, extra["augment_train"] = augment_training(splits.train, args.augment_train, seed=args.seed,
                                                       avoid=triple_set(splits.test))
        files["train_augmented"] = dumps_jsonl([*splits.train, *new])
    with atomic_dir(args.out, overwrite=args.overwrite) as tmp:
        for name, text in files.items():
            write_text(tmp / f"{name}.jsonl", text)
        write_json(tmp / "stats.json", {"data": args.data, "split": args.split, "summary": summary,
                                        "stats": splits.stats, **extra})
    print(f"{args.data} ({args.split} split): {summary['relations']} relations, "
          f"test unseen share {summary['unseen_share']:.3f}")
    for name, _ in splits.items():
        print(f"  {name:<11} {summary[name]['sentences']:>6} sentences {summary[name]['triples']:>6} triples")
    if "augmented_test" in extra:
        a = extra["augmented_test"]
        print(f"  {'test (aug)':<11} {a['sentences']:>6} sentences, unseen share {a['unseen_share']:.3f} "
              f"({a['skipped']} test sentences could not be swapped)")
    if "augment_train" in extra:
        print(f"  {'train (aug)':<11} +{extra['augment_train']['made']} swapped sentences")
    print(f"wrote {args.out}")
    return 0
