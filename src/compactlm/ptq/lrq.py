"""LRQ: Low-Rank Quantization (Lee et al., NAACL 2025, arXiv 2407.11534; METHODS.md §1.3).

FlexRound's full matrix of learned log-scales is replaced by a low-rank matrix plus a row and a
column vector:

    Ŵ = s1 · (clamp(round_ste(W / (s1 ⊙ exp(L·U + r·1ᵀ + 1·cᵀ))) + z, qmin, qmax) − z)

with ``L`` ``[C_out, rank]`` (init 0), ``U`` ``[rank, C_in]`` (Kaiming-uniform init, as LoRA's
``A``), ``r`` ``[C_out, 1]`` and ``c`` ``[1, C_in]`` (init 0): the initial quantizer is RTN, the
zero point is fixed, and the deployed weight is a plain integer grid with step ``s1``.

Rank. The authors use rank 1024 for Llama-2 7B/13B (d = 4096 / 5120) and 2048 for 70B (d = 8192),
i.e. about a quarter of the smaller matrix side; a fixed 1024 would be full rank (or more) on a
135M model and LRQ would lose its point (fewer parameters than FlexRound). The default is
therefore a *rank ratio* of 0.25 of ``min(C_out, C_in)``: on SmolLM2-135M (d = 576) rank 144,
learning ~2.5x fewer parameters than FlexRound per block. ``rank`` overrides it with a fixed value.

Rank rule (``rank_rule``). The authors' LRQ is a hybrid: the low-rank form only on some linears and
FlexRound's full ``S2`` on the others (Llama-2-7B: attention low rank, MLP full; 70B the reverse;
13B low rank everywhere). ``"all"`` is low rank everywhere; ``"attention"`` / ``"mlp"`` put the
low-rank form only on that sub-layer (the role comes from the architecture table,
:meth:`compactlm.models.specs.ArchSpec.linear_role`), ``"authors"`` is ``"attention"`` (their
7B rule); ``"saving"`` is low rank only where it learns fewer than ``saving_fraction`` of the full
matrix's parameters, ``rank·(C_in + C_out) < f·C_in·C_out``. A linear kept full is trained by the
FlexRound quantizer (``S2`` and ``s3``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from compactlm.errors import CompactLMError
from compactlm.models.specs import block_linears, get_blocks, get_spec, linear_weight
from compactlm.ptq.flexround import FlexRoundQuantizer, LogScaleRounding
from compactlm.ptq.engine import ReconstructionConfig, reconstruct
from compactlm.quant.primitives import group_size_for
from compactlm.quant.scheme import QuantScheme

RANK_RULES = ("all", "saving", "attention", "mlp", "authors")


class LRQQuantizer(LogScaleRounding):
    """LRQ: ``D = L·U + r·1ᵀ + 1·cᵀ``.

    Args:
        weight: ``[C_out, C_in]``.
        scheme: Weight grid.
        rank: Rank of ``L·U`` (1 .. min(C_out, C_in)).
        clip: ``s1`` initialisation.
        generator: Seeds the Kaiming-uniform draw of ``U``.
        col_weight: ``[C_in]`` mean squared input per column (``clip="act-mse"`` only).
    """

    def __init__(self, weight: torch.Tensor, scheme: QuantScheme, rank: int, clip: str = "minmax",
                 generator: torch.Generator | None = None, col_weight: torch.Tensor | None = None):
        super().__init__(weight, scheme, clip, col_weight)
        c_out, c_in = self.shape
        if not 1 <= rank <= min(c_out, c_in):
            raise CompactLMError(
                f"--rank {rank} is outside 1..{min(c_out, c_in)} for a {c_out}x{c_in} weight; "
                "use a smaller --rank or --rank-ratio"
            )
        self.L = nn.Parameter(torch.zeros(c_out, rank))
        self.U = nn.Parameter(torch.empty(rank, c_in))
        nn.init.kaiming_uniform_(self.U, a=math.sqrt(5), generator=generator)
        self.r = nn.Parameter(torch.zeros(c_out, 1))
        self.c = nn.Parameter(torch.zeros(1, c_in))

    def log_divisor(self) -> torch.Tensor:
        return self.L @ self.U + self.r + self.c  # (C_out, C_in)


@dataclass(frozen=True)
class LRQConfig(ReconstructionConfig):
    """Options of LRQ.

    Attributes:
        rank: Fixed rank of ``L·U`` for every linear; ``None`` uses ``rank_ratio``.
        rank_ratio: Rank as a fraction of ``min(C_out, C_in)`` (rounded, at least 1).
        rank_rule: Which linears get the low-rank form, the others FlexRound's full matrix:
            ``"all"``; ``"attention"`` or ``"mlp"`` (that sub-layer only, by the architecture's
            layer roles); ``"authors"`` (= ``"attention"``, the authors' Llama-2-7B hybrid);
            ``"saving"`` (where ``rank·(C_in + C_out) < saving_fraction·C_in·C_out``).
        saving_fraction: ``f`` of ``rank_rule="saving"``: the low-rank form must learn fewer than
            this fraction of a full matrix's parameters (1.0: any saving).
    """

    lr: float = 3e-3
    rank: int | None = None
    rank_ratio: float = 0.25
    rank_rule: str = "all"
    saving_fraction: float = 1.0

    def low_rank(self, role: str, c_out: int, c_in: int) -> bool:
        """Whether a ``c_out x c_in`` linear of sub-layer ``role`` gets the low-rank form."""
        rule = "attention" if self.rank_rule == "authors" else self.rank_rule
        if rule == "all":
            return True
        if rule == "saving":
            return self.rank_for(c_out, c_in) * (c_in + c_out) < self.saving_fraction * c_in * c_out
        return role == rule

    def rank_for(self, c_out: int, c_in: int) -> int:
        if self.rank is not None:
            return self.rank
        return max(1, round(self.rank_ratio * min(c_out, c_in)))

    def check(self) -> None:
        super().check()
        if self.rank is not None and self.rank < 1:
            raise CompactLMError(f"--rank must be >= 1, got {self.rank}")
        if not 0 < self.rank_ratio <= 1:
            raise CompactLMError(f"--rank-ratio must lie in (0, 1], got {self.rank_ratio}")
        if self.rank_rule not in RANK_RULES:
            raise CompactLMError(f"--rank-rule: expected one of {', '.join(RANK_RULES)}, got {self.rank_rule!r}")
        if not self.saving_fraction > 0:
            raise CompactLMError(f"--saving-fraction must be > 0, got {self.saving_fraction}")


def learned_params(low_rank: bool, c_out: int, c_in: int, rank: int, n_groups: int) -> int:
    """Parameters one linear's quantizer learns: ``s1`` plus ``L, U, r, c`` (low rank) or ``S2, s3`` (full)."""
    extra = rank * (c_out + c_in) + c_out + c_in if low_rank else c_out * c_in + c_out
    return c_out * n_groups + extra


def rank_plan(model: nn.Module, scheme: QuantScheme, config: LRQConfig) -> dict[str, dict]:
    """Per block linear name: its form (``"low-rank"``, ``"full"``, or ``"mixed"`` when blocks
    differ), role, rank and learned parameters summed over the blocks."""
    spec = get_spec(model)
    plan: dict[str, dict] = {}
    for block in get_blocks(model):
        for name, module in block_linears(block, spec).items():
            c_out, c_in = linear_weight(module).shape
            role = spec.linear_role(name)
            low = config.low_rank(role, c_out, c_in)
            rank = config.rank_for(c_out, c_in)
            n = learned_params(low, c_out, c_in, rank, c_in // group_size_for(c_in, scheme.w_group_size))
            form = "low-rank" if low else "full"
            entry = plan.setdefault(name, {"form": form, "role": role, "rank": rank if low else None,
                                           "shape": [c_out, c_in], "learned_params": 0})
            if entry["form"] != form:
                entry["form"] = "mixed"
            entry["learned_params"] += n
    return plan


def check_ranks(model: nn.Module, config: LRQConfig) -> None:
    """Fail before any work (model untouched) if ``--rank`` exceeds the smaller side of some linear."""
    if config.rank is None:
        return
    spec = get_spec(model)
    for i, block in enumerate(get_blocks(model)):
        for name, module in block_linears(block, spec).items():
            c_out, c_in = linear_weight(module).shape
            if config.rank > min(c_out, c_in) and config.low_rank(spec.linear_role(name), c_out, c_in):
                raise CompactLMError(
                    f"--rank {config.rank} is outside 1..{min(c_out, c_in)} for block {i} {name} "
                    f"({c_out}x{c_in}); use a smaller --rank or --rank-ratio"
                )


def apply_lrq(model: nn.Module, scheme: QuantScheme, config: LRQConfig, calib: torch.Tensor | None = None) -> dict:
    """Quantize ``model`` in place with LRQ (see module docstring)."""
    config.check()
    check_ranks(model, config)
    spec = get_spec(model)
    plan = rank_plan(model, scheme, config)

    def make(name: str, w: torch.Tensor, gen: torch.Generator, col_weight=None) -> LogScaleRounding:
        if config.low_rank(spec.linear_role(name), *w.shape):
            return LRQQuantizer(w, scheme, config.rank_for(*w.shape), config.clip, gen, col_weight)
        return FlexRoundQuantizer(w, scheme, config.clip, col_weight)

    report = reconstruct(model, scheme, calib, config, make, "lrq")
    report["rank_rule"] = {"rule": config.rank_rule, "linears": plan}
    return report
