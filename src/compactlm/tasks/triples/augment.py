"""Type-consistent entity-mention swapping: augmented test sets and the training augmentation.

Swapping (:func:`swap_entities`) replaces the mentions of an example's entities with other entities
of the same coarse type, rewriting the sentence and the triples together, so the context stays
real while the triple changes (Lee et al., NAACL 2022):

* The entities of an example are the heads and tails of its triples. Their mentions are found with
  the same whole-token, case-sensitive, longest-first matcher as distant supervision
  (:class:`~.distant.MentionIndex`). An example in which some entity is not found on its own (it
  only occurs inside another entity's mention, like ``France`` in ``Charles V of France``) is not
  swapped: replacing the outer mention would silently drop a triple.
* Every entity with a known type (``example.entity_types``) is replaced — all its mentions — by an
  entity of the same type drawn from an :class:`EntityPool`, never one of the example's own
  entities nor a name already written in the sentence. Untyped entities keep their mention.
* A draw is accepted only if the caller's test accepts the new example (:func:`augment_test_set`:
  every new triple unseen in training; :func:`augment_training`: no new triple in ``avoid``, e.g.
  the test triples); up to ``tries`` draws per example, else the example is skipped (counted).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

from compactlm.errors import CompactLMError
from compactlm.tasks.triples.distant import MentionIndex
from compactlm.tasks.triples.example import Triple, TripleExample, normalize, triple_key, triple_set


@dataclass(frozen=True)
class EntityPool:
    """Candidate replacement names by type: ``{type: (name, ...)}`` (sorted, so draws are reproducible)."""

    by_type: dict[str, tuple[str, ...]]

    @classmethod
    def from_examples(cls, examples: Iterable[TripleExample]) -> "EntityPool":
        """The typed entities of ``examples``' triples (one spelling per normalised name)."""
        names: dict[str, dict[str, str]] = {}
        for e in examples:
            for name in e.entities():
                typ = e.entity_types.get(name)
                if typ:
                    names.setdefault(typ, {}).setdefault(normalize(name), name)
        return cls({t: tuple(sorted(v.values())) for t, v in sorted(names.items())})

    def __len__(self) -> int:
        return sum(len(v) for v in self.by_type.values())


def _mention_re(name: str) -> re.Pattern:
    return re.compile(rf"(?<!\w){re.escape(name)}(?!\w)")


def swappable(example: TripleExample) -> bool:
    """Whether every entity of ``example`` is mentioned on its own and at least one has a type."""
    ents = example.entities()
    found = {name for name, _, _ in MentionIndex(ents).find(example.sentence)}
    return set(ents) <= found and any(example.entity_types.get(e) for e in ents)


def replace_mentions(example: TripleExample, mapping: dict[str, str]) -> TripleExample:
    """``example`` with every mention of each ``mapping`` key replaced by its value, in the sentence,
    the triples and the entity types (types carry over to the new names)."""
    spans = [(s, e, mapping[name]) for name, s, e in MentionIndex(example.entities()).find(example.sentence)
             if name in mapping]
    text = example.sentence
    for s, e, new in sorted(spans, reverse=True):
        text = text[:s] + new + text[e:]
    triples = tuple((mapping.get(h, h), r, mapping.get(t, t)) for h, r, t in example.triples)
    types = {mapping.get(k, k): v for k, v in example.entity_types.items()}
    return TripleExample(text, triples, types)


def swap_entities(example: TripleExample, pool: EntityPool, rng: random.Random,
                  accept: Callable[[TripleExample], bool] = lambda e: True, tries: int = 10) -> TripleExample | None:
    """A swapped copy of ``example`` that ``accept`` accepts, or ``None`` (see the module doc)."""
    if not swappable(example):
        return None
    ents = example.entities()
    own = {normalize(e) for e in ents}
    typed = [e for e in ents if example.entity_types.get(e) in pool.by_type]
    candidates = {}
    for e in typed:
        cands = [c for c in pool.by_type[example.entity_types[e]]
                 if normalize(c) not in own and not _mention_re(c).search(example.sentence)]
        if not cands:
            return None
        candidates[e] = cands
    if not candidates:
        return None
    for _ in range(tries):
        drawn: dict[str, str] = {}
        for e, cands in candidates.items():
            free = [c for c in cands if c not in drawn.values()]
            if not free:
                break
            drawn[e] = rng.choice(free)
        else:
            new = replace_mentions(example, drawn)
            if accept(new):
                return new
    return None


def augment_test_set(test: Sequence[TripleExample], train: Sequence[TripleExample] | set[Triple],
                     pool: EntityPool, seed: int = 0, copies: int = 1, tries: int = 10) -> tuple[list[TripleExample], dict]:
    """Up to ``copies`` swapped versions of each test example whose triples are all unseen in ``train``.

    Returns:
        ``(examples, stats)``; stats ``{"source", "augmented", "skipped"}`` (examples, not copies).
    """
    if copies < 1:
        raise CompactLMError(f"copies: expected at least 1, got {copies}")
    keys = train if isinstance(train, set) else triple_set(train)
    rng = random.Random(seed)
    out, skipped = [], 0
    for ex in test:
        made = []
        for _ in range(copies):
            new = swap_entities(ex, pool, rng, lambda e: not (e.keys() & keys) and e not in made, tries)
            if new is not None:
                made.append(new)
        skipped += not made
        out.extend(made)
    return out, {"source": len(test), "augmented": len(test) - skipped, "skipped": skipped}


def augment_training(train: Sequence[TripleExample], ratio: float, seed: int = 0, pool: EntityPool | None = None,
                     avoid: Iterable[Triple] | None = None, tries: int = 10) -> tuple[list[TripleExample], dict]:
    """``round(ratio * len(train))`` new training examples made by entity swapping (add them to train).

    Args:
        train: Training examples.
        ratio: New examples per training example (0 = none, 1 = as many as train, > 1 allowed); the
            sources cycle through a seeded permutation of the swappable examples.
        seed: Seed of the permutation and the draws.
        pool: Replacement names (default: the typed entities of ``train``).
        avoid: Triples (e.g. the test set's ``triple_set``) that no new example may contain.
        tries: Draws per new example before it is skipped.

    Returns:
        ``(new_examples, stats)``; stats ``{"ratio", "requested", "made", "swappable"}``.
    """
    if ratio < 0:
        raise CompactLMError(f"ratio: expected a non-negative number of new examples per training example, got {ratio}")
    pool = pool or EntityPool.from_examples(train)
    bad = {triple_key(k) for k in (avoid or ())}
    rng = random.Random(seed)
    sources = [e for e in train if swappable(e)]
    rng.shuffle(sources)
    want = round(ratio * len(train))
    out: list[TripleExample] = []
    attempts = 0
    while sources and len(out) < want and attempts < 2 * want:
        src = sources[attempts % len(sources)]
        attempts += 1
        new = swap_entities(src, pool, rng, lambda e: not (e.keys() & bad), tries)
        if new is not None:
            out.append(new)
    return out, {"ratio": ratio, "requested": want, "made": len(out), "swappable": len(sources)}
