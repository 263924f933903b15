"""Packages that are also the API verb of the same name: ``compactlm.qat(...)`` and ``compactlm.qat.prepare``.

``compactlm.qat`` is both the QAT package and the verb :func:`compactlm.api.qat`. Python binds a
package's submodules as attributes of its parent on import, so a plain function named ``qat`` in
``compactlm`` would be replaced by the package the first time anything imports ``compactlm.qat.*``.
Instead the package module itself is made callable and forwards to the verb: attribute access to
its submodules and names keeps working, and ``compactlm.qat(model, ...)`` is the API call.
"""

from __future__ import annotations

import importlib
import sys
import types


def make_callable(module_name: str, verb: str) -> None:
    """Make ``sys.modules[module_name]`` callable as ``compactlm.api.<verb>`` (same docs and signature)."""

    class _VerbPackage(types.ModuleType):
        def __call__(self, *args, **kwargs):
            return getattr(importlib.import_module("compactlm.api"), verb)(*args, **kwargs)

    _VerbPackage.__name__ = f"VerbPackage[{verb}]"
    sys.modules[module_name].__class__ = _VerbPackage
