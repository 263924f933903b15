"""User-facing errors.

Every error a user can cause by passing a bad argument, file or name is a
:class:`CompactLMError`. The CLI prints it as one line (``compactlm: error: ...``) and exits
with status 2 instead of showing a traceback from deep inside torch.
"""

from __future__ import annotations


class CompactLMError(ValueError):
    """A bad argument, file or name, described in one actionable line.

    Args:
        message: What is wrong and what was expected, naming the argument.
    """


def require(condition: bool, message: str) -> None:
    """Raise :class:`CompactLMError` with ``message`` unless ``condition`` holds."""
    if not condition:
        raise CompactLMError(message)
