"""compactlm: make transformer language models small and fast while keeping their accuracy."""

__version__ = "0.1.0"

from compactlm import distill, qat  # noqa: E402  (callable packages: compactlm.qat(...) is api.qat)
from compactlm.api import apply_luts, quantize  # noqa: E402
from compactlm.errors import CompactLMError  # noqa: E402
from compactlm.models import load_model, save_quantized  # noqa: E402
from compactlm.quant import QuantizedWeight, QuantLinear, QuantScheme  # noqa: E402
from compactlm.quant.linear import set_backend  # noqa: E402
from compactlm.serve import generate_text, measure_speed, prepare_for_inference  # noqa: E402

__all__ = [
    "__version__", "quantize", "qat", "distill", "apply_luts", "load_model", "save_quantized", "CompactLMError", "QuantizedWeight",
    "QuantLinear", "QuantScheme", "set_backend", "generate_text", "measure_speed", "prepare_for_inference",
]
