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


class _RoundSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return torch.round(x)

    @staticmethod
    def backward(ctx, grad):
        return grad


def round_ste_fused(x: torch.Tensor) -> torch.Tensor:
    """:func:`round_ste` as one autograd node: the same values (``x + (round(x) - x)`` is exactly
    ``round(x)`` in binary floating point: the difference is exact by Sterbenz's lemma) and the same
    gradient, without the two extra full-size temporaries."""
    return _RoundSTE.apply(x)


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


CLIPS = ("minmax", "lp", "lp2d", "signed-max", "act-mse")
# clips that need each linear's input statistics (``col_weight``): only calibrated methods take them
ACTIVATION_CLIPS = ("act-mse",)


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


def act_mse_scale(wg: torch.Tensor, col_weight: torch.Tensor, bits: int, symmetric: bool, grid: int = 100,
                  max_shrink: float = 0.8, steps: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-group step size minimising the activation-weighted squared weight error.

    The objective is ``Σ_j E[x_j²] (w_j − Q(w_j))²`` per group: the diagonal part of the layer's
    output error ``E‖(W − Q(W)) x‖²`` (the weighting of llama.cpp's importance-matrix quantization
    and the diagonal of GPTQ's Hessian ``XᵀX``). Candidates, each kept only where it lowers the
    objective:

    * symmetric grids: llama.cpp's signed maximum ``d = x_e / −(2^(b−1) + k/steps)`` for
      ``k = −steps..steps`` (the divisor from ``2^(b−1) − 1`` to ``2^(b−1) + 1``), each followed by
      the weighted least-squares scale for its codes, ``d* = Σ w x q / Σ w q²``;
    * asymmetric grids: the shrink factors of the ``"lp"`` search (min/max at shrink 1).

    The error of a candidate is measured with the codes re-rounded at its scale, as the quantizer
    will round them, so ``k = 0`` (symmetric) or shrink 1 (asymmetric) bounds the result: never
    worse than ``"signed-max"`` / ``"minmax"`` on this objective.

    Args:
        wg: ``[C_out, n_groups, G]`` grouped weight.
        col_weight: ``[n_groups, G]`` non-negative weight of each input column (``E[x_j²]``).
    Returns:
        ``(scale, zero_point)``, each ``[C_out, n_groups]``.
    """
    cw = col_weight.to(wg)[None]  # (1, n_groups, G)

    def err(s: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        s3, z3 = s[..., None], z[..., None]
        return (cw * (dequantize(quantize(wg, s3, z3, bits, symmetric), s3, z3) - wg) ** 2).sum(dim=-1)

    def keep(s, z, best_s, best_z, best_e):
        e = err(s, z)
        better = e < best_e
        return torch.where(better, s, best_s), torch.where(better, z, best_z), torch.where(better, e, best_e)

    if symmetric:
        qmin, qmax = qrange(bits, True)
        x_e = wg.gather(-1, wg.abs().argmax(dim=-1, keepdim=True)).squeeze(-1)  # signed maximum
        scale = signed_max_scale(wg, bits)
        zero = torch.zeros_like(scale)
        best = err(scale, zero)
        for k in range(-steps, steps + 1):
            d = x_e / (qmin - k / steps)
            d = torch.where(d.abs() < 1e-8, scale, d)
            q = torch.clamp(torch.round(wg / d[..., None]), qmin, qmax)
            num, den = (cw * wg * q).sum(-1), (cw * q * q).sum(-1)
            d_ls = torch.where(den > 0, num / den.clamp_min(1e-30), d)  # least-squares scale for these codes
            for cand in (d, d_ls):
                cand = torch.where(cand.abs() < 1e-8, scale, cand)
                scale, zero, best = keep(cand, zero, scale, zero, best)
        return scale, zero
    x_min, x_max = wg.amin(dim=-1), wg.amax(dim=-1)
    scale, zero = minmax_qparams(x_min, x_max, bits, symmetric)
    best = err(scale, zero)
    for i in range(1, int(max_shrink * grid)):
        s, z = minmax_qparams((1.0 - i / grid) * x_min, (1.0 - i / grid) * x_max, bits, symmetric)
        scale, zero, best = keep(s, z, scale, zero, best)
    return scale, zero


def lp_error(wg: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, bits: int, symmetric: bool,
             p: float = 2.4) -> torch.Tensor:
    """Lp objective of the clip searches: ``sum_G |Q(w) - w|^p`` per group.

    Args:
        wg: ``[C_out, n_groups, G]`` grouped weight.
        scale, zero_point: ``[C_out, n_groups]``.
    Returns:
        ``[C_out, n_groups]``.
    """
    s, z = scale[..., None], zero_point[..., None]
    return (dequantize(quantize(wg, s, z, bits, symmetric), s, z) - wg).abs().pow(p).sum(dim=-1)


def _lp_search_1d(wg, bits, symmetric, p, grid, max_shrink):
    """Shrink factors ``1, 1 - 1/grid, ...`` of the min/max range; returns ``(scale, zero_point, error)``."""
    x_min, x_max = wg.amin(dim=-1), wg.amax(dim=-1)
    scale, zero_point = minmax_qparams(x_min, x_max, bits, symmetric)
    best_err = torch.full_like(scale, float("inf"))
    for i in range(int(max_shrink * grid)):
        shrink = 1.0 - i / grid
        s, z = minmax_qparams(shrink * x_min, shrink * x_max, bits, symmetric)
        err = lp_error(wg, s, z, bits, symmetric, p)  # (C_out, n_groups)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        scale = torch.where(better, s, scale)
        zero_point = torch.where(better, z, zero_point)
    return scale, zero_point, best_err


def _lp_search_2d(wg, bits, p, grid, scale, zero_point, best_err, eps: float = 1e-8, n_extreme: int = 16):
    """Ranges ``k/grid`` of ``max(w, 0) - min(w, 0)`` (k = 1..grid) x every zero point of an
    asymmetric grid (QDrop's ``perform_2D_search``, the LRQ authors' W3 initialisation), started from
    ``(scale, zero_point, best_err)`` and keeping a candidate only where it lowers the error by more
    than a relative 1e-6 (vectorised and scalar ``pow`` may differ in the last bit, so a smaller
    "gain" could be a loss when the error is recomputed).

    Exact but pruned: a weight's error on any zero point is at least its rounding error on the
    unclipped grid (``round`` picks the nearest integer), so ``Σ rounding errors`` of the others plus
    the exact clipped errors of the ``n_extreme`` smallest and largest weights bounds a candidate
    from below; only groups whose bound is below their best error are evaluated in full (a 0.001%
    margin keeps float rounding of the bound from pruning a candidate that would win).
    """
    qmin, qmax = qrange(bits, False)
    c_out, n_groups, g = wg.shape
    rows = wg.reshape(-1, g)  # (R, G)
    scale, zero_point, best_err = scale.reshape(-1).clone(), zero_point.reshape(-1).clone(), best_err.reshape(-1).clone()
    x_min = torch.minimum(rows.amin(dim=-1), torch.zeros(()))
    x_max = torch.maximum(rows.amax(dim=-1), torch.zeros(()))
    width = x_max - x_min  # (R,)
    m = min(n_extreme, g // 2)
    ordered = rows.sort(dim=-1).values
    ext = torch.cat([ordered[:, :m], ordered[:, g - m:]], dim=1)  # (R, 2m) distinct elements
    for k in range(1, grid + 1):
        s = (width * (k / grid) / (qmax - qmin)).clamp_min(eps)  # (R,)
        sg = s[:, None]
        r = torch.round(rows / sg)  # codes before the zero point: shared by every zero point
        rounding = (r * sg - rows).abs().pow(p).sum(dim=-1)  # lower bound of every zero point's error
        live = (rounding * (1 - 1e-5) < best_err).nonzero().squeeze(1)
        if len(live) == 0:
            continue
        r_l, s_l, w_l, e_l = r[live], sg[live], rows[live], ext[live]
        r_e = torch.round(e_l / s_l)
        base = rounding[live] - (r_e * s_l - e_l).abs().pow(p).sum(dim=-1)
        for zp in range(qmin, qmax + 1):
            # clamp(r + zp, qmin, qmax) - zp, exact in float for these small integers
            bound = base + (torch.clamp(r_e, qmin - zp, qmax - zp) * s_l - e_l).abs().pow(p).sum(dim=-1)
            cand = (bound * (1 - 1e-5) < best_err[live]).nonzero().squeeze(1)
            if len(cand) == 0:
                continue
            err = (torch.clamp(r_l[cand], qmin - zp, qmax - zp) * s_l[cand] - w_l[cand]).abs().pow(p).sum(dim=-1)
            idx = live[cand]
            better = err < best_err[idx] * (1 - 1e-6)  # a real gain, not a last-bit difference of pow
            idx = idx[better]
            best_err[idx] = err[better]
            scale[idx] = s[idx]
            zero_point[idx] = float(zp)
    shape = (c_out, n_groups)
    return scale.reshape(shape), zero_point.reshape(shape), best_err.reshape(shape)


def _lp_search_2d_reference(wg, bits, p, grid, eps: float = 1e-8):
    """Unpruned 2-D search (every candidate on every group); for tests of :func:`_lp_search_2d`."""
    qmin, qmax = qrange(bits, False)
    x_min = torch.minimum(wg.amin(dim=-1), torch.zeros(()))
    x_max = torch.maximum(wg.amax(dim=-1), torch.zeros(()))
    best = torch.full_like(x_min, float("inf"))
    scale, zero_point = torch.zeros_like(best), torch.zeros_like(best)
    for k in range(1, grid + 1):
        s = ((x_max - x_min) * (k / grid) / (qmax - qmin)).clamp_min(eps)
        for zp in range(qmin, qmax + 1):
            z = torch.full_like(s, float(zp))
            err = lp_error(wg, s, z, bits, False, p)
            better = err < best
            best, scale, zero_point = torch.where(better, err, best), torch.where(better, s, scale), torch.where(better, z, zero_point)
    return scale, zero_point, best


def weight_qparams(
    w: torch.Tensor,
    bits: int,
    group_size: int | None,
    symmetric: bool,
    clip: str = "minmax",
    p: float = 2.4,
    grid: int = 100,
    max_shrink: float = 0.8,
    col_weight: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-group scale and zero point of a weight matrix.

    Args:
        w: ``[C_out, C_in]`` weight.
        clip: ``"minmax"`` uses the full range; ``"lp"`` searches shrink factors
            ``1, 1 - 1/grid, ...`` down to ``1 - max_shrink`` and keeps, per group, the one that
            minimises ``sum |Q(w) - w|^p`` (:func:`lp_error`); ``"lp2d"`` (the LRQ authors' W3
            initialisation, QDrop's 2-D search) then also tries, per group, every range
            ``k/grid · (max(w,0) − min(w,0))``, k = 1..grid, with every zero point ``0..2^b−1`` of an
            asymmetric grid (``grid · 2^b`` candidates), keeping a candidate only where it lowers
            the Lp error — so it is never worse than ``"lp"`` (nor min/max). On a symmetric grid the
            zero point is fixed at 0 and ``"lp2d"`` is exactly ``"lp"``. ``"signed-max"``
            (symmetric grids only) is llama.cpp's Q4_0 rule, see :func:`signed_max_scale`.
            ``"act-mse"`` weighs each column's error by ``col_weight`` (the mean squared input
            activation of that column), see :func:`act_mse_scale`.
        p: Exponent of the Lp searches.
        grid: Shrink steps per unit of range (``"lp"``), ranges (``"lp2d"``).
        max_shrink: Largest fraction of the range the 1-D search may cut.
        col_weight: ``[C_in]`` importance of each input column (``"act-mse"`` only).
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
    if clip == "act-mse":
        if col_weight is None or col_weight.shape != (w.shape[1],):
            raise CompactLMError("clip: 'act-mse' weighs the error by the layer's input activations: it needs "
                                 "calibration (use it with a calibrated method such as flexround or lrq)")
        return act_mse_scale(wg, to_groups(col_weight.detach().float()[None], group_size)[0], bits, symmetric,
                             grid, max_shrink)
    if clip == "minmax":
        return minmax_qparams(wg.amin(dim=-1), wg.amax(dim=-1), bits, symmetric)
    scale, zero_point, err = _lp_search_1d(wg, bits, symmetric, p, grid, max_shrink)
    if clip == "lp2d" and not symmetric:
        scale, zero_point, err = _lp_search_2d(wg, bits, p, grid, scale, zero_point, err)
    return scale, zero_point


def expand_groups(t: torch.Tensor, group_size: int) -> torch.Tensor:
    """Repeat ``[C_out, n_groups]`` parameters to ``[C_out, C_in]``."""
    return t.repeat_interleave(group_size, dim=-1)
