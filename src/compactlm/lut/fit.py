"""Fit the one-hidden-layer ReLU network of NN-LUT (Yu et al., DAC 2022, arXiv 2112.02191).

    f(x) = Σ_{i=1}^{N-1} m_i·ReLU(w_i·x + b_i) + c

with ``N-1`` hidden units is trained with the mean squared error on inputs sampled over the
function's interval and then converted exactly into an ``N``-entry table
(:func:`compactlm.lut.table.from_network`). :func:`initial_lut` converts the network before
training (the ablation row "NN-LUT init" of the benchmark).

Choices where the paper is silent (recorded here):

* Inputs: a fixed, seeded set of ``samples`` points drawn uniformly on ``[lo, hi]`` plus both ends
  (plus, for calibration, points drawn from real activations: ``extra_samples``).
* Initialisation: breakpoints ``-b_i/w_i`` at the quantiles of ``|f''|^(2/5)`` (the asymptotic
  knot density of an L2-optimal piecewise-linear fit; evenly spaced breakpoints fall into poor
  local minima, e.g. an 8-entry GELU with 0.15 max error), ``|w_i| = 1``. A
  network with N-1 units has one degree of freedom fewer than a free N-segment table: the segment
  where no unit is active has slope 0. Every placement of that flat segment is tried (units left
  of it point left, ``w_i = -1``; the others right) with ``m, c`` solved by least squares; the best
  starts training.
* Training: full-batch Adam on all of ``w, b, m, c`` in float64 with a cosine learning rate, in
  normalised coordinates (input mapped to [-1, 1], output standardised), then ``m, c`` re-solved
  by least squares for the final breakpoints (the exact MSE optimum for them).
* Determinism: everything is seeded and runs in float64 on the CPU, so a fit is reproducible bit
  for bit on one machine.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
from torch import nn

from compactlm.errors import CompactLMError
from compactlm.lut.functions import Target, get_target
from compactlm.lut.table import LUT, from_network

log = logging.getLogger(__name__)


class ReLUNet(nn.Module):
    """``f(x) = Σ_i m_i·ReLU(w_i·x + b_i) + c`` with ``units`` hidden units (float64)."""

    def __init__(self, w: torch.Tensor, b: torch.Tensor, m: torch.Tensor, c: float):
        super().__init__()
        self.w = nn.Parameter(w.to(torch.float64).clone())
        self.b = nn.Parameter(b.to(torch.float64).clone())
        self.m = nn.Parameter(m.to(torch.float64).clone())
        self.c = nn.Parameter(torch.tensor(float(c), dtype=torch.float64))

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        """``ReLU(w·x + b)``: ``[P]`` inputs → ``[P, units]``."""
        return torch.relu(x[:, None] * self.w[None, :] + self.b[None, :])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[P]`` float64 inputs → ``[P]`` outputs."""
        return self.hidden(x) @ self.m + self.c

    @torch.no_grad()
    def solve_output(self, x: torch.Tensor, y: torch.Tensor) -> float:
        """Set ``m, c`` to the least-squares optimum for the current ``w, b``; returns the MSE."""
        H = torch.cat([self.hidden(x), torch.ones_like(x)[:, None]], dim=1)  # [P, units+1]
        sol = torch.linalg.lstsq(H, y[:, None], driver="gelsd").solution[:, 0]
        self.m.copy_(sol[:-1])
        self.c.copy_(sol[-1])
        return float(((H @ sol - y) ** 2).mean())

    @torch.no_grad()
    def normalise_(self, mid: float, half: float, y_mean: float, y_std: float, inverse: bool = False) -> None:
        """Re-express the network in coordinates ``u = (x-mid)/half``, ``v = (y-ȳ)/σ`` (or back).

        ``f(x) = Σ m·ReLU(w·x + b) + c`` equals ``ȳ + σ·(Σ (m/σ)·ReLU(w·half·u + w·mid + b) + (c-ȳ)/σ)``.
        """
        if not inverse:
            self.b.add_(self.w * mid)
            self.w.mul_(half)
            self.m.div_(y_std)
            self.c.sub_(y_mean).div_(y_std)
        else:
            self.w.div_(half)
            self.b.sub_(self.w * mid)
            self.m.mul_(y_std)
            self.c.mul_(y_std).add_(y_mean)

    def to_lut(self, fn: str, lo: float, hi: float, method: str = "nn-lut", meta: dict | None = None) -> LUT:
        """Exact conversion into an ``units+1``-entry table."""
        return from_network(self.w, self.b, self.m, float(self.c.detach()), fn, lo, hi, method=method, meta=meta)


