"""Loss terms declared as data: a named variant or an explicit ``((term, weight), ...)`` list, checked."""

from __future__ import annotations

from typing import Mapping, Sequence

from compactlm.errors import CompactLMError


def resolve_terms(loss: "str | Sequence", variants: Mapping[str, tuple], known: Mapping[str, object],
                  kind: str) -> tuple[tuple[str, float], ...]:
    """``loss`` as a checked term list: a key of ``variants`` or pairs whose names are in ``known``.

    Raises:
        CompactLMError: an unknown variant (``kind`` names what a variant is) or term, naming ``--loss``.
    """
    if isinstance(loss, str):
        if loss not in variants:
            raise CompactLMError(f"--loss: unknown {kind} {loss!r}; known: {', '.join(variants)}")
        return variants[loss]
    terms = tuple((str(n), float(w)) for n, w in loss)
    for n, _ in terms:
        if n not in known:
            raise CompactLMError(f"--loss: unknown loss term {n!r}; known: {', '.join(known)}")
    return terms
