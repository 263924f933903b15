"""``compactlm models``: embedded models and supported architectures."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list embedded models and supported architectures")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from compactlm.models.loading import DEFAULT_MODEL, EMBEDDED
    from compactlm.models.specs import SPECS
    from compactlm.models.tiny import TINY_TYPES

    lines = ["Embedded models (fetched from PyPI packages, cached under $COMPACTLM_CACHE):"]
    for m in EMBEDDED.values():
        default = "  [default]" if m.name == DEFAULT_MODEL else ""
        lines.append(f"  {m.name:<14} {m.arch:<12} {m.description}{default}")
    lines.append("Tiny random models (no download): " + ", ".join(f"tiny-{t}" for t in TINY_TYPES))
    lines.append("Supported architectures (HF model_type):")
    for spec in SPECS:
        lines.append(f"  {', '.join(spec.model_types):<28} {spec.kind}")
    lines.append("Also accepted: a local HF folder, a .gguf file, a compactlm run directory, a hub id.")
    print("\n".join(lines))
    return 0