@dataclass(frozen=True)
class FitConfig:
    """How the network is trained (defaults are what the benchmark uses).

    Attributes:
        samples: Uniform training inputs on the interval.
        steps: Adam steps (full batch).
        lr: Peak learning rate (cosine decay to 0), in normalised coordinates.
        seed: Seed of the sampled inputs.
    """

    samples: int = 2048
    steps: int = 1500
    lr: float = 0.005
    seed: int = 0


def knot_density_breakpoints(target: Target, units: int, points: int = 4097) -> torch.Tensor:
    """``units`` breakpoints at the quantiles of the density ``|f''|^(2/5)`` on the interval.

    That density is where an L2-optimal piecewise-linear fit puts its knots asymptotically (local
    error ∝ f''·h², so equalising it spends breakpoints where the function bends).
    """
    x = torch.linspace(target.lo, target.hi, points, dtype=torch.float64)
    y = target.fn(x)
    h = x[1] - x[0]
    curv = torch.zeros_like(x)
    curv[1:-1] = ((y[2:] - 2 * y[1:-1] + y[:-2]) / h**2).abs()
    curv[0], curv[-1] = curv[1], curv[-2]
    dens = curv.pow(0.4)
    dens = dens + 0.02 * dens.mean() + 1e-12  # keep a few knots in flat regions
    cdf = torch.cumsum(dens, 0)
    cdf = (cdf - cdf[0]) / (cdf[-1] - cdf[0])
    q = torch.arange(1, units + 1, dtype=torch.float64) / (units + 1)
    idx = torch.searchsorted(cdf, q).clamp(1, points - 2)
    return x[idx]


def _initial_net(x: torch.Tensor, y: torch.Tensor, target: Target, units: int) -> ReLUNet:
    """Curvature-placed breakpoints; the best placement of the flat (no unit active) segment.

    Candidates: all ``units`` breakpoints inside the interval, or one of them on an end of the
    interval so the flat segment can fall outside it (best for 1/x and 1/√x, which have no flat
    part); for each, every split of left- and right-pointing units. Lowest MSE wins.
    """
    inner = knot_density_breakpoints(target, units)
    inner_less = knot_density_breakpoints(target, units - 1) if units > 1 else inner[:0]
    lo, hi = (torch.tensor([v], dtype=torch.float64) for v in (target.lo, target.hi))
    best, best_mse = None, math.inf
    for d in (inner, torch.cat([lo, inner_less]), torch.cat([inner_less, hi])):
        for split in range(units + 1):  # units [0, split) point left, the rest right
            w = torch.ones(units, dtype=torch.float64)
            w[:split] = -1.0
            net = ReLUNet(w, -w * d, torch.zeros(units), 0.0)
            mse = net.solve_output(x, y)
            if mse < best_mse:
                best, best_mse = net, mse
    return best


