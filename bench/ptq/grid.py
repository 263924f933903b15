"""The PTQ benchmark grid: which (method, scheme, variant) rows exist, in priority order.

Standard library only (imported by ``run.py`` and by the tests). A :class:`Row` says where its
quantization happens (``compactlm`` in ``.venv`` or ``llm-compressor`` in ``.venv-peers``) and the
method options; ``run.py`` walks :func:`grid` in order and skips rows already in ``ptq.json``.

Priority (so a cut-off run has the rows of the targets first):

1. ``main``: FP reference; W4A16, W3A16, W4A8: RTN, GPTQ, AWQ, FlexRound, LRQ (+ SmoothQuant+RTN
   at W4A8); W8A8: RTN, SmoothQuant+RTN, LRQ (after SmoothQuant migration, as the paper's W8A8).
2. ``w2``: W2A16-g64: RTN, GPTQ, AWQ, FlexRound, LRQ.
3. ``sweep``: LRQ and FlexRound iterations per block at W3A16 (quality against cost; the main grid
   is the 20-iteration point).
4. ``extra``: the cells that answer no target (FlexRound W8A8, GPTQ W8A8, SmoothQuant(llm-compressor)
   at W8A8 and W4A8).
"""

from __future__ import annotations

from dataclasses import dataclass, field

PEER_METHODS = ("gptq", "awq", "smoothquant-llmc")
LEARNED = ("flexround", "lrq")


@dataclass(frozen=True)
class Row:
    """One benchmark cell.

    Attributes:
        method: ``fp`` | ``rtn`` | ``smoothquant`` | ``flexround`` | ``lrq`` | a peer method.
        scheme: Canonical scheme (``fp32`` for the reference).
        group: ``main`` | ``w2`` | ``sweep`` | ``extra``.
        variant: ``""`` for the main grid, e.g. ``"iters=50"`` for the sweep.
        options: Method options passed to ``compactlm.api.quantize`` (learned rows get ``iters``,
            ``lr``, ``batch_size`` from the runner's flags unless set here).
    """

    method: str
    scheme: str
    group: str
    variant: str = ""
    options: dict = field(default_factory=dict, hash=False, compare=False)

    @property
    def key(self) -> str:
        return f"{self.method}|{self.scheme}|{self.variant}"

    @property
    def slug(self) -> str:
        """Folder-safe name of the row."""
        return "-".join(p for p in (self.method, self.scheme, self.variant.replace("=", "")) if p)

    @property
    def peer(self) -> bool:
        return self.method in PEER_METHODS


def grid(sweep_iters: tuple[int, ...] = (10, 50, 100), smooth_alpha: float = 0.5) -> list[Row]:
    """All rows in priority order (see the module docstring)."""
    rows = [Row("fp", "fp32", "main")]
    for scheme in ("w4a16", "w3a16", "w4a8"):
        rows += [Row("rtn", scheme, "main"), Row("lrq", scheme, "main")]
    rows += [Row("rtn", "w8a8", "main"), Row("smoothquant", "w8a8", "main", options={"alpha": smooth_alpha}),
             Row("lrq", "w8a8", "main", options={"smooth_alpha": smooth_alpha})]
    for scheme in ("w4a16", "w3a16", "w4a8"):
        rows += [Row("gptq", scheme, "main"), Row("awq", scheme, "main"), Row("flexround", scheme, "main")]
    rows.append(Row("smoothquant", "w4a8", "main", options={"alpha": smooth_alpha}))
    rows += [Row(m, "w2a16-g64", "w2") for m in ("rtn", "gptq", "awq", "lrq", "flexround")]
    rows += [Row(m, "w3a16", "sweep", f"iters={n}", {"iters": n}) for n in sweep_iters for m in LEARNED]
    rows += [Row("flexround", "w8a8", "extra", options={"smooth_alpha": smooth_alpha}),
             Row("gptq", "w8a8", "extra"), Row("smoothquant-llmc", "w8a8", "extra"),
             Row("smoothquant-llmc", "w4a8", "extra")]
    return rows


def select(rows: list[Row], groups: str | None = None, methods: str | None = None,
           schemes: str | None = None, exclude_methods: str | None = None) -> list[Row]:
    """Rows whose group / method / scheme are in the comma-separated filters (``None``: all)."""

    def ok(value: str, spec: str | None) -> bool:
        return spec is None or value in spec.split(",")

    out = [r for r in rows if ok(r.group, groups) and ok(r.method, methods) and ok(r.scheme, schemes)]
    if exclude_methods:
        out = [r for r in out if r.method not in exclude_methods.split(",")]
    return out
