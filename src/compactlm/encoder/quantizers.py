"""Fake-quantized encoder layers for QAT: ternary (TWN) and uniform symmetric weights, 8-bit
symmetric dynamic activations, and the conversion onto the integer grid.

Weights (Kim et al., EMNLP 2022, following TernaryBERT, Zhang et al. 2020):

* pre-clip ``W_c = clamp(W, −c, c)`` with ``c = 2.5`` (gradient 0 outside, identity inside);
* ternary (TWN, Li et al. 2016), per tensor for linears and per row for the word embeddings::

      Δ = 0.7 · mean|W_c|,   α = mean(|W_c| where |W_c| > Δ),   Ŵ = α · sign(W_c) · 1[|W_c| > Δ]

* ``b``-bit symmetric (4 or 8 bits), per output row: ``s = max|W_c| / (2^(b−1) − 1)``,
  ``Ŵ = s · round(W_c / s)``;
* straight-through estimator: ``∂Ŵ/∂W_c = 1``.

Activations: the input of every quantized linear is fake-quantized to 8 bits, symmetric, with one
dynamic range per tensor (``s = max|x| / 127``, over the real tokens: the evaluation and
distillation forwards set :func:`compactlm.quant.activation.padding_mask`) —
:class:`compactlm.quant.ActQuantizer`.

Quant-Noise (Fan et al., 2020; used by SDQ): with ``noise_share = p < 1`` only a random share ``p``
of weight blocks (``block`` consecutive input columns of a row) is replaced by its quantized value
on each training forward; the rest stays full precision. ``p = 1`` is ordinary QAT.

Every layer converts to a :class:`~compactlm.quant.QuantLinear` on a
:class:`~compactlm.quant.QuantizedWeight` (ternary: codes {−1, 0, 1} on the signed 2-bit grid, scale
``α``); the word embeddings are written back as their dequantized ternary values.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from compactlm.errors import CompactLMError
from compactlm.quant.weight_quantizers import twn_ternarize
from compactlm.quant.activation import ActQuantizer
from compactlm.quant.linear import QuantLinear
from compactlm.quant.primitives import quantize, weight_qparams
from compactlm.quant.qweight import QuantizedWeight

@dataclass(frozen=True)
class EncoderScheme:
    """How an encoder is quantized.

    Attributes:
        w_bits: 2 (ternary) or 4 / 8 (uniform symmetric).
        w_per: ``"tensor"`` or ``"row"`` granularity of linear weights (ternary default: tensor).
        clip: Symmetric pre-clip of the latent weights (``None``: none).
        embeddings: Quantize the word embeddings (ternary per row; ``w_bits`` per row otherwise).
        a_bits: Input-activation bits of every quantized linear (``None``: full precision).
    """

    w_bits: int = 2
    w_per: str = "tensor"
    clip: float | None = 2.5
    embeddings: bool = True
    a_bits: int | None = 8

    def __post_init__(self) -> None:
        if self.w_bits not in (2, 3, 4, 5, 6, 7, 8):
            raise CompactLMError(f"--scheme: weight bits must be 2 (ternary) .. 8, got {self.w_bits}")
        if self.w_per not in ("tensor", "row"):
            raise CompactLMError(f"--scheme: weight granularity must be 'tensor' or 'row', got {self.w_per!r}")

    @property
    def name(self) -> str:
        return f"w{self.w_bits}a{self.a_bits or 16}"


ENCODER_SCHEMES: dict[str, EncoderScheme] = {
    "w2a8": EncoderScheme(w_bits=2, w_per="tensor", clip=2.5),
    "w4a8": EncoderScheme(w_bits=4, w_per="row", clip=2.5),
    "w8a8": EncoderScheme(w_bits=8, w_per="row", clip=None),
}


def parse_encoder_scheme(name: "str | EncoderScheme") -> EncoderScheme:
    if isinstance(name, EncoderScheme):
        return name
    if name not in ENCODER_SCHEMES:
        raise CompactLMError(f"--scheme: encoder schemes are {', '.join(ENCODER_SCHEMES)}; got {name!r}")
    return ENCODER_SCHEMES[name]


# ---- weight quantizers: (W [C_out, C_in]) -> (codes, scale [C_out, 1]) -------------------------------
def _clip(w: torch.Tensor, clip: float | None) -> torch.Tensor:
    return w if clip is None else w.clamp(-clip, clip)


def uniform_codes(w: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric ``bits``-bit min/max quantization per row: ``(codes [C_out, C_in], scale [C_out, 1])``."""
    w = w.detach()
    scale, zero_point = weight_qparams(w, bits, None, symmetric=True)  # [C_out, 1] each
    return quantize(w, scale, zero_point, bits, symmetric=True), scale


