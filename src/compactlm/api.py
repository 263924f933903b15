"""Python API: thin orchestration over the registry, models, data and evaluation.

    >>> import compactlm
    >>> model, tok = compactlm.load_model("smollm2-135m")
    >>> calib = compactlm.data.token_samples(tok, "wiki", n=32, seq_len=512, seed=0)
    >>> report = compactlm.quantize(model, "rtn", "w4a16", calib=calib, clip="lp")
"""

from __future__ import annotations

import dataclasses
import resource
import time
from typing import Any

import torch
from torch import nn

from compactlm.errors import CompactLMError
from compactlm.models.specs import get_spec, iter_block_linears, linear_weight
from compactlm.quant.primitives import group_size_for
from compactlm.quant.scheme import QuantScheme
from compactlm.registry import get_method


def peak_memory_mb() -> float:
    """Peak resident memory of this process (CPU) or peak CUDA allocation, in MiB."""
    if torch.cuda.is_available() and torch.cuda.max_memory_allocated() > 0:
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _check_scheme_fits(model: nn.Module, scheme: QuantScheme) -> None:
    """Fail before any work if the scheme's group size does not divide a linear's input width."""
    for name, module in iter_block_linears(model):
        try:
            group_size_for(linear_weight(module).shape[1], scheme.w_group_size)
        except CompactLMError as e:
            raise CompactLMError(f"--scheme {scheme.name}: {e} (layer {name})") from None


def quantize(
    model: nn.Module,
    method: str = "rtn",
    scheme: "str | QuantScheme" = "w4a16",
    calib: torch.Tensor | None = None,
    **options: Any,
) -> dict:
    """Quantize ``model`` in place with a registered method.

    Args:
        model: A supported HF model (see ``compactlm models``).
        method: Registered method name (``compactlm methods``).
        scheme: Preset or scheme string (``"w4a16"``, ``"w2a16-g64"``, ``"w8a8"``...).
        calib: ``(N, T)`` token ids for methods that need calibration data.
        **options: Fields of the method's options dataclass (e.g. ``iters=200`` for LRQ).

    Returns:
        The method's report plus ``method``, ``scheme``, ``options``, ``seconds``, ``peak_mem_mb``.
    """
    get_spec(model)  # fails early, listing the supported architectures
    m = get_method(method)
    scheme = QuantScheme.parse(scheme)
    config = m.make_config(options)
    if m.needs_calibration and calib is None:
        raise CompactLMError(f"method {method!r} needs calibration data: pass calib (CLI: --calib wiki)")
    if calib is not None and (calib.dim() != 2 or calib.numel() == 0):
        raise CompactLMError(f"calib: expected a non-empty (N, T) tensor of token ids, got shape {list(calib.shape)}")
    _check_scheme_fits(model, scheme)
    start = time.perf_counter()
    report = m.apply(model, scheme, config, calib)
    return {
        "method": method,
        "scheme": scheme.name,
        "options": dataclasses.asdict(config),
        **report,
        "seconds": round(time.perf_counter() - start, 2),
        "peak_mem_mb": round(peak_memory_mb(), 1),
    }
