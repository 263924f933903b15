"""One recipe loader for every command: a YAML or JSON file of settings -> a dict.

A recipe's keys are the command's flags with ``_`` for ``-`` (``seq_len: 128`` for ``--seq-len``);
unknown keys are a one-line error naming the file and the key. Flags typed on the command line
win over the recipe (:func:`merge`, or :func:`compactlm.commands.args.value` per setting).

    >>> recipe = load_recipe("recipe.yaml", known={"model", "scheme", "steps"})
    >>> settings = merge(recipe, {"steps": 50})   # --steps 50 typed beside --recipe
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Mapping

from compactlm.errors import CompactLMError


def load_recipe(path: "str | Path", known: Iterable[str] | None = None, flag: str = "--recipe") -> dict[str, Any]:
    """Read ``path`` (``.json``, else YAML) into a dict, checked against the ``known`` keys.

    Keys may be written with ``-`` (as the flags) or ``_``; they come back with ``_``. Errors
    (missing file, unparsable text, not a mapping, unknown key) are one-line
    :class:`CompactLMError` s naming ``flag`` and the file.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise CompactLMError(f"{flag}: no such file {path}")
    text = p.read_text(encoding="utf-8")
    if p.suffix.lower() == ".json":
        try:
            data = json.loads(text) if text.strip() else {}
        except json.JSONDecodeError as e:
            raise CompactLMError(f"{flag}: {path} is not valid JSON ({e.msg} at line {e.lineno})") from None
    else:
        import yaml

        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as e:
            raise CompactLMError(f"{flag}: {path} is not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise CompactLMError(f"{flag}: {path} must hold a mapping of settings (key: value), not {type(data).__name__}")
    out = {str(k).replace("-", "_"): v for k, v in data.items()}
    if known is not None:
        known = set(known)
        unknown = sorted(set(out) - known)
        if unknown:
            raise CompactLMError(f"{flag}: {path} has unknown key {unknown[0]!r}"
                                 + (f" (and {', '.join(map(repr, unknown[1:]))})" if len(unknown) > 1 else "")
                                 + f"; known keys: {', '.join(sorted(known))}")
    return out


def merge(recipe: Mapping[str, Any] | None, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``recipe`` with ``overrides`` (the flags the user typed) on top; ``None`` overrides are skipped."""
    out = dict(recipe or {})
    out.update({k: v for k, v in overrides.items() if v is not None})
    return out