def _training_inputs(target: Target, entries: int, config: FitConfig,
                     extra_samples: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The seeded training inputs ``x`` (uniform samples, both ends, optional extras) and ``f(x)``."""
    if entries < 2:
        raise CompactLMError(f"--entries: NN-LUT needs at least 2 entries, got {entries}")
    g = torch.Generator().manual_seed(config.seed)
    lo, hi = target.lo, target.hi
    x = lo + (hi - lo) * torch.rand(config.samples, generator=g, dtype=torch.float64)
    x = torch.cat([x, torch.tensor([lo, hi], dtype=torch.float64)])
    if extra_samples is not None and extra_samples.numel():
        x = torch.cat([x, extra_samples.detach().to(torch.float64).flatten().clamp(lo, hi)])
    return x, target.fn(x)


def initial_network(target: Target, entries: int, config: FitConfig = FitConfig()) -> tuple[ReLUNet, float]:
    """The network :func:`fit_network` starts training from, untrained: ``(network, mse)``.

    Its breakpoints are the curvature-placed initial ones and its output layer ``m, c`` is the
    least-squares optimum for them on the same training inputs (see the module notes), so it is
    already a reasonable table; what Adam adds is moving the breakpoints.
    """
    x, y = _training_inputs(target, entries, config)
    net = _initial_net(x, y, target, entries - 1)
    with torch.no_grad():
        mse = float(((net(x) - y) ** 2).mean())
    return net, mse


def initial_lut(fn: str | Target, entries: int = 16, config: FitConfig | None = None) -> LUT:
    """NN-LUT before training: the table converted exactly from :func:`initial_network`.

    The ablation row between the uniform / least-squares tables and the trained NN-LUT table of
    the same size; ``method`` is ``"nn-lut-init"`` and ``meta`` holds the network and its MSE.
    """
    target = get_target(fn) if isinstance(fn, str) else fn
    config = config or FitConfig()
    net, mse = initial_network(target, entries, config)
    meta = {
        "fit": {**config.__dict__, "steps": 0},
        "mse": mse,
        "network": {k: getattr(net, k).detach().flatten().tolist() for k in ("w", "b", "m", "c")},
    }
    return net.to_lut(target.name, target.lo, target.hi, method="nn-lut-init", meta=meta)


def fit_network(target: Target, entries: int, config: FitConfig = FitConfig(),
                extra_samples: torch.Tensor | None = None) -> tuple[ReLUNet, float]:
    """Train the ``entries-1``-unit network on ``target`` over its interval.

    Args:
        target: Function and interval.
        entries: ``N`` (the table size); the network has ``N-1`` hidden units.
        extra_samples: Optional ``[P']`` inputs from real activations (clipped into the interval)
            added to the uniform ones, so the fit weighs the region the model actually uses.

    Returns:
        ``(network, mse)`` with the MSE on the training inputs.
    """
    x, y = _training_inputs(target, entries, config, extra_samples)
    net = _initial_net(x, y, target, entries - 1)
    lo, hi = target.lo, target.hi
    coords = ((hi + lo) / 2, (hi - lo) / 2, float(y.mean()), float(y.std()) or 1.0)
    u, v = (x - coords[0]) / coords[1], (y - coords[2]) / coords[3]
    net.normalise_(*coords)
    opt = torch.optim.Adam(net.parameters(), lr=config.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, config.steps))
    for _ in range(config.steps):
        opt.zero_grad(set_to_none=True)
        loss = torch.mean((net(u) - v) ** 2)
        loss.backward()
        opt.step()
        sched.step()
    net.normalise_(*coords, inverse=True)
    mse = net.solve_output(x, y)
    log.debug("fit %s N=%d: mse %.3g", target.name, entries, mse)
    return net, mse


def fit_lut(fn: str | Target, entries: int = 16, config: FitConfig | None = None,
            extra_samples: torch.Tensor | None = None, **overrides) -> LUT:
    """Fit NN-LUT's network for ``fn`` and convert it into an ``entries``-entry table.

    Args:
        fn: ``"gelu"``, ``"silu"``, ``"exp"``, ``"reciprocal"``, ``"rsqrt"`` or a :class:`Target`.
        entries: Table size ``N``.
        config: Training settings; keyword ``overrides`` (``steps=``, ``seed=``...) replace fields.
        extra_samples: Inputs from real activations (calibration), see :func:`fit_network`.

    Returns:
        The table; ``meta`` holds the network (``w``, ``b``, ``m``, ``c``), the settings and the MSE.
    """
    target = get_target(fn) if isinstance(fn, str) else fn
    config = config or FitConfig()
    if overrides:
        config = FitConfig(**{**config.__dict__, **overrides})
    net, mse = fit_network(target, entries, config, extra_samples)
    meta = {
        "fit": dict(config.__dict__),
        "mse": mse,
        "calibration_samples": 0 if extra_samples is None else int(extra_samples.numel()),
        "network": {k: getattr(net, k).detach().flatten().tolist() for k in ("w", "b", "m", "c")},
    }
    method = "nn-lut" if extra_samples is None else "nn-lut-calibrated"
    return net.to_lut(target.name, target.lo, target.hi, method=method, meta=meta)


def network_from_meta(table: LUT) -> ReLUNet:
    """Rebuild the network a table was converted from (``table.meta["network"]``)."""
    try:
        n = table.meta["network"]
        c = n["c"][0] if isinstance(n["c"], list) else n["c"]
        return ReLUNet(*(torch.tensor(n[k], dtype=torch.float64) for k in ("w", "b", "m")), float(c))
    except KeyError as e:
        raise CompactLMError(f"table {table.fn}: it carries no network (method {table.method})") from e
