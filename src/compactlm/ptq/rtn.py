"""RTN: round-to-nearest onto a uniform grid (METHODS.md §1.1).

Range per output channel or group from min/max, or from an Lp clip search over shrink factors
(``clip="lp"``, p = 2.4 as in GPTQ's / AWQ's MSE searches), or a 2-D search over ranges and zero
points (``clip="lp2d"``, the LRQ authors' initialisation; see ``quant.primitives.weight_qparams``). With a static-activation scheme (W8A8)
the per-tensor input ranges are then calibrated on the calibration set.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from compactlm.errors import CompactLMError
from compactlm.models.specs import block_linears, get_blocks, get_spec, linear_weight
from compactlm.ptq.common import calibrate_static_activations, replace_linear
from compactlm.quant.primitives import weight_qparams
from compactlm.quant.qweight import QuantizedWeight
from compactlm.quant.scheme import QuantScheme


@dataclass(frozen=True)
class RTNConfig:
    """Options of RTN.

    Attributes:
        clip: ``"minmax"`` (full range), ``"lp"`` (search shrink factors minimising the Lp error),
            ``"lp2d"`` (asymmetric grids: also search ranges x zero points, the LRQ authors' W3
            initialisation; equals ``"lp"`` on symmetric grids) or ``"signed-max"`` (symmetric grids: llama.cpp's Q4_0 rule ``d = x_e / −2^(b−1)``, the
            largest-magnitude weight on the code ``−2^(b−1)``; reproduces llama.cpp's Q4_0 codes).
        p: Exponent of the clip search.
        grid: Number of shrink steps per unit of range.
        max_shrink: Largest fraction of the range the search may cut.
    """

    clip: str = "minmax"
    p: float = 2.4
    grid: int = 100
    max_shrink: float = 0.8


def quantize_weight_rtn(w: torch.Tensor, scheme: QuantScheme, config: RTNConfig = RTNConfig()) -> QuantizedWeight:
    """Round ``w`` ``[C_out, C_in]`` to nearest on the scheme's grid."""
    scale, zero_point = weight_qparams(
        w, scheme.w_bits, scheme.w_group_size, scheme.w_symmetric,
        clip=config.clip, p=config.p, grid=config.grid, max_shrink=config.max_shrink,
    )
    return QuantizedWeight.from_float(w, scale, zero_point, scheme.w_bits, scheme.w_group_size, scheme.w_symmetric)


@torch.no_grad()
def apply_rtn(model: nn.Module, scheme: QuantScheme, config: RTNConfig, calib: torch.Tensor | None = None) -> dict:
    """Quantize every block linear of ``model`` in place. ``calib`` is needed only for static activations."""
    spec = get_spec(model)
    n_weights = 0
    for block in tqdm(get_blocks(model), desc="rtn", unit="block"):
        for name, module in block_linears(block, spec).items():
            qw = quantize_weight_rtn(linear_weight(module), scheme, config)
            replace_linear(block, name, qw, scheme, spec)
            n_weights += qw.int_weight.numel()
    report = {"quantized_weights": n_weights, "learned_params": 0}
    if scheme.a_static:
        if calib is None:
            raise CompactLMError(f"scheme {scheme.name} has static activations: pass calibration data (--calib)")
        report["static_act_quantizers"] = calibrate_static_activations(model, calib)
    return report
