"""Architecture knowledge (specs) and model loading; the only package that knows architectures."""

from compactlm.models.checkpoint import load_quantized_run, save_quantized
from compactlm.models.loading import DEFAULT_MODEL, EMBEDDED, load_model
from compactlm.models.specs import (
    ArchSpec,
    block_linears,
    get_blocks,
    get_module,
    get_spec,
    iter_block_linears,
    linear_weight,
    set_module,
    supported_model_types,
)

__all__ = [
    "DEFAULT_MODEL", "EMBEDDED", "load_model", "load_quantized_run", "save_quantized",
    "ArchSpec", "block_linears", "get_blocks", "get_module", "get_spec", "iter_block_linears",
    "linear_weight", "set_module", "supported_model_types",
]
