"""Method registry: name -> (options dataclass, apply function, needs calibration).

A PTQ method is a function ``apply(model, scheme, config, calib) -> report`` that replaces the
block linears of ``model`` in place by :class:`~compactlm.quant.QuantLinear` modules and returns a
JSON-able dict of what it measured. ``config`` is an instance of the method's own frozen options
dataclass; its fields become CLI flags (``--iters``, ``--rank``...) automatically.

Methods are registered by explicit imports in :mod:`compactlm.ptq` (no name scanning).
"""

from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass
from typing import Any, Callable

from compactlm.errors import CompactLMError


@dataclass(frozen=True)
class Method:
    """A registered quantization method."""

    name: str
    config_cls: type
    apply: Callable[..., dict]
    needs_calibration: bool
    description: str

    def make_config(self, options: dict[str, Any] | None = None):
        """Build the options dataclass, rejecting unknown option names with a clear message."""
        options = dict(options or {})
        fields = {f.name: f for f in dataclasses.fields(self.config_cls)}
        unknown = sorted(set(options) - set(fields))
        if unknown:
            flags = ", ".join(f"--{n.replace('_', '-')}" for n in fields) or "none"
            raise CompactLMError(
                f"method {self.name!r} has no option(s) {', '.join(unknown)}; its options: {flags}"
            )
        return self.config_cls(**options)


_METHODS: dict[str, Method] = {}


def register_method(name: str, config_cls: type, needs_calibration: bool, description: str):
    """Decorator registering ``apply`` under ``name``."""

    def deco(apply: Callable[..., dict]) -> Callable[..., dict]:
        if name in _METHODS and _METHODS[name].apply is not apply:
            raise RuntimeError(f"method {name!r} registered twice")
        _METHODS[name] = Method(name, config_cls, apply, needs_calibration, description)
        return apply

    return deco


def _load_builtin() -> None:
    importlib.import_module("compactlm.ptq")


def get_method(name: str) -> Method:
    """The registered method, or an error listing the known ones."""
    _load_builtin()
    if name not in _METHODS:
        raise CompactLMError(f"--method: unknown method {name!r}; known: {', '.join(sorted(_METHODS))}")
    return _METHODS[name]


def list_methods() -> list[Method]:
    _load_builtin()
    return [_METHODS[n] for n in sorted(_METHODS)]
