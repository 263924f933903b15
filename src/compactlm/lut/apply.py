"""Swap a model's non-linear operations for NN-LUT tables, and back (Yu et al., DAC 2022).

No model code is forked; everything is found through :class:`compactlm.models.ArchSpec`:

* **MLP activations** (``spec.mlp_act`` in every block): replaced by :class:`LUTActivation`. Which
  function a module computes is identified by probing it (GELU — erf or tanh form —, SiLU; ReLU
  is already piecewise linear and left alone), so no name matching is needed.
* **Norms** (``spec.block_norms``, ``spec.final_norm``, ``spec.embedding_norm``): replaced by
  :class:`LUTNorm`, which recomputes LayerNorm / RMSNorm / Gemma's ``(1 + w)`` RMSNorm
  (``spec.norm_type``) with ``1/√(var + eps)`` from the ``rsqrt`` table. It shares the original
  ``weight`` / ``bias`` parameters, so ``state_dict`` keys and values do not change. Before a
  swap the replacement is checked against the original module on a probe input with an exact
  ``1/√``, so a wrong ``norm_type`` fails loudly instead of silently.
* **Softmax** of attention: a custom attention function registered with transformers'
  ``AttentionInterface`` computes the softmax as ``T_exp(x - max)·T_recip(Σ)``, and the model's
  ``attn_implementation`` is switched to it (:mod:`compactlm.lut.attention`).

:meth:`LUTHandle.remove` puts back the original modules and attention implementation: the model
is then exactly the original (bit-identical outputs). :func:`calibrate_luts` re-fits the networks
on inputs recorded from real activations (the tables see the same inputs as during inference).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from compactlm.errors import CompactLMError
from compactlm.lut.attention import install_lut_attention, restore_attention
from compactlm.lut.functions import TARGETS, check_ops, lut_activation, lut_rsqrt, needed_functions
from compactlm.lut.table import LUT

log = logging.getLogger(__name__)

_ACT_PROBE = torch.linspace(-6.0, 6.0, 241)
_ACT_REFERENCES = {
    "gelu": (lambda x: nn.functional.gelu(x), lambda x: nn.functional.gelu(x, approximate="tanh")),
    "silu": (nn.functional.silu,),
    "relu": (torch.relu,),
}


def identify_activation(module: nn.Module) -> str | None:
    """``"gelu"``, ``"silu"``, ``"relu"`` by probing ``module`` on [-6, 6]; ``None`` if none fits.

    Raises:
        Whatever ``module`` raises on the 1-D probe (it is then no elementwise activation);
        :func:`apply_luts` turns that into a :class:`CompactLMError` naming the op.
    """
    p = next(module.parameters(), None)
    x = _ACT_PROBE.to(p.device if p is not None else "cpu")
    with torch.no_grad():
        y = module(x).float().cpu()
    if y.shape != _ACT_PROBE.shape:
        return None  # not elementwise
    for name, refs in _ACT_REFERENCES.items():
        if any(float((y - ref(_ACT_PROBE)).abs().max()) < 2e-3 for ref in refs):
            return name
    return None


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__


def _identify_block_activations(model: nn.Module, spec, act_ops: tuple[str, ...]) -> dict[str, str | None]:
    """``{path: activation kind}`` of every block's MLP activation.

    Raises:
        CompactLMError: a block has no ``spec.mlp_act`` module, or probing it fails, so the
            requested activation ops could not be applied.
    """
    from compactlm.models.specs import blocks_path, get_blocks

    root = blocks_path(model)
    ops = "/".join(act_ops)
    acts = {}
    for i, block in enumerate(get_blocks(model)):
        path = f"{root}.{i}.{spec.mlp_act}"
        try:
            module = block.get_submodule(spec.mlp_act)
        except AttributeError:
            raise CompactLMError(
                f"--ops {ops}: cannot apply, block {path.rpartition('.')[0]} has no activation module "
                f"{spec.mlp_act!r} (check ArchSpec.mlp_act for this architecture)"
            ) from None
        try:
            acts[path] = identify_activation(module)
        except Exception as e:  # noqa: BLE001 - reported, not swallowed
            raise CompactLMError(
                f"--ops {ops}: cannot apply, probing the activation {path} ({type(module).__name__}) "
                f"failed: {_first_line(e)}"
            ) from e
        if acts[path] is None:
            log.warning("activation %s (%s) computes none of gelu/silu/relu; left in place",
                        path, type(module).__name__)
    return acts


class LUTActivation(nn.Module):
    """GELU / SiLU from a table (float32, cast back to the input dtype); asymptotes outside its interval.

    See :func:`compactlm.lut.functions.lut_activation`.
    """

    def __init__(self, table):
        super().__init__()
        self.table = table

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return lut_activation(x.float(), self.table).to(x.dtype)

    def extra_repr(self) -> str:
        return f"fn={self.table.fn}, entries={getattr(self.table, 'entries', '?')}"


class LUTNorm(nn.Module):
    """LayerNorm / RMSNorm over the last dimension with ``1/√(var + eps)`` from a table.

    * ``layernorm``: ``(x - μ)·T(σ² + eps)·w + b``
    * ``rmsnorm``: ``x·T(mean(x²) + eps)·w``
    * ``rmsnorm_plus1``: ``x·T(mean(x²) + eps)·(1 + w)`` (Gemma)

    Args:
        original: The norm module it replaces (its ``weight`` / ``bias`` are shared, not copied).
        norm_type: One of the three above.
        table: The ``rsqrt`` table (anything callable like a :class:`LUT`).
    """

    def __init__(self, original: nn.Module, norm_type: str, table):
        super().__init__()
        if norm_type not in ("layernorm", "rmsnorm", "rmsnorm_plus1"):
            raise CompactLMError(f"norm_type: unknown {norm_type!r}")
        self.norm_type = norm_type
        self.table = table
        eps = getattr(original, "eps", None)
        if eps is None:
            eps = getattr(original, "variance_epsilon", None)
        if eps is None:
            raise CompactLMError(f"norm: {type(original).__name__} has no eps / variance_epsilon")
        self.eps = float(eps)
        self.weight = getattr(original, "weight", None)
        self.bias = getattr(original, "bias", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.float()
        if self.norm_type == "layernorm":
            h = h - h.mean(-1, keepdim=True)
        var = h.pow(2).mean(-1, keepdim=True)
        h = h * lut_rsqrt(var + self.eps, self.table)
        if self.weight is not None:
            w = self.weight.float()
            h = h * (1.0 + w if self.norm_type == "rmsnorm_plus1" else w)
        if self.bias is not None:
            h = h + self.bias.float()
        return h.to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.norm_type}, eps={self.eps}, entries={getattr(self.table, 'entries', '?')}"


class ExactRsqrt:
    """Stand-in table computing ``1/√x`` exactly (for checking a :class:`LUTNorm` against its original)."""

    fn, lo, hi = "rsqrt", 1.0, 4.0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.rsqrt(x)


@dataclass
class LUTHandle:
    """What :func:`apply_luts` changed; :meth:`remove` undoes it exactly.

    Attributes:
        replaced: ``{op: number of modules / attention layers replaced}``.
        tables: The tables in use, by function name.
    """

    model: nn.Module
    replaced: dict = field(default_factory=dict)
    tables: dict = field(default_factory=dict)
    _swaps: list = field(default_factory=list, repr=False)  # (parent, attr, original module)
    _attn: tuple | None = field(default=None, repr=False)  # (registered name, original implementation)

    def remove(self) -> None:
        """Restore the original modules and attention implementation (idempotent)."""
        for parent, attr, original in reversed(self._swaps):
            setattr(parent, attr, original)
        self._swaps.clear()
        if self._attn is not None:
            restore_attention(self.model, *self._attn)
            self._attn = None

    def __enter__(self) -> "LUTHandle":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    def report(self) -> dict:
        return {
            "replaced": dict(self.replaced),
            "tables": {k: {"entries": getattr(t, "entries", None), "method": getattr(t, "method", None)}
                       for k, t in self.tables.items()},
        }


def load_tables(luts, fns, entries: int = 16) -> dict:
    """Resolve ``luts`` into ``{fn: table}`` for the functions ``fns``.

    Args:
        luts: ``"default"`` (fitted once with default settings and cached), a directory of JSON
            tables written by :func:`compactlm.lut.export.save_luts`, or a dict ``{fn: LUT}``.
        entries: Table size for ``"default"``.

    Raises:
        CompactLMError: a needed table is missing.
    """
    if isinstance(luts, str) and luts == "default":
        from compactlm.lut.export import default_luts

        return default_luts(fns, entries=entries)
    if isinstance(luts, (str, os.PathLike)):
        from compactlm.lut.export import load_luts

        luts = load_luts(Path(luts))
    if not isinstance(luts, dict):
        raise CompactLMError(f"luts: expected 'default', a table directory or a dict, got {type(luts).__name__}")
    missing = [f for f in fns if f not in luts]
    if missing:
        raise CompactLMError(f"luts: no table for {', '.join(missing)} (have: {', '.join(luts) or 'none'})")
    return {f: luts[f] for f in fns}


def _norm_paths(model: nn.Module, spec) -> list[str]:
    """Dotted paths (from the model root) of every norm module the spec names."""
    from compactlm.models.specs import blocks_path

    root = blocks_path(model)
    n_blocks = len(model.get_submodule(root))
    paths = [f"{root}.{i}.{name}" for i in range(n_blocks) for name in spec.block_norms]
    base_prefix = next((n for n, m in model.named_modules() if m is getattr(model, "base_model", model)), "")
    for extra in (spec.final_norm, spec.embedding_norm):
        if extra:
            paths.append(f"{base_prefix}.{extra}" if base_prefix else extra)
    return paths


def _swap(handle: LUTHandle, model: nn.Module, path: str, new: nn.Module) -> None:
    parent_path, _, attr = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    handle._swaps.append((parent, attr, getattr(parent, attr)))
    setattr(parent, attr, new)


def _check_norm(original: nn.Module, norm_type: str, path: str) -> None:
    """Fail if :class:`LUTNorm` with an exact 1/√ does not reproduce ``original``."""
    weight = getattr(original, "weight", None)
    dim = weight.shape[-1] if weight is not None else original.normalized_shape[-1]
    ref = weight if weight is not None else next(original.parameters(), None)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, dim, generator=g).to(device=ref.device if ref is not None else "cpu")
    with torch.no_grad():
        want = original(x.to(ref.dtype if ref is not None else x.dtype)).float()
        got = LUTNorm(original, norm_type, ExactRsqrt())(x.to(want.dtype)).float()
    if not torch.allclose(got, want, atol=1e-3, rtol=1e-3):
        raise CompactLMError(
            f"norm {path}: {type(original).__name__} does not compute a {norm_type} "
            "(check ArchSpec.norm_type / block_norms for this architecture)"
        )


def apply_luts(model: nn.Module, luts="default", ops=("gelu", "silu", "softmax", "layernorm", "rmsnorm"),
               entries: int = 16) -> LUTHandle:
    """Replace the model's non-linear operations by table lookups, in place.

    Args:
        model: A supported HF model (see :mod:`compactlm.models.specs`).
        luts: ``"default"``, a directory of JSON tables, or ``{fn: LUT}`` (``gelu``, ``silu``,
            ``exp``, ``reciprocal``, ``rsqrt``); only the tables the requested ops need are used.
        ops: Operations to replace. ``layernorm`` / ``rmsnorm`` apply to the model's norms when
            its ``norm_type`` is of that kind (``rmsnorm`` covers Gemma's ``1 + w`` variant). Ops
            the model does not have are skipped, and their tables are not needed.
        entries: Table size when ``luts="default"``.

    Returns:
        A :class:`LUTHandle`; ``handle.remove()`` restores the exact original model.
    """
    from compactlm.models.specs import get_blocks, get_spec

    ops = check_ops(ops)
    spec = get_spec(model)
    act_ops = tuple(o for o in ops if o in ("gelu", "silu"))
    acts = _identify_block_activations(model, spec, act_ops) if act_ops else {}  # block path -> kind
    norm_op = "layernorm" if spec.norm_type == "layernorm" else "rmsnorm"
    present = {*acts.values(), norm_op, "softmax"}
    ops = tuple(o for o in ops if o in present)  # only tables for ops this model has are needed
    tables = load_tables(luts, needed_functions(ops), entries=entries) if ops else {}
    handle = LUTHandle(model=model, tables=tables)
    try:
        # MLP activations.
        for path, kind in acts.items():
            if kind in ("gelu", "silu") and kind in ops:  # ReLU is already piecewise linear
                _swap(handle, model, path, LUTActivation(tables[kind]))
                handle.replaced[kind] = handle.replaced.get(kind, 0) + 1
        # Norms.
        if norm_op in ops:
            for path in _norm_paths(model, spec):
                original = model.get_submodule(path)
                _check_norm(original, spec.norm_type, path)
                _swap(handle, model, path, LUTNorm(original, spec.norm_type, tables["rsqrt"]))
                handle.replaced[norm_op] = handle.replaced.get(norm_op, 0) + 1
        # Softmax.
        if "softmax" in ops:
            handle._attn = install_lut_attention(model, tables["exp"], tables["reciprocal"], f"compactlm_lut_{id(handle):x}")
            handle.replaced["softmax"] = len(get_blocks(model))
    except BaseException:
        handle.remove()
        raise
    log.info("NN-LUT applied: %s", ", ".join(f"{k} ×{v}" for k, v in handle.replaced.items()) or "nothing")
    return handle


class RecordingTable:
    """Stand-in table that computes the exact function and keeps a seeded subsample of its inputs.

    Inputs are what the real tables would see strictly inside their interval (``exp``: ``x - max``
    without underflowed entries; ``gelu`` / ``silu``: without the clamped ends; ``reciprocal`` /
    ``rsqrt``: range-normalised mantissas).
    """

    def __init__(self, fn: str, keep: int = 20000, seed: int = 0):
        target = TARGETS[fn]
        self.fn, self.lo, self.hi, self._f = fn, target.lo, target.hi, target.fn
        self.keep = keep
        self.samples: list[torch.Tensor] = []
        self.seen = 0
        self._g = torch.Generator().manual_seed(seed)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        v = x.detach().flatten().float().cpu()
        if self.fn not in ("reciprocal", "rsqrt"):  # drop underflowed / clamped inputs (the mantissas always fit)
            v = v[(v > self.lo) & (v < self.hi)]
        if v.numel():
            self.seen += v.numel()
            take = min(v.numel(), max(1, self.keep // 8))
            idx = torch.randint(0, v.numel(), (take,), generator=self._g)
            self.samples.append(v[idx])
        return self._f(x)

    def collected(self) -> torch.Tensor:
        """Up to ``keep`` recorded inputs (seeded subsample), float64."""
        if not self.samples:
            return torch.zeros(0, dtype=torch.float64)
        v = torch.cat(self.samples).to(torch.float64)
        if v.numel() > self.keep:
            v = v[torch.randperm(v.numel(), generator=self._g)[: self.keep]]
        return v


def calibrate_luts(model: nn.Module, batches, ops=("gelu", "silu", "softmax", "layernorm", "rmsnorm"),
                   entries: int = 16, keep: int = 20000, seed: int = 0, **fit_overrides) -> dict:
    """Re-fit the tables on inputs recorded from real activations (short calibration).

    The model is run on ``batches`` with exact stand-in tables that record their inputs; each
    network is then trained on the uniform samples plus the recorded ones
    (:func:`compactlm.lut.fit.fit_lut` ``extra_samples``), so it spends its breakpoints where the
    model's activations actually fall.

    Args:
        batches: Iterable of ``input_ids`` tensors ``[B, T]`` (or dicts of model inputs).
        keep: Recorded inputs kept per function.

    Returns:
        ``{fn: LUT}`` with ``method="nn-lut-calibrated"``, for the functions the model uses.
    """
    from compactlm.lut.fit import fit_lut

    fns = needed_functions(ops)
    recorders = {f: RecordingTable(f, keep=keep, seed=seed) for f in fns}
    device = next(model.parameters()).device
    with torch.no_grad(), apply_luts(model, recorders, ops=ops) as handle:  # the fits below need gradients
        used = needed_functions(tuple(handle.replaced)) if handle.replaced else ()
        for batch in batches:
            if isinstance(batch, dict):
                model(**{k: v.to(device) for k, v in batch.items()})
            else:
                model(input_ids=batch.to(device))
    tables = {}
    for f, rec in recorders.items():
        if f not in used:  # an op this model does not have (e.g. SiLU in BERT)
            continue
        samples = rec.collected()
        log.info("calibration %s: %d inputs recorded, %d kept", f, rec.seen, samples.numel())
        tables[f] = fit_lut(f, entries, extra_samples=samples if samples.numel() else None, seed=seed,
                            **fit_overrides)
    return tables
