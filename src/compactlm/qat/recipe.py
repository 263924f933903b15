"""A QAT run as data: :class:`QATRecipe`, loadable from YAML, overridable by CLI flags.

Example ``recipe.yaml``::

    model: smollm2-135m
    scheme: w2a16          # ternary per channel (TWN); w4a16, w4a16-g64, w2a8-tensor ...
    quantizer: auto        # auto | twn | pact | lsq | minmax
    loss:                  # preset name (gt, kd, kd+gt, tsld, rkl, l2l) or term: weight
      tsld: 1.0
      gt: 1.0
    data: wiki
    samples: 256
    seq_len: 128
    steps: 100
    batch_size: 4
    lr: 1.0e-4
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from compactlm.distill.lm import parse_terms
from compactlm.train import TrainConfig
from compactlm.errors import CompactLMError
from compactlm.quant.fake import QATConfig


@dataclass
class QATRecipe(TrainConfig):
    """Everything a generative-LM QAT run needs (see the module docstring).

    Attributes:
        model: Teacher / student initialization (embedded name, folder, hub id).
        scheme: Quantization scheme string.
        quantizer / per / clip: :class:`~compactlm.qat.prepare.QATConfig` fields.
        freeze_embeddings: Keep the (full-precision) input embeddings and ``lm_head`` at the
            teacher's values; only block linears and norms train (cheaper: no vocabulary-sized
            weight gradient or optimizer state).
        loss: Preset name, ``"term:w,..."``, ``{term: weight}`` or ``[[term, weight], ...]``.
        temperature: KD temperature (``kd`` / ``rkl`` terms).
        tsld_tau: TSLD token-scale temperature.
        data: Training corpus (``compactlm.data.load_texts`` source).
        samples: Training windows drawn from ``data``.
        seq_len: Tokens per window.
        steps, batch_size, grad_accum, lr, ...: inherited :class:`~compactlm.train.TrainConfig`
            fields (checkpoints every 10 steps by default).
    """

    model: str = "smollm2-135m"
    scheme: str = "w2a16"
    quantizer: str = "auto"
    per: str = "channel"
    clip: float | None = None
    freeze_embeddings: bool = True
    loss: Any = "tsld"
    temperature: float = 1.0
    tsld_tau: float = 10.0
    data: str = "wiki"
    samples: int = 256
    seq_len: int = 128
    checkpoint_every: int = 10
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        parse_terms(self.loss)
        if self.samples < 1 or self.seq_len < 2:
            raise CompactLMError(f"--samples / --seq-len: need samples >= 1 and seq_len >= 2, got {self.samples}, {self.seq_len}")
        self.train_config().validate()

    def train_config(self) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(TrainConfig)}
        return TrainConfig(**{k: v for k, v in dataclasses.asdict(self).items() if k in names})

    def job_settings(self) -> dict[str, Any]:
        """The settings beyond :class:`TrainConfig` a checkpoint must share to be resumed."""
        names = {f.name for f in dataclasses.fields(TrainConfig)}
        return {k: v for k, v in self.to_dict().items() if k not in names}

    def qat_config(self) -> QATConfig:
        return QATConfig(quantizer=self.quantizer, per=self.per, clip=self.clip)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["loss"] = [list(t) for t in parse_terms(self.loss)]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "QATRecipe":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise CompactLMError(f"--recipe: unknown key(s) {unknown}; known: {sorted(known)}")
        return cls(**d)

    @classmethod
    def from_yaml(cls, path: str | Path) -> "QATRecipe":
        """A recipe file (YAML or JSON) through the one loader, :func:`compactlm.recipes.load_recipe`."""
        from compactlm.recipes import load_recipe

        return cls.from_dict(load_recipe(path, known={f.name for f in dataclasses.fields(cls)}))

    def replace(self, **overrides) -> "QATRecipe":
        """A copy with the non-``None`` overrides applied (CLI flags over a recipe file)."""
        return dataclasses.replace(self, **{k: v for k, v in overrides.items() if v is not None})
