"""Tokenized samples of a corpus: seeded calibration windows and the evaluation token stream.

A corpus is tokenized document by document (no special tokens) and the documents are joined with
the tokenizer's end-of-sequence (else separator) token into one stream. Calibration draws ``n``
windows of ``seq_len`` tokens at seeded random offsets of that stream; perplexity reads its first
``max_tokens`` tokens. Streams are cached on disk under ``$COMPACTLM_CACHE/tokens`` keyed by the
tokenizer (name, class, size and the ids of a probe sentence) and the source.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile

import torch

from compactlm.cache import cache_dir
from compactlm.data.corpora import load_texts, source_stamp
from compactlm.errors import CompactLMError

log = logging.getLogger(__name__)

_PROBE = "The quick brown fox jumps over the lazy dog. 1234"


def separator_id(tokenizer) -> int | None:
    """Token placed between documents: eos, else sep, else none."""
    for attr in ("eos_token_id", "sep_token_id"):
        tid = getattr(tokenizer, attr, None)
        if isinstance(tid, int):
            return tid
    return None


def _tokenizer_key(tokenizer) -> str:
    ident = [type(tokenizer).__name__, str(getattr(tokenizer, "name_or_path", "")), len(tokenizer),
             tokenizer(_PROBE, add_special_tokens=False)["input_ids"], separator_id(tokenizer)]
    return json.dumps(ident, default=str)


def _tokenize(tokenizer, texts: list[str]) -> torch.Tensor:
    sep = separator_id(tokenizer)
    ids: list[int] = []
    for i, enc in enumerate(tokenizer(texts, add_special_tokens=False)["input_ids"]):
        if i and sep is not None:
            ids.append(sep)
        ids.extend(enc)
    return torch.tensor(ids, dtype=torch.long)


def token_stream(tokenizer, source: str | list[str]) -> torch.Tensor:
    """All tokens of a corpus, documents joined by the separator token. Shape ``[T]``.

    Args:
        tokenizer: A Hugging Face tokenizer.
        source: Corpus name / file (see :func:`compactlm.data.load_texts`) or a list of documents.
    """
    if tokenizer is None:
        raise CompactLMError("tokenizer: this model has no tokenizer, so text cannot be tokenized")
    if not isinstance(source, str):
        texts = [t for t in source if t and t.strip()]
        if not texts:
            raise CompactLMError("data source: the list of documents is empty")
        return _tokenize(tokenizer, texts)
    key = hashlib.sha256(f"{_tokenizer_key(tokenizer)}|{source}|{source_stamp(source)}".encode()).hexdigest()[:24]
    path = cache_dir("tokens") / f"{key}.pt"
    if path.is_file():
        try:
            return torch.load(path, weights_only=True)
        except Exception as e:  # noqa: BLE001 - a damaged cache entry is rebuilt
            log.warning("rebuilding damaged token cache %s (%s)", path, e)
    stream = _tokenize(tokenizer, load_texts(source))
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    torch.save(stream, tmp)
    os.replace(tmp, path)
    return stream


def token_samples(tokenizer, source: str | list[str], n: int, seq_len: int, seed: int = 0) -> torch.Tensor:
    """``n`` windows of ``seq_len`` tokens at seeded random offsets of the corpus stream.

    Args:
        tokenizer: A Hugging Face tokenizer.
        source: Corpus name, file, or list of documents.
        n: Number of samples.
        seq_len: Tokens per sample.
        seed: Seed of the offsets; the same arguments always give the same samples.

    Returns:
        LongTensor ``[n, seq_len]``.
    """
    if n < 1 or seq_len < 1:
        raise CompactLMError(f"samples: n ({n}) and seq_len ({seq_len}) must be positive")
    stream = token_stream(tokenizer, source)
    if stream.numel() < seq_len:
        raise CompactLMError(f"data source {source!r}: has {stream.numel()} tokens, fewer than seq_len={seq_len}")
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, stream.numel() - seq_len + 1, (n,), generator=g)
    return torch.stack([stream[s:s + seq_len] for s in starts.tolist()])


def eval_tokens(tokenizer, source: str | list[str], max_tokens: int) -> torch.Tensor:
    """The first ``max_tokens`` tokens of the corpus stream (all if shorter). Shape ``[1, N]``."""
    if max_tokens < 2:
        raise CompactLMError(f"max_tokens: {max_tokens} is too small; at least 2 tokens are needed")
    stream = token_stream(tokenizer, source)
    if stream.numel() < max_tokens:
        log.info("data source %r has %d tokens (< max_tokens=%d); using them all", source, stream.numel(), max_tokens)
    return stream[:max_tokens].unsqueeze(0).clone()
