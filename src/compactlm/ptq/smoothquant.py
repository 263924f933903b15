"""SmoothQuant: migrate activation outliers into the weights (Xiao et al., ICML 2023, arXiv 2211.10438).

For every ``(norm → linears)`` pair of the architecture (``ArchSpec.norm_linears``) a per-input-channel
smoothing factor

    s_j = max|X_j|^α / max|W_:,j|^(1-α)                                   (paper, Eq. 4)

is computed from the calibration activations ``X`` (the norm's output, i.e. the linears' shared
input) and the weights ``W`` of all linears reading it. ``X·diag(s)^-1`` is folded into the norm
and ``diag(s)·W`` into the linears, so ``Y = (X diag(s)^-1)(diag(s) Wᵀ)`` is unchanged in full
precision while the activation range per channel is flattened for per-tensor activation quantization.

Folding into the norm follows ``ArchSpec.norm_type``: LayerNorm divides weight and bias by ``s``;
RMSNorm divides its weight; Gemma's ``rmsnorm_plus1`` scales by ``1 + w``, so
``w ← (1 + w) / s - 1``. GPT-2 ``Conv1D`` weights are handled through
:func:`~compactlm.models.specs.linear_weight` (a ``[C_out, C_in]`` view).

Choices where the paper is silent: ``max|W|`` is taken over the rows of all linears sharing the
input (as the authors' ``smooth_ln_fcs`` does for q/k/v); ``s`` is clamped to ``>= 1e-5``; pairs
whose input channel never fired (``max|X| = 0``) keep ``s = 1``. The method
``smoothquant`` is smoothing followed by RTN (:mod:`compactlm.ptq.rtn`), with static activation
ranges calibrated *after* smoothing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from compactlm.errors import CompactLMError
from compactlm.models.specs import ArchSpec, get_blocks, get_module, get_spec, linear_weight
from compactlm.ptq.rtn import RTNConfig, apply_rtn
from compactlm.quant.linear import QuantLinear
from compactlm.quant.scheme import QuantScheme

log = logging.getLogger(__name__)

_MIN_SCALE = 1e-5


@dataclass(frozen=True)
class SmoothQuantConfig:
    """Options of SmoothQuant (+RTN).

    Attributes:
        alpha: Migration strength α in ``[0, 1]`` (0.5 in the paper for most models).
        clip: Weight range of the following RTN: ``"minmax"`` or ``"lp"`` (clip search).
        batch: Calibration sequences per forward pass while collecting activation maxima.
    """

    alpha: float = 0.5
    clip: str = "minmax"
    batch: int = 4


def smoothing_factors(act_absmax: torch.Tensor, weights: list[torch.Tensor], alpha: float) -> torch.Tensor:
    """Per-input-channel factors ``s = max|X|^α / max|W|^(1-α)`` (Eq. 4).

    Args:
        act_absmax: ``[C_in]`` maximum of ``|X|`` per input channel over the calibration set.
        weights: ``[C_out_k, C_in]`` weights of the linears reading ``X``.
        alpha: Migration strength.

    Returns:
        ``[C_in]`` float32 factors (1 where the channel never fired).
    """
    w_absmax = torch.stack([w.detach().abs().float().amax(dim=0) for w in weights]).amax(dim=0)
    a = act_absmax.float()
    s = a.pow(alpha) / w_absmax.clamp_min(_MIN_SCALE).pow(1.0 - alpha)
    s = s.clamp_min(_MIN_SCALE)
    return torch.where(a > 0, s, torch.ones_like(s))


@torch.no_grad()
def fold_into_norm(norm: nn.Module, s: torch.Tensor, norm_type: str) -> None:
    """Divide the norm's output by ``s`` ``[C]`` by rewriting its affine parameters."""
    weight = getattr(norm, "weight", None)
    if not isinstance(weight, torch.Tensor):
        raise CompactLMError(f"smoothquant: norm {type(norm).__name__} has no affine weight to fold into")
    s = s.to(device=weight.device, dtype=torch.float32)
    if norm_type == "rmsnorm_plus1":
        weight.copy_(((1.0 + weight.float()) / s - 1.0).to(weight.dtype))
    elif norm_type in ("rmsnorm", "layernorm"):
        weight.copy_((weight.float() / s).to(weight.dtype))
    else:
        raise CompactLMError(f"smoothquant: unsupported norm type {norm_type!r}")
    bias = getattr(norm, "bias", None)
    if isinstance(bias, torch.Tensor):
        bias.copy_((bias.float() / s).to(bias.dtype))


@torch.no_grad()
def fold_into_linear(linear: nn.Module, s: torch.Tensor) -> None:
    """Scale input column ``j`` of the linear by ``s_j`` (``nn.Linear`` or GPT-2 ``Conv1D``)."""
    w = linear_weight(linear)  # [C_out, C_in] (a transposed view for Conv1D: edits reach the parameter)
    w.copy_((w.float() * s.to(device=w.device, dtype=torch.float32)).to(w.dtype))