def weight_codes(w: torch.Tensor, scheme: EncoderScheme, per: str) -> tuple[torch.Tensor, torch.Tensor]:
    w = _clip(w, scheme.clip)
    return twn_ternarize(w, per) if scheme.w_bits == 2 else uniform_codes(w, scheme.w_bits)


def fake_quant_weight(
    w: torch.Tensor, scheme: EncoderScheme, per: str, noise_share: float = 1.0, block: int = 8
) -> torch.Tensor:
    """``Ŵ`` with a straight-through gradient to the (clipped) latent ``w``; Quant-Noise when ``noise_share < 1``."""
    w_c = _clip(w, scheme.clip)
    codes, scale = weight_codes(w, scheme, per)
    noise = codes * scale - w_c.detach()  # (C_out, C_in)
    if noise_share < 1.0:
        c_out, c_in = w.shape
        n_blocks = -(-c_in // block)
        chosen = torch.rand(c_out, n_blocks, device=w.device) < noise_share  # (C_out, n_blocks)
        chosen = chosen.repeat_interleave(block, dim=1)[:, :c_in]
        noise = noise * chosen
    return w_c + noise


def to_quantized_weight(w: torch.Tensor, scheme: EncoderScheme, per: str) -> QuantizedWeight:
    """The integer grid of ``w`` under the scheme (ternary codes sit on the signed 2-bit grid)."""
    codes, scale = weight_codes(w, scheme, per)
    return QuantizedWeight(
        int_weight=codes.to(torch.int8),
        scale=scale.float().clone(),
        zero_point=torch.zeros_like(scale, dtype=torch.int32),
        bits=scheme.w_bits,
        group_size=w.shape[1],
        symmetric=True,
    )


def act_quantizer(scheme: EncoderScheme) -> ActQuantizer | None:
    """8-bit symmetric dynamic per-tensor input quantizer (``None`` for full-precision activations)."""
    if scheme.a_bits is None:
        return None
    return ActQuantizer(scheme.a_bits, granularity="tensor", static=False, symmetric=True)


# ---- modules ---------------------------------------------------------------------------------------
class FakeQuantLinear(nn.Module):
    """Linear layer trained under fake quantization: ``y = Q_a(x) · Ŵᵀ + b``.

    Args:
        linear: The ``nn.Linear`` whose weight becomes the latent full-precision weight.
        scheme: Encoder scheme.
    """

    def __init__(self, linear: nn.Linear, scheme: EncoderScheme):
        super().__init__()
        self.scheme = scheme
        self.weight = linear.weight  # latent FP weight [C_out, C_in], trained
        self.bias = linear.bias
        self.input_quantizer = act_quantizer(scheme)
        self.noise_share = 1.0
        self.noise_block = 8

    def extra_repr(self) -> str:
        return f"{self.weight.shape[1]} -> {self.weight.shape[0]}, {self.scheme.name}, per {self.scheme.w_per}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_quantizer is not None:
            x = self.input_quantizer(x)
        share = self.noise_share if self.training else 1.0
        w = fake_quant_weight(self.weight, self.scheme, self.scheme.w_per, share, self.noise_block)
        return F.linear(x, w, self.bias)

    def to_quant_linear(self) -> QuantLinear:
        qw = to_quantized_weight(self.weight, self.scheme, self.scheme.w_per)
        return QuantLinear(qw, self.bias, act_quantizer(self.scheme)).to(self.weight.device)


class FakeQuantEmbedding(nn.Module):
    """Word embeddings trained under per-row fake quantization (ternary per row at W2)."""

    def __init__(self, embedding: nn.Embedding, scheme: EncoderScheme):
        super().__init__()
        self.scheme = scheme
        self.weight = embedding.weight  # (V, C)
        self.padding_idx = embedding.padding_idx
        self.noise_share = 1.0
        self.noise_block = 8

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        share = self.noise_share if self.training else 1.0
        w = fake_quant_weight(self.weight, self.scheme, "row", share, self.noise_block)
        return F.embedding(ids, w, self.padding_idx)

    def to_embedding(self) -> nn.Embedding:
        qw = to_quantized_weight(self.weight, self.scheme, "row")
        emb = nn.Embedding(*self.weight.shape, padding_idx=self.padding_idx).to(self.weight.device)
        with torch.no_grad():
            emb.weight.copy_(qw.dequantize(self.weight.dtype))
        return emb
