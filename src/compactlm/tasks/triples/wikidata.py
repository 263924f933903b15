"""Wikidata facts from BIG-bench ``qa_wikidata``: templated prompts parsed into (subject, relation, object).

``qa_wikidata/task.json`` (in the ``bigbench==1.0.0`` sdist on PyPI, 358 MB) holds
20,442 prompts written from Wikidata triples by a fixed set of templates, e.g.
``{"input": "The capital of Afghanistan is", "target": "Kabul"}`` or
``{"input": "Sussex shares a border with", "target": ["Hampshire", "Surrey", "Kent"]}``.
:func:`parse_prompt` inverts the templates: *prefix* templates ``The <relation> <of|in|by> <subject>
is|are`` (:data:`PREFIX_RELATIONS`, matched longest relation first, so ``country of citizenship``
wins over ``country``) and *suffix* templates ``<subject> <phrase>`` (:data:`SUFFIX_RELATIONS`).
A list target gives one fact per item. Prompts no template matches are counted and skipped.

Entity types (:func:`entity_types`) come from the relations' domain and range
(:data:`RELATION_TYPES`): the tail of ``capital`` is a ``location``, the head of ``native language``
a ``person``, and so on; ``None`` where a relation's argument is too mixed to type (the head of
``country`` is a city, a bridge, an event or a language). Every fact an entity takes part in votes
for the type of its role; the entity gets the type with most votes, ties broken by the order of
:data:`TYPES`; an entity with no vote has no type. All parsed facts vote, not only the whitelisted.

The sdist is downloaded once into ``$COMPACTLM_CACHE/wheels`` (:func:`compactlm.cache.download_wheel`)
and only ``task.json`` is extracted (:func:`task_file`); :func:`load_facts` also reads a local copy.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tarfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from compactlm.cache import cache_dir, download_wheel
from compactlm.errors import CompactLMError
from compactlm.io import write_text

log = logging.getLogger(__name__)

BIGBENCH = ("bigbench", "1.0.0")
TASK_MEMBER = "bigbench/benchmark_tasks/qa_wikidata/task.json"

# Coarse entity types, in tie-break order (first wins a tie of votes).
TYPES: tuple[str, ...] = (
    "country", "continent", "location", "person", "organization", "work", "language", "religion",
    "ethnic group", "genre", "instrument", "sport", "position", "title", "currency", "product",
    "concept",
)

# (relation as written in the prompt, connector before the subject, canonical relation name)
PREFIX_RELATIONS: tuple[tuple[str, str, str], ...] = (
    ("country of citizenship", "of", "country of citizenship"),
    ("country", "of", "country"),
    ("country for sport played", "by", "country for sport"),
    ("original country", "of", "country of origin"),
    ("native language", "of", "native language"),
    ("languages spoken, written or signed", "by", "languages spoken, written or signed"),
    ("language used", "in", "language used"),
    ("official language", "of", "official language"),
    ("language", "of", "language of work or name"),
    ("official religion", "of", "official religion"),
    ("religion", "of", "religion"),
    ("instrument", "of", "instrument"),
    ("genre", "of", "genre"),
    ("record label", "of", "record label"),
    ("capital", "of", "capital"),
    ("continent", "of", "continent"),
    ("headquarters location", "of", "headquarters location"),
    ("residence", "of", "residence"),
    ("work location", "of", "work location"),
    ("place of birth", "of", "place of birth"),
    ("place of publication", "of", "place of publication"),
    ("ethnic group", "of", "ethnic group"),
    ("basin country", "of", "basin country"),
    ("historic county", "of", "historic county"),
    ("currency", "of", "currency"),
    ("developer", "of", "developer"),
    ("publisher", "of", "publisher"),
    ("manufacturer", "of", "manufacturer"),
    ("original broadcaster", "of", "original broadcaster"),
    ("participant", "of", "participant"),
    ("operating area", "of", "operating area"),
    ("main subject", "of", "main subject"),
    ("sport played", "by", "sport"),
    ("team position", "of", "position played on team"),
    ("military rank", "of", "military rank"),
    ("military branch", "of", "military branch"),
    ("noble title", "of", "noble title"),
    ("honorific prefix", "of", "honorific prefix"),
    ("academic degree", "of", "academic degree"),
    ("competition class", "of", "competition class"),
    ("voice type", "of", "voice type"),
    ("eye color", "of", "eye color"),
    ("blood type", "of", "blood type"),
    ("family name", "of", "family name"),
    ("official color", "of", "official color"),
    ("streak color", "of", "streak color"),
    ("color", "of", "color"),
    ("emergency phone number", "of", "emergency phone number"),
    ("basic form of government", "of", "basic form of government"),
    ("office held by head of government", "of", "office held by head of government"),
    ("office held by head of state", "of", "office held by head of state"),
    ("health specialty", "of", "health specialty"),
    ("measured physical quantity", "of", "measured physical quantity"),
    ("public holiday", "of", "public holiday"),
    ("IUCN conservation status", "of", "IUCN conservation status"),
    ("product or material produced", "of", "product or material produced"),
    ("operating system", "of", "operating system"),
    ("platform", "of", "platform"),
    ("newspaper format", "of", "newspaper format"),
    ("material used", "in", "made from material"),
    ("month of the year", "of", "month of the year"),
)

# (phrase after the subject, canonical relation name); longer phrases first where one extends another.
SUFFIX_RELATIONS: tuple[tuple[str, str], ...] = (
    ("is located in or next to body of water", "located in or next to body of water"),
    ("is located in", "located in"),
    ("shares a border with", "shares border with"),
    ("is capital of", "capital of"),
    ("is territory claimed by", "territory claimed by"),
    ("is facet of", "facet of"),
    ("is indigenous to", "indigenous to"),
    ("is followed by", "followed by"),
    ("is studied by", "studied by"),
    ("is used by", "used by"),
    ("writing languages", "writing language"),
    ("endemic to", "endemic to"),
    ("replaced by", "replaced by"),
    ("given name", "given name"),
    ("calculated from", "calculated from"),
    ("convicted of", "convicted of"),
    ("named after", "named after"),
    ("influenced by", "influenced by"),
    ("practiced by", "practiced by"),
    ("follows", "follows"),
)

# canonical relation -> (type of the head, type of the tail); None = too mixed to type.
RELATION_TYPES: dict[str, tuple[str | None, str | None]] = {
    "country of citizenship": ("person", "country"),
    "country": (None, "country"),
    "country for sport": ("person", "country"),
    "country of origin": ("work", "country"),
    "native language": ("person", "language"),
    "languages spoken, written or signed": ("person", "language"),
    "writing language": ("person", "language"),
    "language used": (None, "language"),
    "official language": ("location", "language"),
    "language of work or name": ("work", "language"),
    "religion": ("person", "religion"),
    "official religion": ("location", "religion"),
    "instrument": ("person", "instrument"),
    "genre": ("person", "genre"),
    "record label": (None, "organization"),
    "capital": ("location", "location"),
    "capital of": ("location", "location"),
    "continent": ("location", "continent"),
    "headquarters location": ("organization", "location"),
    "residence": ("person", "location"),
    "work location": ("person", "location"),
    "place of birth": ("person", "location"),
    "place of publication": ("work", "location"),
    "ethnic group": (None, "ethnic group"),
    "basin country": ("location", "country"),
    "historic county": ("location", "location"),
    "located in": ("location", "location"),
    "located in or next to body of water": ("location", "location"),
    "shares border with": ("location", "location"),
    "territory claimed by": ("location", "country"),
    "indigenous to": (None, "location"),
    "endemic to": (None, "location"),
    "currency": ("location", "currency"),
    "developer": ("product", "organization"),
    "publisher": ("work", "organization"),
    "manufacturer": ("product", "organization"),
    "original broadcaster": ("work", "organization"),
    "participant": (None, "country"),
    "sport": ("person", "sport"),
    "position played on team": ("person", "position"),
    "military rank": ("person", "title"),
    "noble title": ("person", "title"),
    "honorific prefix": ("person", "title"),
    "convicted of": ("person", None),
    "given name": ("person", None),
    "family name": ("person", None),
    "voice type": ("person", None),
    "eye color": ("person", None),
    "blood type": ("person", None),
    "main subject": ("work", "concept"),
}


@dataclass(frozen=True)
class Fact:
    """One parsed fact: ``relation(subject, object)`` and the prompt it came from."""

    subject: str
    relation: str
    object: str


_PREFIXES = sorted(PREFIX_RELATIONS, key=lambda r: -len(r[0]))
_SUFFIXES = sorted(SUFFIX_RELATIONS, key=lambda r: -len(r[0]))
_END = re.compile(r"\s+(?:\[MASK\]\s*)?$")
_PREFIX_RE = re.compile(r"^The (?P<body>.+?) (?:is|are)$")


def _clean(text: str) -> str:
    return " ".join(text.split())


def parse_prompt(prompt: str) -> tuple[str, str] | None:
    """``(subject, relation)`` of a qa_wikidata prompt, or ``None`` if no template matches."""
    s = _clean(_END.sub("", prompt))
    m = _PREFIX_RE.match(s)
    if m:
        body = m.group("body")
        for phrase, conn, relation in _PREFIXES:
            lead = f"{phrase} {conn} "
            if body.startswith(lead) and len(body) > len(lead):
                return body[len(lead):], relation
    for phrase, relation in _SUFFIXES:
        if s.endswith(" " + phrase) and len(s) > len(phrase) + 1:
            return s[: -len(phrase) - 1], relation
    return None


def parse_examples(examples: list[dict], source: str = "qa_wikidata") -> tuple[list[Fact], dict]:
    """Facts of qa_wikidata ``examples`` (``input`` prompt, ``target`` string or list).

    Returns:
        ``(facts, stats)``; duplicate facts are dropped; stats ``{"prompts", "parsed", "unparsed",
        "facts"}``.
    """
    facts: dict[Fact, None] = {}
    parsed = unparsed = 0
    for i, ex in enumerate(examples):
        if not isinstance(ex, dict) or not isinstance(ex.get("input"), str):
            raise CompactLMError(f"{source}: example {i} has no string 'input'")
        got = parse_prompt(ex["input"])
        targets = ex.get("target")
        targets = [targets] if isinstance(targets, str) else targets
        if got is None or not isinstance(targets, list):
            unparsed += 1
            continue
        parsed += 1
        subject, relation = got
        for t in targets:
            if isinstance(t, str) and _clean(t) and _clean(t) != subject:
                facts.setdefault(Fact(subject, relation, _clean(t)))
    stats = {"prompts": len(examples), "parsed": parsed, "unparsed": unparsed, "facts": len(facts)}
    return list(facts), stats


def entity_types(facts: list[Fact]) -> dict[str, str]:
    """``{entity: type}`` by majority vote of the facts' relation domains/ranges (see module doc)."""
    votes: dict[str, Counter] = {}
    for f in facts:
        head, tail = RELATION_TYPES.get(f.relation, (None, None))
        for name, typ in ((f.subject, head), (f.object, tail)):
            if typ is not None:
                votes.setdefault(name, Counter())[typ] += 1
    rank = {t: i for i, t in enumerate(TYPES)}
    return {name: min(c, key=lambda t: (-c[t], rank.get(t, len(rank)))) for name, c in votes.items()}


