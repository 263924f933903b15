"""Activation fake-quantizers: per-tensor static (calibrated) and per-token dynamic.

Static per-tensor ranges are observed over a calibration set (running min/max) and then frozen;
per-token ranges are computed at run time from each token's min/max over the hidden dimension.
Rounding is straight-through, so reconstruction and QAT can train the weights *under* activation
quantization.

Padding: a range taken over a whole tensor (dynamic per-tensor, and static calibration) would
include the hidden states of padding positions, so results would depend on how much a batch is
padded. Callers that run padded batches wrap the forward in :func:`padding_mask` with the batch's
``attention_mask``; inputs laid out ``(B, T, ...)`` then take their range over the real tokens
only (per-token ranges never mix rows, so they need no mask).
"""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from typing import Iterator

import torch
from torch import nn

from compactlm.errors import CompactLMError
from compactlm.quant.primitives import fake_quant, minmax_qparams


_TOKEN_MASK: ContextVar[torch.Tensor | None] = ContextVar("compactlm_token_mask", default=None)


@contextmanager
def padding_mask(attention_mask: torch.Tensor | None) -> Iterator[None]:
    """Within the block, whole-tensor activation ranges skip the positions where ``attention_mask`` is 0.

    Args:
        attention_mask: ``(B, T)``, 1 for real tokens (``None``: no masking).
    """
    token = _TOKEN_MASK.set(None if attention_mask is None else attention_mask.detach().bool())
    try:
        yield
    finally:
        _TOKEN_MASK.reset(token)


def real_tokens(x: torch.Tensor) -> torch.Tensor:
    """The rows of ``x`` ``(B, T, ...)`` at real tokens under the current :func:`padding_mask`.

    ``x`` itself when no mask is set, the layout does not match ``(B, T)``, or no token is real.
    """
    mask = _TOKEN_MASK.get()
    if mask is None or x.dim() < 3 or tuple(x.shape[:2]) != tuple(mask.shape):
        return x
    mask = mask.to(x.device)
    return x[mask] if bool(mask.any()) else x


class ActQuantizer(nn.Module):
    """Fake-quantize a tensor ``(..., C)``.

    Args:
        bits: Grid bits.
        granularity: ``"tensor"`` or ``"token"`` (one range per row of the last dimension).
        static: Use ranges frozen after calibration (per-tensor only).
        symmetric: Signed symmetric grid.
    """

    def __init__(self, bits: int, granularity: str = "token", static: bool = False, symmetric: bool = False):
        super().__init__()
        self.bits = bits
        self.granularity = granularity
        self.static = static
        self.symmetric = symmetric
        self.observing = False
        self.register_buffer("x_min", torch.tensor(float("inf")))
        self.register_buffer("x_max", torch.tensor(float("-inf")))
        self.register_buffer("scale", torch.tensor(0.0))
        self.register_buffer("zero_point", torch.tensor(0.0))

    def extra_repr(self) -> str:
        kind = "static" if self.static else "dynamic"
        return f"bits={self.bits}, {self.granularity}, {kind}, symmetric={self.symmetric}"

    @property
    def calibrated(self) -> bool:
        return bool(self.scale > 0)

    def start_observing(self) -> None:
        """Reset and record running min/max on the following forwards (output = input)."""
        self.observing = True
        self.x_min.fill_(float("inf"))
        self.x_max.fill_(float("-inf"))

    def finish_observing(self) -> None:
        """Freeze the observed range into ``scale`` / ``zero_point``."""
        self.observing = False
        if not torch.isfinite(self.x_min):
            raise CompactLMError("activation calibration saw no data; pass at least one calibration sample")
        s, z = minmax_qparams(self.x_min, self.x_max, self.bits, self.symmetric)
        self.scale.copy_(s)
        self.zero_point.copy_(z)

    def set_range(self, x_min: float, x_max: float) -> None:
        """Set the static range directly (e.g. from a percentile or a loaded checkpoint)."""
        self.x_min.fill_(x_min)
        self.x_max.fill_(x_max)
        s, z = minmax_qparams(self.x_min, self.x_max, self.bits, self.symmetric)
        self.scale.copy_(s)
        self.zero_point.copy_(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.observing:
            seen = real_tokens(x.detach())
            self.x_min.copy_(torch.minimum(self.x_min, seen.min().float()))
            self.x_max.copy_(torch.maximum(self.x_max, seen.max().float()))
            return x
        if self.static:
            if not self.calibrated:
                raise CompactLMError(
                    "static activation quantizer used before calibration; quantize with calibration data"
                )
            return fake_quant(x, self.scale.to(x.dtype), self.zero_point.to(x.dtype), self.bits, self.symmetric)
        if self.granularity == "token":
            x_min = x.detach().amin(dim=-1, keepdim=True)
            x_max = x.detach().amax(dim=-1, keepdim=True)
        else:
            seen = real_tokens(x.detach())  # padding positions do not widen the range
            x_min, x_max = seen.min(), seen.max()
        s, z = minmax_qparams(x_min, x_max, self.bits, self.symmetric)
        return fake_quant(x, s.to(x.dtype), z.to(x.dtype), self.bits, self.symmetric)


def act_quantizer_for(scheme) -> ActQuantizer | None:
    """The input-activation quantizer a :class:`~compactlm.quant.scheme.QuantScheme` asks for."""
    if scheme.a_bits is None:
        return None
    return ActQuantizer(scheme.a_bits, scheme.a_granularity, scheme.a_static, scheme.a_symmetric)


def kv_quantizer_for(scheme) -> ActQuantizer | None:
    """The output quantizer of a k/v projection under ``scheme`` (``-kv<bits>``): asymmetric,
    dynamic, one range per token; ``None`` when the scheme keeps k/v in full precision."""
    if scheme.kv_bits is None:
        return None
    return ActQuantizer(scheme.kv_bits, "token", static=False, symmetric=False)
