"""The one training-time fake-quant linear (and embedding), configured from a ``QuantScheme`` plus a
:class:`QATConfig`, converting to the one deployed :class:`~compactlm.quant.QuantLinear`.

Decoder QAT (:mod:`compactlm.qat`), encoder QAT and SDQ (:mod:`compactlm.encoder`) all train
:class:`FakeQuantLinear`; a learned-rounding PTQ method can too, by giving it its own
:class:`~compactlm.quant.weight_quantizers.WeightQuantizer`.

:class:`FakeQuantLinear` computes::

    y = Q_out( Q_in(x) · Ŵᵀ + b ),      Ŵ = Q_w(W)

* ``W`` ``[C_out, C_in]``: the latent full-precision weight (the trained ``nn.Parameter``);
* ``Q_w`` (``weight_quantizer``): any ``WeightQuantizer``; ``forward(W) -> Ŵ`` with a
  straight-through gradient, ``to_qweight(W) -> QuantizedWeight`` at conversion;
* ``Q_in`` (``input_quantizer``): the scheme's input-activation quantizer, or ``None``;
* ``Q_out`` (``output_quantizer``): the scheme's ``-kv<bits>`` quantizer on k/v projections, or
  ``None`` — present during training, so a ``w4a8-kv8`` QAT run trains the model it ships.

Quant-Noise (Fan et al., "Training with Quantization Noise for Extreme Model Compression", 2020;
used by SDQ) when ``noise_share = p`` is set::

    Ŵ_p = W_c + M ⊙ (Q_w(W) − W_c),     M = 1 on a random share p of blocks, 0 elsewhere

with ``W_c = Q_w.latent(W)`` (the pre-clipped latent) and blocks of ``noise_block`` consecutive
input columns of a row, drawn anew on every training forward. The gradient goes straight to ``W_c``
(``∂Ŵ_p/∂W_c = 1`` in every block, the STE of Quant-Noise); learned parameters of ``Q_w`` get
theirs through the quantized blocks. In eval mode ``M = 1`` (all blocks
quantized); ``noise_share = None`` (the default) is plain QAT, ``Ŵ = Q_w(W)``. With ``p = 1`` the
two agree up to float rounding of ``W_c + (Ŵ − W_c)``; the encoder recipes use that form (as before
the one fake-quant linear), decoder QAT the plain one.

:class:`FakeQuantEmbedding` quantizes word-embedding rows the same way (ternary per row at 2 bits)
and converts to an ``nn.Embedding`` holding the dequantized values.

Typical use::

    cfg = QATConfig(quantizer="twn", per="tensor", clip=2.5)
    layer = fake_quant_linear(linear.weight, linear.bias, QuantScheme.parse("w2a8-tensor-actsym"), cfg)
    ...                                   # train
    deployed = layer.to_quant_linear()    # QuantLinear on the integer grid of the latent weight
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from compactlm.errors import CompactLMError
from compactlm.quant.activation import ActQuantizer, act_quantizer_for, kv_quantizer_for
from compactlm.quant.linear import QuantLinear
from compactlm.quant.qweight import QuantizedWeight
from compactlm.quant.scheme import QuantScheme
from compactlm.quant.weight_quantizers import GRANULARITIES, QUANTIZERS, WeightQuantizer, make_weight_quantizer


@dataclass(frozen=True)
class QATConfig:
    """How a training run quantizes weights beyond what the :class:`QuantScheme` says.

    Attributes:
        quantizer: Weight quantizer: ``"auto"`` (TWN ternary at 2 bits per channel, min/max
            otherwise), ``"twn"``, ``"pact"`` (PACT+ learned clip), ``"lsq"`` (learned step) or
            ``"minmax"`` (uniform, the scheme's grid); :mod:`compactlm.quant.weight_quantizers`.
        per: TWN granularity of the linear weights: ``"channel"`` (= ``"row"``, one α per output
            row) or ``"tensor"`` (one α per matrix; the encoder setting).
        clip: Symmetric pre-clip ``W_c = clamp(W, ±clip)`` of the latent weights before TWN /
            min/max (``None``: none; TernaryBERT and Kim et al. use 2.5).
        embeddings: Also quantize the input word embeddings, per row (TWN per row at 2 bits,
            min/max per row otherwise); encoders only.
        noise_share: Quant-Noise share ``p`` of weight blocks quantized on each training forward
            (``None``: plain QAT; SDQ schedules ``p`` during training, see the module docstring).
        noise_block: Input columns per Quant-Noise block.
    """

    quantizer: str = "auto"
    per: str = "channel"
    clip: float | None = None
    embeddings: bool = False
    noise_share: float | None = None
    noise_block: int = 8

    def __post_init__(self) -> None:
        if self.quantizer != "auto" and self.quantizer not in QUANTIZERS:
            raise CompactLMError(
                f"--quantizer: expected auto or one of {', '.join(QUANTIZERS)}, got {self.quantizer!r}"
            )
        if self.per not in GRANULARITIES:
            raise CompactLMError(f"--per: expected one of {', '.join(GRANULARITIES)}, got {self.per!r}")
        if self.clip is not None and not self.clip > 0:
            raise CompactLMError(f"--clip: expected a positive pre-clip (or none), got {self.clip}")
        if self.noise_share is not None and not 0.0 <= self.noise_share <= 1.0:
            raise CompactLMError(f"noise_share: expected a share in [0, 1] (or None), got {self.noise_share}")
        if self.noise_block < 1:
            raise CompactLMError(f"noise_block: expected a positive block width, got {self.noise_block}")

    def resolve(self, scheme: QuantScheme) -> str:
        """The quantizer kind for ``scheme`` (``"auto"`` resolved)."""
        if self.quantizer == "auto":
            return "twn" if scheme.w_bits == 2 and scheme.w_group_size is None else "minmax"
        return self.quantizer

    def weight_quantizer(self, w: torch.Tensor, scheme: QuantScheme, per: str | None = None) -> WeightQuantizer:
        """A weight quantizer for ``w`` ``[C_out, C_in]`` under ``scheme`` (``per`` overrides :attr:`per`)."""
        q = make_weight_quantizer(self.resolve(scheme), w, scheme.w_bits, scheme.w_group_size, scheme.w_symmetric,
                                  per=per or self.per, clip=self.clip)
        return q.to(w.device)


def quant_noise(quantizer: WeightQuantizer, w: torch.Tensor, share: float, block: int) -> torch.Tensor:
    """``Ŵ_p = W_c + M ⊙ (Q(W) − W_c)`` (module docstring); ``share >= 1`` quantizes every block.

    Args:
        quantizer: The weight quantizer ``Q``.
        w: Latent weight ``[C_out, C_in]`` (an embedding: ``[V, C]``).
        share: Share ``p`` of blocks quantized.
        block: Consecutive input columns per block.
    """
    w_c = quantizer.latent(w)
    # (C_out, C_in); W's gradient goes straight to W_c, the quantizer's own parameters get theirs
    noise = quantizer(w.detach()) - w_c.detach()
    if share < 1.0:
        c_out, c_in = w.shape
        n_blocks = -(-c_in // block)
        chosen = torch.rand(c_out, n_blocks, device=w.device) < share  # (C_out, n_blocks)
        noise = noise * chosen.repeat_interleave(block, dim=1)[:, :c_in]
    return w_c + noise


class _NoiseMixin:
    noise_share: float | None
    noise_block: int
    weight_quantizer: WeightQuantizer
    weight: nn.Parameter

    def quantized_weight(self) -> torch.Tensor:
        """``Ŵ`` (Quant-Noise mix in training mode when :attr:`noise_share` is set), STE gradient."""
        if self.noise_share is None:
            return self.weight_quantizer(self.weight)
        share = self.noise_share if self.training else 1.0
        return quant_noise(self.weight_quantizer, self.weight, share, self.noise_block)

    def to_qweight(self) -> QuantizedWeight:
        """The integer grid of the current latent weight."""
        return self.weight_quantizer.to_qweight(self.weight.detach())


class FakeQuantLinear(_NoiseMixin, nn.Module):
    """``y = Q_out(Q_in(x) · Ŵᵀ + b)`` with a trainable latent ``W`` (module docstring).

    Args:
        weight: Latent weight ``[C_out, C_in]``; an ``nn.Parameter`` is used as is (shared with the
            layer it replaces), any other tensor is copied into a new one (HF ``Conv1D``: pass
            ``weight.t()``).
        bias: ``[C_out]`` or ``None`` (kept as given: trainable if it was).
        weight_quantizer: The :class:`~compactlm.quant.weight_quantizers.WeightQuantizer`.
        input_quantizer: Fake-quantizer of the input, or ``None``.
        output_quantizer: Fake-quantizer of the output (k/v bits), or ``None``.
        noise_share: Quant-Noise share, or ``None`` for plain QAT.
        noise_block: Quant-Noise block width.
    """

    def __init__(
        self,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        weight_quantizer: WeightQuantizer,
        input_quantizer: ActQuantizer | None = None,
        output_quantizer: ActQuantizer | None = None,
        noise_share: float | None = None,
        noise_block: int = 8,
    ):
        super().__init__()
        self.weight = weight if isinstance(weight, nn.Parameter) else nn.Parameter(weight.detach().contiguous())
        self.bias = bias
        self.weight_quantizer = weight_quantizer
        self.input_quantizer = input_quantizer
        self.output_quantizer = output_quantizer
        self.noise_share = noise_share
        self.noise_block = noise_block
        self.out_features, self.in_features = self.weight.shape

    def extra_repr(self) -> str:
        noise = "" if self.noise_share is None else f", quant-noise p={self.noise_share}"
        return f"in={self.in_features}, out={self.out_features}, bias={self.bias is not None}{noise}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_quantizer is not None:
            x = self.input_quantizer(x)
        y = F.linear(x, self.quantized_weight().to(x.dtype), self.bias)
        if self.output_quantizer is not None:
            y = self.output_quantizer(y)
        return y

    def to_quant_linear(self) -> QuantLinear:
        """The deployed layer: the latent weight's grid, this layer's bias and (copied) quantizers."""
        layer = QuantLinear(self.to_qweight(), self.bias, copy.deepcopy(self.input_quantizer),
                            copy.deepcopy(self.output_quantizer))
        return layer.to(self.weight.device)


class FakeQuantEmbedding(_NoiseMixin, nn.Module):
    """Word embeddings ``[V, C]`` trained under per-row fake quantization.

    Args:
        embedding: The ``nn.Embedding`` whose weight becomes the latent weight (shared).
        weight_quantizer: Per-row quantizer of the ``[V, C]`` table.
        noise_share / noise_block: Quant-Noise, as :class:`FakeQuantLinear`.
    """

    def __init__(self, embedding: nn.Embedding, weight_quantizer: WeightQuantizer,
                 noise_share: float | None = None, noise_block: int = 8):
        super().__init__()
        self.weight = embedding.weight  # (V, C)
        self.padding_idx = embedding.padding_idx
        self.weight_quantizer = weight_quantizer
        self.noise_share = noise_share
        self.noise_block = noise_block

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.quantized_weight(), self.padding_idx)

    def to_embedding(self) -> nn.Embedding:
        """An ``nn.Embedding`` holding the dequantized rows."""
        emb = nn.Embedding(*self.weight.shape, padding_idx=self.padding_idx).to(self.weight.device)
        with torch.no_grad():
            emb.weight.copy_(self.to_qweight().dequantize(self.weight.dtype))
        return emb


def fake_quant_linear(weight: torch.Tensor, bias: torch.Tensor | None, scheme: QuantScheme, config: QATConfig,
                      is_kv: bool = False) -> FakeQuantLinear:
    """A :class:`FakeQuantLinear` with the quantizers ``scheme`` and ``config`` ask for.

    Args:
        weight: Latent weight ``[C_out, C_in]`` (see :class:`FakeQuantLinear`).
        bias: ``[C_out]`` or ``None``.
        scheme: Weight grid, input activations, ``-kv<bits>``.
        config: Weight quantizer kind, TWN granularity, pre-clip, Quant-Noise.
        is_kv: The layer is a k or v projection (gets the scheme's output quantizer).

    Raises:
        CompactLMError: static activation ranges (QAT would invalidate a calibration), or a
            quantizer that does not fit the scheme.
    """
    if scheme.a_static:
        raise CompactLMError(
            f"--scheme: training needs dynamic activation ranges; {scheme.name} is static (add -dynamic)"
        )
    return FakeQuantLinear(
        weight, bias, config.weight_quantizer(weight, scheme), act_quantizer_for(scheme),
        kv_quantizer_for(scheme) if is_kv else None, config.noise_share, config.noise_block,
    )


def fake_quant_embedding(embedding: nn.Embedding, scheme: QuantScheme, config: QATConfig) -> FakeQuantEmbedding:
    """Per-row fake quantization of ``embedding`` (TWN per row at 2 bits, the config's kind otherwise)."""
    return FakeQuantEmbedding(embedding, config.weight_quantizer(embedding.weight, scheme, per="row"),
                              config.noise_share, config.noise_block)


def fake_quant_modules(model: nn.Module) -> dict[str, nn.Module]:
    """``{name: module}`` of every :class:`FakeQuantLinear` / :class:`FakeQuantEmbedding` in ``model``."""
    return {n: m for n, m in model.named_modules() if isinstance(m, (FakeQuantLinear, FakeQuantEmbedding))}


def set_noise_share(model: nn.Module, share: float | None) -> None:
    """Quant-Noise share of every fake-quant module of ``model`` (SDQ's schedule calls this each step)."""
    for m in fake_quant_modules(model).values():
        m.noise_share = share


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


@torch.no_grad()
def convert_fake_quant(model: nn.Module) -> nn.Module:
    """Replace every fake-quant module of ``model`` by its deployed form, in place.

    :class:`FakeQuantLinear` → :class:`~compactlm.quant.QuantLinear`, :class:`FakeQuantEmbedding` →
    ``nn.Embedding`` (dequantized rows).

    Raises:
        CompactLMError: ``model`` has no fake-quant modules.
    """
    modules = fake_quant_modules(model)
    if not modules:
        raise CompactLMError("convert: the model has no fake-quant layers (prepare it for QAT first)")
    for name, m in modules.items():
        _replace(model, name, m.to_quant_linear() if isinstance(m, FakeQuantLinear) else m.to_embedding())
    return model


__all__ = [
    "QATConfig", "FakeQuantLinear", "FakeQuantEmbedding", "fake_quant_linear", "fake_quant_embedding",
    "fake_quant_modules", "set_noise_share", "convert_fake_quant", "quant_noise",
]
