"""Quantization numerics: schemes, primitives, the integer weight grid and quantized modules."""

from compactlm.quant.activation import ActQuantizer, act_quantizer_for, kv_quantizer_for
from compactlm.quant.fake import (
    FakeQuantEmbedding,
    FakeQuantLinear,
    QATConfig,
    convert_fake_quant,
    fake_quant_embedding,
    fake_quant_linear,
)
from compactlm.quant.linear import QuantLinear, make_quant_linear
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
from compactlm.quant.weight_quantizers import WeightQuantizer, make_weight_quantizer

__all__ = [
    "ActQuantizer", "act_quantizer_for", "kv_quantizer_for", "FakeQuantLinear", "FakeQuantEmbedding", "QATConfig",
    "convert_fake_quant", "fake_quant_embedding", "fake_quant_linear", "make_quant_linear", "WeightQuantizer",
    "make_weight_quantizer", "QuantLinear", "QuantizedWeight", "QuantScheme", "PRESETS",
    "parse_scheme", "dequantize", "fake_quant", "minmax_qparams", "qrange", "quantize", "round_ste",
    "weight_qparams",
]