@torch.no_grad()
def collect_input_absmax(
    model: nn.Module, calib: torch.Tensor, spec: ArchSpec, batch_size: int = 4
) -> dict[tuple[int, str], torch.Tensor]:
    """``{(block, norm): [C] max|output|}`` of every smoothing norm over the calibration tokens.

    Args:
        calib: ``(N, T)`` token ids.
    """
    stats: dict[tuple[int, str], torch.Tensor] = {}
    handles = []

    def hook_for(key):
        def hook(_module, _inputs, output):
            out = output[0] if isinstance(output, tuple) else output
            m = out.detach().abs().reshape(-1, out.shape[-1]).amax(dim=0).float()
            stats[key] = m if key not in stats else torch.maximum(stats[key], m)

        return hook

    for i, block in enumerate(get_blocks(model)):
        for norm_name, _ in spec.norm_linears:
            handles.append(get_module(block, norm_name).register_forward_hook(hook_for((i, norm_name))))
    device = next(model.parameters()).device
    try:
        for start in tqdm(range(0, len(calib), batch_size), desc="smoothquant stats", unit="batch"):
            model(input_ids=calib[start : start + batch_size].to(device))
    finally:
        for h in handles:
            h.remove()
    return stats


def post_norm_reason(config) -> str | None:
    """Why a config of a pre-norm architecture runs its norms *after* the linears, or ``None``.

    OPT checkpoints with ``do_layer_norm_before=False`` (opt-350m) apply each block's LayerNorm to
    the residual sum: the q/k/v and fc1 inputs are not that norm's output, so folding ``1/s`` into
    it would change the model.
    """
    if getattr(config, "model_type", None) == "opt" and getattr(config, "do_layer_norm_before", True) is False:
        return "this OPT model is post-norm (do_layer_norm_before=False)"
    return None


@torch.no_grad()
def smooth_model(model: nn.Module, calib: torch.Tensor, alpha: float = 0.5, batch_size: int = 4) -> dict:
    """Apply SmoothQuant migration in place (full-precision outputs unchanged up to float error).

    Args:
        model: A supported FP model whose block linears are still float (run before quantization).
        calib: ``(N, T)`` calibration token ids.
        alpha: Migration strength α in ``[0, 1]``.
        batch_size: Sequences per calibration forward.

    Returns:
        Report: ``alpha``, ``smoothed_pairs`` and the range of the factors.
    """
    if not 0.0 <= alpha <= 1.0:
        raise CompactLMError(f"--alpha: SmoothQuant migration strength must be in [0, 1], got {alpha}")
    if calib is None or calib.dim() != 2 or calib.numel() == 0:
        raise CompactLMError("smoothquant: needs calibration data, an (N, T) tensor of token ids (--calib)")
    if batch_size < 1:
        raise CompactLMError(f"--batch: must be positive, got {batch_size}")
    spec = get_spec(model)
    if not spec.norm_linears:
        raise CompactLMError(
            f"smoothquant: architecture {model.config.model_type!r} has no pre-norm feeding its linears "
            "(post-norm encoder); use rtn instead"
        )
    post_norm = post_norm_reason(model.config)
    if post_norm:
        raise CompactLMError(f"smoothquant: {post_norm}, so no norm output feeds the linears; use rtn instead")
    if any(isinstance(m, QuantLinear) for m in model.modules()):
        raise CompactLMError("smoothquant: smooth the model before quantizing it (found a QuantLinear)")
    blocks = get_blocks(model)
    was_training = model.training
    model.eval()
    stats = collect_input_absmax(model, calib, spec, batch_size)
    s_min, s_max, n = float("inf"), 0.0, 0
    for i, block in enumerate(blocks):
        for norm_name, lin_names in spec.norm_linears:
            linears = [get_module(block, ln) for ln in lin_names]
            s = smoothing_factors(stats[(i, norm_name)], [linear_weight(m) for m in linears], alpha)
            fold_into_norm(get_module(block, norm_name), s, spec.norm_type)
            for m in linears:
                fold_into_linear(m, s)
            s_min, s_max, n = min(s_min, float(s.min())), max(s_max, float(s.max())), n + 1
    model.train(was_training)
    log.info("smoothquant: smoothed %d norm→linear pairs (alpha=%.2f, s in [%.3g, %.3g])", n, alpha, s_min, s_max)
    return {"alpha": alpha, "smoothed_pairs": n, "smooth_scale_min": s_min, "smooth_scale_max": s_max}


@torch.no_grad()
def apply_smoothquant(model: nn.Module, scheme: QuantScheme, config: SmoothQuantConfig, calib: torch.Tensor) -> dict:
    """Smooth, then round to nearest (static activation ranges are calibrated after smoothing)."""
    report = smooth_model(model, calib, alpha=config.alpha, batch_size=config.batch)
    report.update(apply_rtn(model, scheme, RTNConfig(clip=config.clip), calib))
    return report
