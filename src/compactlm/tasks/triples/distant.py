"""Distant supervision: align knowledge-base facts with sentences that mention both entities.

The way NYT was built from Freebase (Riedel et al. 2010): a sentence that mentions the subject and
the object of a known fact is taken to express it. Here the facts are BIG-bench ``qa_wikidata``'s
(:mod:`.wikidata`) and the sentences those of the Wikipedia text the project already fetches.

Rules, in order (:func:`align`):

1. Sentences (:func:`split_sentences`): each line of a document is split after ``.``/``!``/``?``
   followed by a space and an upper-case letter, digit or opening quote, except after a known
   abbreviation or a single-letter initial; sentences of fewer than ``min_words`` or more than
   ``max_words`` words are dropped, and so are repeats (compared after normalisation).
2. Mentions (:class:`MentionIndex`): an entity is mentioned where its exact name (case-sensitive)
   occurs as a whole token sequence (tokens are runs of word characters or single punctuation
   marks). Matching is greedy longest-first and non-overlapping, left to right, so ``New York
   City`` hides the ``York`` inside it.
3. Triples: every ordered pair of distinct mentioned entities ``(a, b)`` with a fact
   ``relation(a, b)`` whose relation is in the whitelist yields the triple ``(a, relation, b)``.
   Sentences with no triple are dropped, and so are those with more than ``max_triples`` (lists of
   places such as "Connecticut, Delaware, Illinois, ..." pair every state with every other).
4. Entity types: the :func:`~.wikidata.entity_types` of the entities in the triples, where known.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable

from compactlm.tasks.triples.example import TripleExample, normalize
from compactlm.tasks.triples.wikidata import Fact

_TOKEN = re.compile(r"\w+|[^\w\s]")
_BOUNDARY = re.compile(r"[.!?][\"”’')\]]*\s+(?=[\"“‘(\[]?[A-Z0-9])")
_ABBREVIATIONS = frozenset(
    "mr mrs ms dr st jr sr prof gen col lt sgt capt rev hon no vol fig approx ca cf vs etc inc ltd co corp "
    "jan feb mar apr jun jul aug sep sept oct nov dec mt ft u.s u.k e.g i.e".split()
)


def tokens(text: str) -> list[tuple[str, int, int]]:
    """``(token, start, end)`` of each run of word characters or single punctuation mark."""
    return [(m.group(), m.start(), m.end()) for m in _TOKEN.finditer(text)]


def split_sentences(text: str, min_words: int = 5, max_words: int = 80) -> list[str]:
    """Sentences of ``text`` (see rule 1 of the module doc), in order."""
    out = []
    for line in text.splitlines():
        start = 0
        for m in _BOUNDARY.finditer(line):
            head = line[start:m.start() + 1]
            last = re.search(r"([\w.]+)\.$", head)
            if last and (len(last.group(1)) == 1 or last.group(1).lower() in _ABBREVIATIONS):
                continue
            out.append(head.strip())
            start = m.end()
        out.append(line[start:].strip())
    return [s for s in out if min_words <= len(s.split()) <= max_words]


class MentionIndex:
    """Finds whole-token, case-sensitive, longest-first non-overlapping mentions of known names."""

    def __init__(self, names: Iterable[str]):
        self._names: dict[tuple[str, ...], str] = {}
        for name in names:
            key = tuple(t for t, _, _ in tokens(name))
            if key:
                self._names.setdefault(key, name)
        self._longest = max((len(k) for k in self._names), default=0)
        self._first = {k[0] for k in self._names}

    def find(self, text: str) -> list[tuple[str, int, int]]:
        """``(name, start, end)`` of each mention in ``text``, left to right."""
        toks = tokens(text)
        out = []
        i = 0
        while i < len(toks):
            if toks[i][0] not in self._first:
                i += 1
                continue
            for n in range(min(self._longest, len(toks) - i), 0, -1):
                name = self._names.get(tuple(t for t, _, _ in toks[i:i + n]))
                if name is not None:
                    out.append((name, toks[i][1], toks[i + n - 1][2]))
                    i += n
                    break
            else:
                i += 1
        return out


@dataclass(frozen=True)
class AlignStats:
    """Counts of :func:`align`: sentences read (after the length filter), repeats dropped, sentences
    dropped for too many triples, sentences kept, triples kept."""

    sentences: int
    duplicates: int
    too_many: int
    kept: int
    triples: int


def align(
    documents: Iterable[str],
    facts: Iterable[Fact],
    relations: Iterable[str] | None = None,
    types: dict[str, str] | None = None,
    min_words: int = 5,
    max_words: int = 80,
    max_triples: int = 8,
) -> tuple[list[TripleExample], AlignStats]:
    """Distantly supervised examples: the sentences of ``documents`` that mention both entities of a fact.

    Args:
        documents: Texts to split into sentences.
        facts: Knowledge-base facts.
        relations: Whitelist of relation names (``None`` keeps all).
        types: ``{entity: type}`` to attach to the examples.
        min_words, max_words: Sentence length bounds (whitespace words).
        max_triples: Sentences with more triples are dropped.

    Returns:
        ``(examples, stats)`` in document order.
    """
    allowed = None if relations is None else set(relations)
    by_pair: dict[tuple[str, str], list[str]] = {}
    for f in facts:
        if allowed is None or f.relation in allowed:
            rels = by_pair.setdefault((f.subject, f.object), [])
            if f.relation not in rels:
                rels.append(f.relation)
    index = MentionIndex({name for pair in by_pair for name in pair})
    types = types or {}
    seen: set[str] = set()
    examples = []
    n_sent = dup = too_many = n_triples = 0
    for doc in documents:
        for sent in split_sentences(doc, min_words, max_words):
            n_sent += 1
            key = normalize(sent)
            if key in seen:
                dup += 1
                continue
            seen.add(key)
            mentioned = list(dict.fromkeys(name for name, _, _ in index.find(sent)))
            triples = [(a, r, b) for a in mentioned for b in mentioned if a != b for r in by_pair.get((a, b), ())]
            if len(triples) > max_triples:
                too_many += 1
            elif triples:
                ents = {e for h, _, t in triples for e in (h, t)}
                examples.append(TripleExample(sent, tuple(triples), {e: types[e] for e in ents if e in types}))
                n_triples += len(examples[-1].triples)
    return examples, AlignStats(n_sent, dup, too_many, len(examples), n_triples)
