"""Glue shared by every PTQ method: swapping a linear for a ``QuantLinear`` and calibrating
static activation ranges."""

from __future__ import annotations

import torch
from torch import nn
from tqdm.auto import tqdm

from compactlm.models.specs import ArchSpec, get_module, set_module
from compactlm.quant.activation import ActQuantizer
from compactlm.quant.linear import QuantLinear, make_quant_linear  # noqa: F401  (re-exported: ptq.common.make_quant_linear)
from compactlm.quant.qweight import QuantizedWeight
from compactlm.quant.scheme import QuantScheme


def replace_linear(
    root: nn.Module, name: str, qweight: QuantizedWeight, scheme: QuantScheme, spec: ArchSpec
) -> QuantLinear:
    """Replace ``root.<name>`` (a block-relative linear path) by its quantized version."""
    original = get_module(root, name)
    module = make_quant_linear(original, qweight, scheme, is_kv=name in spec.kv_proj)
    set_module(root, name, module)
    return module


def static_quantizers(model: nn.Module) -> list[ActQuantizer]:
    return [m for m in model.modules() if isinstance(m, ActQuantizer) and m.static]


@torch.no_grad()
def calibrate_static_activations(
    model: nn.Module, calib: torch.Tensor, batch_size: int = 4, progress: bool = True
) -> int:
    """Observe min/max of every static activation quantizer over ``calib`` ``(N, T)`` token ids.

    Returns:
        Number of quantizers calibrated (0 if the scheme has no static activations).
    """
    quantizers = static_quantizers(model)
    if not quantizers:
        return 0
    for q in quantizers:
        q.start_observing()
    device = next(model.parameters()).device
    for i in tqdm(range(0, len(calib), batch_size), desc="calibrate activations", disable=not progress):
        model(input_ids=calib[i : i + batch_size].to(device))
    for q in quantizers:
        q.finish_observing()
    return len(quantizers)