def task_file() -> Path:
    """``qa_wikidata/task.json`` extracted from the ``bigbench`` sdist (downloaded once) into the cache."""
    package, version = BIGBENCH
    target = cache_dir("pkgs", f"{package}-{version}") / TASK_MEMBER
    if target.is_file():
        return target
    sdist = download_wheel(package, version)
    member = f"{package}-{version}/{TASK_MEMBER}"
    log.info("extracting %s from %s (reads the whole archive once)", TASK_MEMBER, sdist.name)
    try:
        with tarfile.open(sdist, "r:gz") as tar:
            for info in tar:
                if info.name == member and info.isfile():
                    data = tar.extractfile(info).read()
                    break
            else:
                raise CompactLMError(f"{sdist.name} has no {member!r}; the package layout changed")
    except (tarfile.TarError, EOFError, OSError) as e:
        sdist.unlink(missing_ok=True)
        raise CompactLMError(f"{sdist.name} is corrupt ({e}); it was removed, run the command again") from e
    try:
        return write_text(target, data.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise CompactLMError(f"{sdist.name}: {TASK_MEMBER} is not UTF-8 ({e.reason}); the package layout changed") from e


def load_facts(path: str | os.PathLike | None = None) -> tuple[list[Fact], dict]:
    """Parsed facts of qa_wikidata: the cached task (fetched if absent) or a local ``task.json``.

    Returns:
        ``(facts, stats)`` as :func:`parse_examples`.
    """
    src = Path(path).expanduser() if path is not None else task_file()
    if not src.is_file():
        raise CompactLMError(f"--facts: {src} not found; expected BIG-bench qa_wikidata/task.json")
    try:
        task = json.loads(src.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CompactLMError(f"--facts: {src} is not a JSON file ({e})") from e
    if not isinstance(task, dict) or not isinstance(task.get("examples"), list):
        raise CompactLMError(f"--facts: {src} has no 'examples' list; expected BIG-bench qa_wikidata/task.json")
    return parse_examples(task["examples"], str(src))
