"""Quantization numerics: schemes, primitives, the integer weight grid and quantized modules."""

from compactlm.quant.activation import ActQuantizer, act_quantizer_for
from compactlm.quant.linear import QuantLinear
from compactlm.quant.primitives import (
    dequantize,
    fake_quant,
    minmax_qparams,
    qrange,
    quantize,
    round_ste,
    weight_qparams,
)
from compactlm.quant.qweight import QuantizedWeight
from compactlm.quant.scheme import PRESETS, QuantScheme, parse_scheme

__all__ = [
    "ActQuantizer", "act_quantizer_for", "QuantLinear", "QuantizedWeight", "QuantScheme", "PRESETS",
    "parse_scheme", "dequantize", "fake_quant", "minmax_qparams", "qrange", "quantize", "round_ste",
    "weight_qparams",
]
