"""Pure tensor math of uniform affine quantization.

Grid: ``q = clamp(round(x / scale) + zero_point, qmin, qmax)``, ``x̂ = (q - zero_point) · scale``.
Asymmetric grids are unsigned ``[0, 2^b - 1]``; symmetric grids are signed
``[-2^(b-1), 2^(b-1) - 1]`` with zero point 0.

Weights are ``[C_out, C_in]``; group-wise parameters are ``[C_out, n_groups]`` where
``n_groups = C_in / G`` (``G = C_in`` for per-channel). Nothing here knows about modules.
"""

from __future__ import annotations

import torch

from compactlm.errors import CompactLMError


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """Round forward, identity backward (straight-through estimator)."""
    return x + (torch.round(x) - x).detach()


def qrange(bits: int, symmetric: bool) -> tuple[int, int]:
    """Integer range ``(qmin, qmax)`` of a ``bits``-bit grid."""
    if symmetric:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


def group_size_for(c_in: int, group_size: int | None) -> int:
    """Resolve ``None`` (per channel) to ``C_in`` and check that ``G`` divides ``C_in``."""
    if group_size is None:
        return c_in
    if c_in % group_size != 0:
        raise CompactLMError(
            f"group size {group_size} does not divide the input width {c_in}; "
            f"choose a divisor of {c_in} (e.g. {_divisor_hint(c_in)}) or per-channel (no -g suffix)"
        )
    return group_size


def _divisor_hint(n: int) -> str:
    return ", ".join(str(g) for g in (32, 64, 128, 256) if n % g == 0) or "per-channel"


def to_groups(w: torch.Tensor, group_size: int | None) -> torch.Tensor:
    """View ``[C_out, C_in]`` as ``[C_out, n_groups, G]``."""
    c_out, c_in = w.shape
    g = group_size_for(c_in, group_size)
    return w.reshape(c_out, c_in // g, g)


def minmax_qparams(
    x_min: torch.Tensor, x_max: torch.Tensor, bits: int, symmetric: bool, eps: float = 1e-8
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point that map ``[x_min, x_max]`` (widened to contain 0) onto the grid.

    Args:
        x_min, x_max: Range per group, any shape (same shape).
    Returns:
        ``(scale, zero_point)``, float tensors of the same shape; zero point is integer-valued.
    """
    qmin, qmax = qrange(bits, symmetric)
    x_min = torch.minimum(x_min, torch.zeros_like(x_min))
    x_max = torch.maximum(x_max, torch.zeros_like(x_max))
    if symmetric:
        amax = torch.maximum(-x_min, x_max)
        scale = (amax / qmax).clamp_min(eps)
        zero_point = torch.zeros_like(scale)
    else:
        scale = ((x_max - x_min) / (qmax - qmin)).clamp_min(eps)
        zero_point = (qmin - torch.round(x_min / scale)).clamp(qmin, qmax)
    return scale, zero_point


def quantize(
    x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, bits: int, symmetric: bool
) -> torch.Tensor:
    """Integer codes (as a float tensor) of ``x``; ``scale``/``zero_point`` broadcast against ``x``."""
    qmin, qmax = qrange(bits, symmetric)
    return torch.clamp(torch.round(x / scale) + zero_point, qmin, qmax)


def dequantize(q: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor) -> torch.Tensor:
    """Real values of integer codes ``q``."""
    return (q - zero_point) * scale


def fake_quant(
    x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, bits: int, symmetric: bool
) -> torch.Tensor:
    """Quantize-dequantize with a straight-through round (gradients reach ``x`` and ``scale``)."""
    qmin, qmax = qrange(bits, symmetric)
    q = torch.clamp(round_ste(x / scale) + zero_point, qmin, qmax)
    return (q - zero_point) * scale


CLIPS = ("minmax", "lp", "signed-max")


def signed_max_scale(wg: torch.Tensor, bits: int, eps: float = 1e-8) -> torch.Tensor:
    """Scale of llama.cpp's Q4_0 rule generalised to ``b`` bits: ``d = x_e / −2^(b−1)``.

    ``x_e`` is the element of largest magnitude in the group (the first one on ties, as in
    ``quantize_row_q4_0_ref``), with its sign, so it lands exactly on the code ``−2^(b−1)`` and the
    whole signed grid ``[−2^(b−1), 2^(b−1) − 1]`` is used: the step is ``amax / 2^(b−1)`` instead
    of min/max's ``amax / (2^(b−1) − 1)`` (at 4 bits 12.5% finer). The scale is negative when
    ``x_e > 0``; ``W ≈ q · d`` holds either way.

    Args:
        wg: ``[C_out, n_groups, G]`` grouped weight.
    Returns:
        ``d`` ``[C_out, n_groups]`` (magnitude at least ``eps``).
    """
    idx = wg.abs().argmax(dim=-1, keepdim=True)  # first maximum, (C_out, n_groups, 1)
    x_e = wg.gather(-1, idx).squeeze(-1)  # (C_out, n_groups)
    d = x_e / qrange(bits, True)[0]
    return torch.where(d.abs() < eps, torch.full_like(d, eps), d)


def weight_qparams(
    w: torch.Tensor,
    bits: int,
    group_size: int | None,
    symmetric: bool,
    clip: str = "minmax",
    p: float = 2.4,
    grid: int = 100,
    max_shrink: float = 0.8,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-group scale and zero point of a weight matrix.

    Args:
        w: ``[C_out, C_in]`` weight.
        clip: ``"minmax"`` uses the full range; ``"lp"`` searches shrink factors
            ``1, 1 - 1/grid, ...`` down to ``1 - max_shrink`` and keeps, per group, the one that
            minimises ``sum |Q(w) - w|^p``; ``"signed-max"`` (symmetric grids only) is
            llama.cpp's Q4_0 rule, see :func:`signed_max_scale`.
    Returns:
        ``(scale, zero_point)``, each ``[C_out, n_groups]``.
    """
    if clip not in CLIPS:
        raise CompactLMError(f"clip: expected one of {', '.join(CLIPS)}, got {clip!r}")
    wg = to_groups(w.detach().float(), group_size)  # (C_out, n_groups, G)
    if clip == "signed-max":
        if not symmetric:
            raise CompactLMError(
                "clip: 'signed-max' needs a symmetric weight grid (e.g. --scheme gguf-q4_0 or w4a16-g32-sym)"
            )
        d = signed_max_scale(wg, bits)
        return d, torch.zeros_like(d)
    x_min, x_max = wg.amin(dim=-1), wg.amax(dim=-1)
    scale, zero_point = minmax_qparams(x_min, x_max, bits, symmetric)
    if clip == "minmax":
        return scale, zero_point
    best_err = torch.full_like(scale, float("inf"))
    for i in range(int(max_shrink * grid)):
        shrink = 1.0 - i / grid
        s, z = minmax_qparams(shrink * x_min, shrink * x_max, bits, symmetric)
        err = (dequantize(quantize(wg, s[..., None], z[..., None], bits, symmetric), s[..., None], z[..., None]) - wg)
        err = err.abs().pow(p).sum(dim=-1)  # (C_out, n_groups)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        scale = torch.where(better, s, scale)
        zero_point = torch.where(better, z, zero_point)
    return scale, zero_point


def expand_groups(t: torch.Tensor, group_size: int) -> torch.Tensor:
    """Repeat ``[C_out, n_groups]`` parameters to ``[C_out, C_in]``."""
    return t.repeat_interleave(group_size, dim=-1)
