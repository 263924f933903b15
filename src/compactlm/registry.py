"""Method table: name -> (options dataclass, apply function, needs calibration, description).

A PTQ method is a function ``apply(model, scheme, config, calib) -> report`` that replaces the
block linears of ``model`` in place by :class:`~compactlm.quant.QuantLinear` modules and returns a
JSON-able dict of what it measured. ``config`` is an instance of the method's own frozen options
dataclass; its fields become CLI flags (``--iters``, ``--rank``...) automatically.

The methods are listed explicitly in :data:`METHODS` below; the method modules know nothing of
this table (no registration at import time). A new method is one more row.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

from compactlm.errors import CompactLMError
from compactlm.ptq.flexround import FlexRoundConfig, apply_flexround
from compactlm.ptq.lrq import LRQConfig, apply_lrq
from compactlm.ptq.rtn import RTNConfig, apply_rtn
from compactlm.ptq.smoothquant import SmoothQuantConfig, apply_smoothquant


@dataclass(frozen=True)
class Method:
    """A quantization method of the toolkit."""

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


METHODS: tuple[Method, ...] = (
    Method("rtn", RTNConfig, apply_rtn, False, "round to nearest (min/max or Lp clip search)"),
    Method("smoothquant", SmoothQuantConfig, apply_smoothquant, True,
           "SmoothQuant migration (s = max|X|^a / max|W|^(1-a)) folded into norms, then RTN"),
    Method("flexround", FlexRoundConfig, apply_flexround, True,
           "FlexRound: learned element-wise division of the step size, block-wise reconstruction"),
    Method("lrq", LRQConfig, apply_lrq, True,
           "LRQ: low-rank learned scaling of the step size, block-wise reconstruction"),
)

_BY_NAME: dict[str, Method] = {m.name: m for m in METHODS}
if len(_BY_NAME) != len(METHODS):  # pragma: no cover - a table edit mistake
    raise RuntimeError("registry.METHODS lists a method name twice")


def get_method(name: str) -> Method:
    """The method called ``name``, or an error listing the known ones."""
    if name not in _BY_NAME:
        raise CompactLMError(f"--method: unknown method {name!r}; known: {', '.join(sorted(_BY_NAME))}")
    return _BY_NAME[name]


def list_methods() -> list[Method]:
    """Every method, sorted by name."""
    return [_BY_NAME[n] for n in sorted(_BY_NAME)]
