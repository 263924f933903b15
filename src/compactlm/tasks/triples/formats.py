"""Readers of triple-extraction files in the formats the common NYT / WebNLG releases use.

A file is a JSON list of records, or JSON lines (one record per line; a ``.json`` file that is not
one JSON document is read as JSON lines too). Each record becomes a :class:`~.example.TripleExample`:

===============================  ===========================================================
sentence                         ``text`` | ``sentText`` | ``sentence`` (string), or ``tokens``
                                 (list of strings, joined with spaces)
triples                          the first of ``triple_list`` (CasRel), ``relation_list``
                                 (TPLinker), ``relationMentions`` (NYT, CopyRE), ``spo_list``,
                                 ``triples`` or ``relations`` (SpERT) that is present
a triple                         ``[head, relation, tail]``, or a dict with head in ``subject`` |
                                 ``head`` | ``h`` | ``em1Text`` | ``sub``, relation in
                                 ``predicate`` | ``relation`` | ``label`` | ``type`` | ``rel`` | ``r``,
                                 tail in ``object`` | ``tail`` | ``t`` | ``em2Text`` | ``obj``
an entity (head or tail)         a string; a token span ``[start, end)`` (needs ``tokens``); a dict
                                 with ``text`` | ``name`` | ``mention`` or a span in ``span`` |
                                 ``pos`` | ``tok_span`` | ``start``+``end`` (and maybe ``type``); or
                                 an index into ``entities`` (SpERT)
entity types                     ``entity_types`` ``{mention: type}``, ``entity_list`` (TPLinker,
                                 ``text``/``type``), ``entityMentions`` (NYT, ``text``/``label``),
                                 ``entities`` (SpERT, ``type``/``start``/``end``), or a ``type``
                                 inside an entity dict
===============================  ===========================================================

Bad input raises a one-line :class:`~compactlm.errors.CompactLMError` naming the file and the record
(``record N`` of a JSON list, ``line N`` of JSON lines). Records without triples are kept (they are
sentences that express none).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from compactlm.errors import CompactLMError
from compactlm.tasks.triples.example import TripleExample

SENTENCE_FIELDS = ("text", "sentText", "sentence")
TRIPLE_FIELDS = ("triple_list", "relation_list", "relationMentions", "spo_list", "triples", "relations")
HEAD_KEYS = ("subject", "head", "h", "em1Text", "sub")
RELATION_KEYS = ("predicate", "relation", "label", "type", "rel", "r")
TAIL_KEYS = ("object", "tail", "t", "em2Text", "obj")
TEXT_KEYS = ("text", "name", "mention")
SPAN_KEYS = ("span", "pos", "tok_span")


_NOT_JSON = object()


class _Bad(Exception):
    """A problem with one record; the reader adds the file and record to the message."""


def _first(d: dict, keys: tuple[str, ...]) -> Any:
    for k in keys:
        if k in d:
            return d[k]
    return None


def _span_text(span: Any, tokens: list[str] | None, what: str) -> str:
    if tokens is None:
        raise _Bad(f"{what} is a token span but the record has no 'tokens'")
    if not (isinstance(span, (list, tuple)) and len(span) == 2 and all(isinstance(x, int) for x in span)):
        raise _Bad(f"{what}: expected a [start, end) token span, got {span!r}")
    s, e = span
    if not 0 <= s < e <= len(tokens):
        raise _Bad(f"{what}: span {list(span)} is outside the {len(tokens)} tokens")
    return " ".join(tokens[s:e])


def _entity(value: Any, tokens: list[str] | None, entities: list | None, what: str) -> tuple[str, str | None]:
    """``(mention, type or None)`` of one head/tail value."""
    if isinstance(value, str):
        if not value.strip():
            raise _Bad(f"{what} is empty")
        return value.strip(), None
    if isinstance(value, bool):
        raise _Bad(f"{what}: expected a string, span, entity or entity index, got {value!r}")
    if isinstance(value, int):
        if not entities or not 0 <= value < len(entities):
            raise _Bad(f"{what}: entity index {value} but the record has {len(entities or [])} 'entities'")
        return _entity(entities[value], tokens, None, what)
    if isinstance(value, (list, tuple)):
        return _span_text(value, tokens, what), None
    if isinstance(value, dict):
        typ = value.get("type") if isinstance(value.get("type"), str) else None
        text = _first(value, TEXT_KEYS)
        if isinstance(text, str) and text.strip():
            return text.strip(), typ
        span = _first(value, SPAN_KEYS)
        if span is None and "start" in value and "end" in value:
            span = [value["start"], value["end"]]
        if span is not None:
            return _span_text(span, tokens, what), typ
    raise _Bad(f"{what}: expected a string, token span, entity dict or entity index, got {value!r}")


def _types(rec: dict, tokens: list[str] | None) -> dict[str, str]:
    types: dict[str, str] = {}
    given = rec.get("entity_types")
    if isinstance(given, dict):
        types.update({str(k): str(v) for k, v in given.items()})
    for field, label in (("entity_list", "type"), ("entityMentions", "label"), ("entities", "type")):
        items = rec.get(field)
        if not isinstance(items, list):
            continue
        for i, ent in enumerate(items):
            if not isinstance(ent, dict) or not isinstance(ent.get(label), str):
                continue
            name, _ = _entity({k: v for k, v in ent.items() if k != "type"}, tokens, None, f"{field}[{i}]")
            types.setdefault(name, ent[label])
    return types


def parse_record(rec: Any) -> TripleExample:
    """One record (see the module doc); raises ``_Bad`` with what is wrong."""
    if not isinstance(rec, dict):
        raise _Bad(f"expected a JSON object, got {type(rec).__name__}")
    tokens = rec.get("tokens")
    if tokens is not None and not (isinstance(tokens, list) and all(isinstance(t, str) for t in tokens)):
        raise _Bad("'tokens' must be a list of strings")
    sentence = _first(rec, SENTENCE_FIELDS)
    if sentence is None and tokens is not None:
        sentence = " ".join(tokens)
    if not isinstance(sentence, str) or not sentence.strip():
        raise _Bad(f"no sentence: expected a string field {' | '.join(SENTENCE_FIELDS)} or a 'tokens' list")
    field = next((f for f in TRIPLE_FIELDS if f in rec), None)
    if field is None:
        raise _Bad(f"no triples: expected a list field {' | '.join(TRIPLE_FIELDS)}")
    items = rec[field]
    if not isinstance(items, list):
        raise _Bad(f"'{field}' must be a list")
    entities = rec.get("entities") if isinstance(rec.get("entities"), list) else None
    types = _types(rec, tokens)
    triples = []
    for j, item in enumerate(items):
        what = f"{field}[{j}]"
        if isinstance(item, (list, tuple)) and len(item) == 3:
            h, r, t = item
        elif isinstance(item, dict):
            h, r, t = _first(item, HEAD_KEYS), _first(item, RELATION_KEYS), _first(item, TAIL_KEYS)
            if h is None or r is None or t is None:
                raise _Bad(f"{what}: expected head ({'|'.join(HEAD_KEYS)}), relation ({'|'.join(RELATION_KEYS)}) "
                           f"and tail ({'|'.join(TAIL_KEYS)}) keys, got {sorted(item)}")
        else:
            raise _Bad(f"{what}: expected [head, relation, tail] or an object, got {item!r}")
        if not isinstance(r, str) or not r.strip():
            raise _Bad(f"{what}: the relation must be a non-empty string, got {r!r}")
        (head, htype), (tail, ttype) = _entity(h, tokens, entities, f"{what} head"), _entity(t, tokens, entities, f"{what} tail")
        for name, typ in ((head, htype), (tail, ttype)):
            if typ:
                types.setdefault(name, typ)
        triples.append((head, r.strip(), tail))
    return TripleExample(sentence.strip(), tuple(triples), types)


def _records(path: Path) -> tuple[list[Any], str]:
    """Records of ``path`` and the unit its errors count in ("record" or "line")."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise CompactLMError(f"{path}: not UTF-8 text ({e.reason})") from e
    if path.suffix != ".jsonl":
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            data = _NOT_JSON
        if isinstance(data, list):
            return data, "record"
        if data is not _NOT_JSON and "\n" in text.strip():
            raise CompactLMError(f"{path}: expected a JSON list of records or JSON lines, got a JSON {type(data).__name__}")
    rows: list[Any] = []
    for i, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            rows.append(None)
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise CompactLMError(f"{path}: line {i} is not valid JSON ({e.msg})") from e
    return rows, "line"


def read_file(path: str | Path) -> list[TripleExample]:
    """Examples of a ``.json`` / ``.jsonl`` triple file (see the module doc)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise CompactLMError(f"{path}: file not found")
    records, unit = _records(path)
    out = []
    for i, rec in enumerate(records, start=1):
        if rec is None and unit == "line":
            continue
        try:
            out.append(parse_record(rec))
        except _Bad as e:
            raise CompactLMError(f"{path}: {unit} {i}: {e}") from None
    if not out:
        raise CompactLMError(f"{path}: holds no records")
    return out


def parse_records(records: list[Any], source: str) -> list[TripleExample]:
    """Examples of in-memory records (e.g. rows of a hub dataset); errors name ``source`` and the row."""
    out = []
    for i, rec in enumerate(records):
        try:
            out.append(parse_record(rec))
        except _Bad as e:
            raise CompactLMError(f"{source}: row {i}: {e}") from None
    return out
