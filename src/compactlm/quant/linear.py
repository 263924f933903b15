"""``QuantLinear``: a linear layer whose weight lives on an integer grid.

It is what every method leaves in the model: integer codes, per-group scale and zero point
(a :class:`QuantizedWeight`), an optional input-activation quantizer (W8A8 / W4A8) and an optional
output quantizer (8-bit k/v). The real weight is rebuilt from the grid, so the integers are the
single source of truth for evaluation and export alike; the rebuilt weight is cached and rebuilt
whenever a grid buffer is changed in place, replaced, moved or cast.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from compactlm.quant.activation import ActQuantizer
from compactlm.quant.qweight import QuantizedWeight


class QuantLinear(nn.Module):
    """``y = Q_out(Q_in(x) @ Ŵᵀ + b)`` with ``Ŵ = (int_weight - zero_point) · scale``.

    Args:
        qweight: The weight grid ``[C_out, C_in]``.
        bias: ``[C_out]`` or ``None``.
        input_quantizer: Fake-quantizer of the input, or ``None``.
        output_quantizer: Fake-quantizer of the output (k/v cache bits), or ``None``.
    """

    def __init__(
        self,
        qweight: QuantizedWeight,
        bias: torch.Tensor | None = None,
        input_quantizer: ActQuantizer | None = None,
        output_quantizer: ActQuantizer | None = None,
    ):
        super().__init__()
        self.out_features, self.in_features = qweight.shape
        self.bits = qweight.bits
        self.group_size = qweight.group_size
        self.symmetric = qweight.symmetric
        self.register_buffer("int_weight", qweight.int_weight.clone())
        self.register_buffer("weight_scale", qweight.scale.clone())
        self.register_buffer("weight_zero_point", qweight.zero_point.clone())
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)
        self.input_quantizer = input_quantizer
        self.output_quantizer = output_quantizer
        self._dequant_cache: tuple[tuple, torch.Tensor] | None = None

    def extra_repr(self) -> str:
        g = "channel" if self.group_size == self.in_features else f"g{self.group_size}"
        return (
            f"in={self.in_features}, out={self.out_features}, w{self.bits} {g}, "
            f"{'sym' if self.symmetric else 'asym'}, bias={self.bias is not None}"
        )

    @property
    def qweight(self) -> QuantizedWeight:
        return QuantizedWeight(
            self.int_weight, self.weight_scale, self.weight_zero_point, self.bits, self.group_size, self.symmetric
        )

    @property
    def weight(self) -> torch.Tensor:
        """Dequantized ``[C_out, C_in]`` weight (read-only view of the grid)."""
        dtype = self.bias.dtype if self.bias is not None else self.weight_scale.dtype
        return self.qweight.dequantize(dtype)

    def dequantized_weight(self, dtype: torch.dtype) -> torch.Tensor:
        """``Ŵ`` in ``dtype``, rebuilt only when the grid buffers changed (identity or version)."""
        bufs = (self.int_weight, self.weight_scale, self.weight_zero_point)
        key = (dtype, *((id(b), b.data_ptr(), b.device, b._version) for b in bufs))
        if self._dequant_cache is None or self._dequant_cache[0] != key:
            with torch.no_grad():
                self._dequant_cache = (key, self.qweight.dequantize(dtype))
        return self._dequant_cache[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_quantizer is not None:
            x = self.input_quantizer(x)
        w = self.dequantized_weight(x.dtype)
        y = F.linear(x, w, None if self.bias is None else self.bias.to(x.dtype))
        if self.output_quantizer is not None:
            y = self.output_quantizer(y)
        return y
