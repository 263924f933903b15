"""One relational-triple-extraction example, and the normalisation every comparison of triples uses.

A :class:`TripleExample` is a sentence, its gold ``(head, relation, tail)`` triples (entity
*mentions* as they are written in the sentence, and a relation name) and the coarse types of the
entities where known. Triples are compared after :func:`normalize` (Unicode NFKC, case-folded,
whitespace collapsed): :func:`triple_key` is the identity used for de-duplication, seen/unseen
bookkeeping and scoring, so ``("Paris", "capital of", "France")`` and ``("paris", "Capital  of",
"FRANCE")`` are the same triple.
"""

from __future__ import annotations

import json
import unicodedata
from dataclasses import dataclass, field
from typing import Iterable

Triple = tuple[str, str, str]  # (head, relation, tail)


def normalize(text: str) -> str:
    """NFKC, case-folded, whitespace collapsed and stripped."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def triple_key(triple: Iterable[str]) -> Triple:
    """The normalised identity of a triple: ``(normalize(head), normalize(relation), normalize(tail))``."""
    h, r, t = triple
    return normalize(h), normalize(r), normalize(t)


@dataclass(frozen=True)
class TripleExample:
    """A sentence and the triples it expresses.

    Attributes:
        sentence: The raw sentence.
        triples: ``(head, relation, tail)`` tuples; head and tail are mentions as written in the
            sentence. Duplicates (same :func:`triple_key`) are removed, first kept, order preserved.
        entity_types: ``{mention: coarse type}`` for the entities whose type is known (may be empty).
    """

    sentence: str
    triples: tuple[Triple, ...] = ()
    entity_types: dict[str, str] = field(default_factory=dict, compare=True, hash=False)

    def __post_init__(self) -> None:
        seen: set[Triple] = set()
        unique = []
        for tr in self.triples:
            tr = tuple(tr)
            key = triple_key(tr)
            if key not in seen:
                seen.add(key)
                unique.append(tr)
        object.__setattr__(self, "triples", tuple(unique))
        object.__setattr__(self, "entity_types", dict(self.entity_types))

    def keys(self) -> set[Triple]:
        """The normalised triples of this example."""
        return {triple_key(t) for t in self.triples}

    def entities(self) -> list[str]:
        """Head and tail mentions in order of first appearance in the triples."""
        out: dict[str, None] = {}
        for h, _, t in self.triples:
            out.setdefault(h)
            out.setdefault(t)
        return list(out)

    def to_json(self) -> dict:
        """A JSON-able record (the format :func:`from_json` and the ``compactlm`` JSONL reader accept)."""
        rec: dict = {"text": self.sentence, "triple_list": [list(t) for t in self.triples]}
        if self.entity_types:
            rec["entity_types"] = dict(self.entity_types)
        return rec

    @classmethod
    def from_json(cls, rec: dict) -> "TripleExample":
        """Inverse of :meth:`to_json` (no validation; readers validate user files)."""
        return cls(rec["text"], tuple(tuple(t) for t in rec["triple_list"]), rec.get("entity_types") or {})


def dumps_jsonl(examples: Iterable[TripleExample]) -> str:
    """Examples as JSON lines (``text``, ``triple_list``, ``entity_types``)."""
    return "".join(json.dumps(e.to_json(), ensure_ascii=False) + "\n" for e in examples)


def triple_set(examples: Iterable[TripleExample]) -> set[Triple]:
    """All normalised triples of ``examples`` (e.g. the training triples that make a test triple *seen*)."""
    out: set[Triple] = set()
    for e in examples:
        out |= e.keys()
    return out
