"""Where triple corpora come from: the offline distant-supervision default, local files, hub datasets.

:func:`load_splits` takes

* ``wikidata-distant`` (:data:`DISTANT`, the offline default): BIG-bench ``qa_wikidata`` facts
  (:mod:`.wikidata`) aligned with the sentences of the project's Wikipedia text (the ``wiki`` and
  ``wiki-eval`` corpora of :mod:`compactlm.data.corpora`) by :func:`.distant.align`, restricted to
  :data:`DEFAULT_RELATIONS`, then split by :func:`.splits.standard_split`. Built once and cached
  in ``$COMPACTLM_CACHE/triples/`` (atomic write; the file name carries a hash of the settings).
* a local folder holding train / validation / test files (names containing ``train``, ``dev`` or
  ``valid``, ``test``; ``.json`` / ``.jsonl``, read by :func:`.formats.read_file`), or one local
  file, split by :func:`.splits.standard_split`;
* ``hf:<dataset id>[:<config>]``: a Hugging Face dataset whose rows are in one of the formats
  :mod:`.formats` reads (needs a reachable hub; offline it is a one-line error).

The relation whitelist keeps the relations whose two arguments are named entities and whose pairs
can be stated in a sentence (places, countries, languages, organisations, works, people). Left out:
common-noun values (colours, instruments, genres, sports, materials, units, ranks, blood types,
phone numbers), calendar successions (``follows`` / ``followed by`` pair every month with the next)
and ``indigenous to`` / ``influenced by`` / ``named after``, whose pairs co-occur almost only as an
adjective beside its country (``Spanish ... Spain``).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

from compactlm.cache import cache_dir
from compactlm.errors import CompactLMError
from compactlm.io import write_json
from compactlm.tasks.triples import distant, formats, wikidata
from compactlm.tasks.triples.example import TripleExample
from compactlm.tasks.triples.splits import SPLIT_SEED, Splits, standard_split

log = logging.getLogger(__name__)

DISTANT = "wikidata-distant"
BUILD_VERSION = 1  # bump when the alignment rules change, so old caches are not reused

DEFAULT_RELATIONS: tuple[str, ...] = (
    "country", "country of citizenship", "country for sport", "country of origin",
    "native language", "languages spoken, written or signed", "writing language", "language used",
    "official language", "language of work or name", "religion", "official religion",
    "capital", "capital of", "continent", "located in", "shares border with", "basin country",
    "territory claimed by", "historic county", "located in or next to body of water",
    "headquarters location", "residence", "work location", "place of birth", "place of publication",
    "ethnic group", "developer", "manufacturer", "publisher", "original broadcaster", "record label",
    "participant", "replaced by", "operating system", "platform",
)


@dataclass(frozen=True)
class DistantConfig:
    """Settings of the distant-supervision corpus.

    Attributes:
        relations: Relation whitelist.
        texts: Corpora (names of :data:`compactlm.data.corpora.CORPORA`) whose sentences are aligned.
        min_words: Shortest sentence kept (words).
        max_words: Longest sentence kept (words).
        max_triples: Sentences with more aligned triples are dropped.
        facts: A local qa_wikidata ``task.json`` instead of the one in the bigbench sdist.
    """

    relations: tuple[str, ...] = DEFAULT_RELATIONS
    texts: tuple[str, ...] = ("wiki", "wiki-eval")
    min_words: int = 5
    max_words: int = 80
    max_triples: int = 8
    facts: str | None = None

    def key(self) -> str:
        blob = json.dumps({**asdict(self), "version": BUILD_VERSION}, sort_keys=True)
        if self.facts:
            p = Path(self.facts).expanduser()
            blob += f"|{p.resolve()}|{p.stat().st_mtime if p.is_file() else 0}"
        return hashlib.sha1(blob.encode()).hexdigest()[:12]


def build_distant(config: DistantConfig = DistantConfig(), documents: list[str] | None = None,
                  facts: list[wikidata.Fact] | None = None) -> tuple[list[TripleExample], dict]:
    """Build the distant-supervision corpus (no cache); ``documents`` / ``facts`` override the sources."""
    fact_stats: dict = {}
    if facts is None:
        facts, fact_stats = wikidata.load_facts(config.facts)
    types = wikidata.entity_types(facts)
    if documents is None:
        from compactlm.data.corpora import load_texts

        documents = [d for name in config.texts for d in load_texts(name)]
    examples, st = distant.align(documents, facts, config.relations, types, config.min_words,
                                 config.max_words, config.max_triples)
    rels = Counter(r for e in examples for _, r, _ in e.triples)
    stats = {"facts": fact_stats, "documents": len(documents), "align": asdict(st),
             "relations": dict(rels.most_common()), "typed_entities": len(types)}
    return examples, stats


def distant_corpus(config: DistantConfig = DistantConfig(), rebuild: bool = False) -> tuple[list[TripleExample], dict]:
    """The distant-supervision corpus from the cache, built (and cached atomically) if absent."""
    path = cache_dir("triples") / f"{DISTANT}-{config.key()}.json"
    if path.is_file() and not rebuild:
        try:
            blob = json.loads(path.read_text(encoding="utf-8"))
            return [TripleExample.from_json(r) for r in blob["examples"]], blob["stats"]
        except (json.JSONDecodeError, KeyError, TypeError):
            log.warning("%s is corrupt; rebuilding it", path)
    log.info("building the %s triple corpus (distant supervision; once, then cached in %s)", DISTANT, path.parent)
    examples, stats = build_distant(config)
    write_json(path, {"config": asdict(config), "stats": stats, "examples": [e.to_json() for e in examples]})
    return examples, stats


def _split_files(folder: Path) -> dict[str, Path]:
    files = sorted(p for p in folder.iterdir() if p.suffix in (".json", ".jsonl") and p.is_file())
    out: dict[str, Path] = {}
    for name, marks in (("train", ("train",)), ("validation", ("dev", "valid")), ("test", ("test",))):
        hits = [p for p in files if any(m in p.stem.lower() for m in marks)]
        if len(hits) > 1:
            raise CompactLMError(f"--data {folder}: several {name} files ({', '.join(p.name for p in hits)}); keep one")
        if hits:
            out[name] = hits[0]
    if "train" not in out or "test" not in out:
        raise CompactLMError(f"--data {folder}: expected .json/.jsonl files named *train* and *test* "
                             "(and optionally *dev*/*valid*) in the folder")
    return out


def _load_hub(source: str) -> Splits:
    from compactlm.data.corpora import hub_reachable

    spec = source[len("hf:"):]
    name, _, config = spec.partition(":")
    if not name:
        raise CompactLMError(f"--data {source!r}: expected hf:<dataset id>[:<config>]")
    if not hub_reachable():
        raise CompactLMError(f"--data {source!r}: the Hugging Face hub is unreachable (offline); "
                             f"use {DISTANT} or local .json/.jsonl files")
    import datasets

    try:
        ds = datasets.load_dataset(name, config or None)
    except Exception as e:  # noqa: BLE001 - datasets raises many types for network/format problems
        first = (str(e).splitlines() or [type(e).__name__])[0]
        raise CompactLMError(f"--data {source!r}: could not load {name} from the hub ({first})") from e
    parts = {}
    for split, aliases in (("train", ("train",)), ("validation", ("validation", "valid", "dev")), ("test", ("test",))):
        hit = next((a for a in aliases if a in ds), None)
        parts[split] = formats.parse_records(list(ds[hit]), f"{source}[{hit}]") if hit else []
    if not parts["train"] or not parts["test"]:
        raise CompactLMError(f"--data {source!r}: the dataset needs train and test splits, has {sorted(ds)}")
    return Splits(parts["train"], parts["validation"], parts["test"], {"split": "given", "source": source})


def load_splits(source: str = DISTANT, seed: int = SPLIT_SEED, validation: float = 0.1, test: float = 0.1,
                config: DistantConfig | None = None) -> Splits:
    """Train / validation / test examples of a triple corpus (see the module doc).

    Args:
        source: ``wikidata-distant``, a local folder or file, or ``hf:<id>[:<config>]``.
        seed, validation, test: The standard split of a corpus that comes unsplit.
        config: Settings of the distant corpus (default :class:`DistantConfig`).
    """
    if source == DISTANT:
        examples, stats = distant_corpus(config or DistantConfig())
        splits = standard_split(examples, validation, test, seed)
        splits.stats.update(source=DISTANT, build=stats)
        return splits
    if source.startswith("hf:"):
        return _load_hub(source)
    path = Path(source).expanduser()
    if path.is_dir():
        files = _split_files(path)
        parts = {k: formats.read_file(p) for k, p in files.items()}
        return Splits(parts["train"], parts.get("validation", []), parts["test"], {"split": "given", "source": source})
    if path.is_file():
        splits = standard_split(formats.read_file(path), validation, test, seed)
        splits.stats.update(source=source)
        return splits
    raise CompactLMError(f"--data {source!r}: not found; expected {DISTANT}, a local .json/.jsonl file or folder, "
                         "or hf:<dataset id>")
