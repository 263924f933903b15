"""``compactlm`` command line.

Each area owns its subcommands in a module exposing ``add_parser(subparsers)``; this file only
lists those modules. Shared flags come from :mod:`compactlm.commands.args` (the spine); every
subcommand's parser is a :class:`~compactlm.commands.args.SpineParser`, which records the flags a
user typed so a command can refuse those its chosen path would ignore. Errors a user can cause (:class:`~compactlm.errors.CompactLMError`) print as
one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from compactlm.errors import CompactLMError

log = logging.getLogger("compactlm")

# Modules that contribute subcommands, in the order `compactlm --help` lists them.
COMMANDS: tuple[str, ...] = (
    "compactlm.commands.models",
    "compactlm.commands.data",
    "compactlm.commands.quantize",
    "compactlm.commands.evaluate",
    "compactlm.commands.finetune",
    "compactlm.commands.qat",
    "compactlm.commands.encoder_qat",
    "compactlm.commands.distill",
    "compactlm.commands.dynabert",
    "compactlm.commands.export",
    "compactlm.commands.generate",
    "compactlm.commands.speed",
    "compactlm.commands.lut",
    "compactlm.commands.triples",
)


def build_parser() -> argparse.ArgumentParser:
    from compactlm.commands.args import SpineParser

    parser = SpineParser(
        prog="compactlm",
        description="Make transformer LMs small and fast: PTQ, QAT with distillation, NN-LUT.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=SpineParser)
    for name in COMMANDS:
        importlib.import_module(name).add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    for noisy in ("httpx", "urllib3", "filelock", "transformers.modeling_utils"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from compactlm.commands.args import deprecated_used

    for old, new in deprecated_used(args):
        log.warning("%s is deprecated; use %s (same meaning)", old, new)
    try:
        return int(args.func(args) or 0)
    except CompactLMError as e:
        parser.exit(2, f"compactlm: error: {e}\n")
    except KeyboardInterrupt:
        # Training commands (qat, sdq, finetune) checkpoint to <out>.ckpt/ and resume when rerun;
        # quantize keeps resume state in <out>.work/. --out itself is only ever written at the end.
        parser.exit(130, "compactlm: interrupted; outputs were left untouched. Training (qat, sdq, finetune) and "
                    "reconstruction (quantize) runs continue from their last checkpoint when rerun with the same "
                    "command; --overwrite starts over\n")


if __name__ == "__main__":
    sys.exit(main())
