"""The output format of a generative extractor: one ``head | relation | tail`` line per triple.

:func:`format_triples` writes a target; :func:`parse_generation` reads a model's output back,
strictly and without ever raising:

* Lines are separated by newlines; blank lines are skipped.
* A line is a triple iff splitting it on ``|`` gives exactly three fields that are non-empty after
  stripping whitespace. Anything else — a missing field, an extra pipe, no pipe — is rejected with a
  reason, never guessed at.
* With a relation set, the relation must equal one of them after normalisation (case, whitespace,
  Unicode); it is written as the set spells it. Unknown relations are rejected.
* Repeated triples (same normalised key) are kept once, first occurrence first.
* Anything that is not a string (``None``, bytes that are not UTF-8) parses to no triples.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

from compactlm.tasks.triples.example import Triple, normalize, triple_key

SEPARATOR = " | "


def format_triples(triples: Iterable[Iterable[str]]) -> str:
    """Triples as the lines a generative extractor is trained to emit (no trailing newline)."""
    return "\n".join(SEPARATOR.join(" ".join(str(x).split()) for x in t) for t in triples)


@dataclass
class Parsed:
    """Triples read from a generation, and the rejected lines as ``(line, reason)``."""

    triples: list[Triple] = field(default_factory=list)
    rejected: list[tuple[str, str]] = field(default_factory=list)
    duplicates: int = 0


def parse_generation(text: object, relations: Iterable[str] | None = None) -> Parsed:
    """Triples of a generated ``text`` (see the module doc); never raises."""
    out = Parsed()
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            return out
    if not isinstance(text, str):
        return out
    canon = None if relations is None else {normalize(r): r for r in relations}
    seen: set[Triple] = set()
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        fields = [f.strip() for f in line.split("|")]
        if len(fields) != 3:
            out.rejected.append((raw, f"expected 3 fields separated by '|', got {len(fields)}"))
            continue
        if not all(fields):
            out.rejected.append((raw, "empty field"))
            continue
        head, rel, tail = (" ".join(f.split()) for f in fields)
        if canon is not None:
            if normalize(rel) not in canon:
                out.rejected.append((raw, f"unknown relation {rel!r}"))
                continue
            rel = canon[normalize(rel)]
        key = triple_key((head, rel, tail))
        if key in seen:
            out.duplicates += 1
            continue
        seen.add(key)
        out.triples.append((head, rel, tail))
    return out


def parse_triples(text: object, relations: Iterable[str] | None = None) -> list[Triple]:
    """Just the triples of :func:`parse_generation`."""
    return parse_generation(text, relations).triples
