"""Activation fake-quantizers: per-tensor static (calibrated) and per-token dynamic.

Static per-tensor ranges are observed over a calibration set (running min/max) and then frozen;
per-token ranges are computed at run time from each token's min/max over the hidden dimension.
Rounding is straight-through, so reconstruction and QAT can train the weights *under* activation
quantization.
"""

from __future__ import annotations

import torch
from torch import nn

from compactlm.errors import CompactLMError
from compactlm.quant.primitives import fake_quant, minmax_qparams


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
            self.x_min.copy_(torch.minimum(self.x_min, x.detach().min().float()))
            self.x_max.copy_(torch.maximum(self.x_max, x.detach().max().float()))
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
            x_min, x_max = x.detach().min(), x.detach().max()
        s, z = minmax_qparams(x_min, x_max, self.bits, self.symmetric)
        return fake_quant(x, s.to(x.dtype), z.to(x.dtype), self.bits, self.symmetric)


def act_quantizer_for(scheme) -> ActQuantizer | None:
    """The input-activation quantizer a :class:`~compactlm.quant.scheme.QuantScheme` asks for."""
    if scheme.a_bits is None:
        return None
    return ActQuantizer(scheme.a_bits, scheme.a_granularity, scheme.a_static, scheme.a_symmetric)
