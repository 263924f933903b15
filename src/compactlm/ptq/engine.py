"""Block-wise reconstruction engine shared by every learned-rounding PTQ method (METHODS.md §1.3).

One transformer block at a time, the block's linears are replaced by the toolkit's one
training-time fake-quant linear (:class:`~compactlm.quant.fake.FakeQuantLinear`, ``W`` frozen)
around the method's learnable :class:`~compactlm.quant.weight_quantizers.WeightQuantizer`, and the
quantizers are trained so that the quantized block reproduces the full-precision one:

* input of block ``l``: ``X̃_l``, the output of the already-quantized blocks ``0..l-1`` on the
  calibration set (errors of earlier blocks are therefore compensated downstream);
* target: ``Y_l = f_l(X_l)``, the FP block on the FP input ``X_l``;
* loss (BRECQ / FlexRound / LRQ): ``L = mean_{b,c} Σ_t (f̃_l(X̃_l) - Y_l)²`` — squared error summed
  over the sequence, averaged over batch and channels (:func:`reconstruction_loss`);
* Adam with one learning rate for all quantizer parameters, cosine decay to 0, ``iters`` steps of
  ``batch_size`` sequences drawn with a per-block seeded generator.

Activation quantization: with a static per-tensor scheme (W8A8) the input ranges of every linear
are calibrated on the block's quantized-path inputs *before* training (min/max, weights at their
initial RTN grid) and the activations are fake-quantized during reconstruction so the weights
learn to compensate. Per-token dynamic schemes (W4A8) follow the LRQ paper: weights are
reconstructed weight-only and activations are quantized at evaluation (``recon_act_quant=True``
quantizes them during reconstruction too, together with 8-bit k/v outputs when the scheme has
``-kv8``).

Memory and resume: only the current block's activations (FP input, quantized-path input, FP
target, each ``(N, T, C)``) are held, in RAM or memory-mapped above ``spill_mb``; with a
``work_dir`` every finished block is recorded so that a killed run resumes with identical results
(every random draw is seeded per block). Both live in :mod:`compactlm.ptq.store`. Without a
``work_dir`` nothing but the spill files is written. The ``requires_grad`` flags of the caller's
parameters are restored at the end.
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from compactlm.errors import CompactLMError
from compactlm.models.capture import BlockRunner, capture_first_block_input
from compactlm.models.specs import ArchSpec, block_linears, get_blocks, get_spec, linear_bias, linear_weight, set_module
from compactlm.ptq.common import replace_linear
from compactlm.ptq.store import ActivationStore, WorkDir, run_fingerprint
from compactlm.quant.activation import ActQuantizer, act_quantizer_for, kv_quantizer_for
from compactlm.quant.fake import FakeQuantLinear
from compactlm.quant.primitives import ACTIVATION_CLIPS, CLIPS
from compactlm.quant.qweight import QuantizedWeight
from compactlm.quant.scheme import QuantScheme
from compactlm.quant.weight_quantizers import WeightQuantizer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReconstructionConfig:
    """Options shared by every reconstruction method (they become ``compactlm quantize`` flags).

    Attributes:
        iters: Optimisation steps per block (the papers use 5000; CPU budgets 25-500).
        lr: Adam learning rate of all quantizer parameters (cosine-decayed to 0).
        batch_size: Calibration sequences per step.
        clip: Initial step size ``s1``: ``"minmax"``, ``"lp"`` (1-D Lp clip search, as RTN),
            ``"lp2d"`` (2-D search over ranges x zero points, the LRQ authors' W3 initialisation;
            equals ``"lp"`` on symmetric grids), ``"signed-max"`` (llama.cpp's Q4_0 rule;
            symmetric grids only) or ``"act-mse"`` (the squared weight error weighted by each input
            column's mean squared activation, measured on the block's calibration inputs — the
            weighting of llama.cpp's importance matrix; searched around the signed maximum on
            symmetric grids, over shrink factors on asymmetric ones).
        seed: Seed of batch sampling and random initialisation.
        work_dir: Directory for resumable state (created; reused when the config matches; left
            in place at the end, see :func:`compactlm.ptq.store.remove_work_dir`).
            ``None``: a temporary directory, removed at the end (no resume).
        spill_mb: Keep cached activations in RAM up to this size, memory-map them to files above.
        recon_act_quant: Quantize input activations during reconstruction: ``None`` = automatic
            (static per-tensor schemes yes, dynamic per-token schemes no, as in the LRQ paper).
        smooth_alpha: Run SmoothQuant migration with this alpha before quantizing (W8A8 recipe of
            the LRQ paper); ``None``: off.
        holdout: Calibration samples held out of every training batch (and of SmoothQuant /
            static-range calibration) to measure held-out block loss: a fraction in (0, 1), a
            count >= 1, 0 for none (the default: results reproduce runs made before the option
            existed); ``None`` = 1/8 of the samples when there are at least 8, else 0.
            The same samples are held out for every block (seeded by ``seed``).
        eval_every: Also record train and held-out block loss every this many iterations (the
            block's ``curve`` in the report; costs a forward over the calibration set each time);
            0: only before and after each block.
        amp: Mixed precision of the training forward/backward: ``None`` (fp32, the default) or
            ``"bf16"`` / ``"fp16"`` autocast (faster on bf16-capable CPUs and on GPUs; changes the
            numerics; the final grids and the reported losses are computed in fp32).
    """

    iters: int = 200
    lr: float = 1e-3
    batch_size: int = 2
    clip: str = "minmax"
    seed: int = 0
    work_dir: str | None = None
    spill_mb: float = 2048.0
    recon_act_quant: bool | None = None
    smooth_alpha: float | None = None
    holdout: float | None = 0.0
    eval_every: int = 0
    amp: str | None = None

    def check(self) -> None:
        if self.iters < 0:
            raise CompactLMError(f"--iters must be >= 0, got {self.iters}")
        if not self.lr > 0:
            raise CompactLMError(f"--lr must be > 0, got {self.lr}")
        if self.batch_size < 1:
            raise CompactLMError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.clip not in CLIPS:
            raise CompactLMError(f"--clip: expected one of {', '.join(CLIPS)}, got {self.clip!r}")
        if self.smooth_alpha is not None and not 0 < self.smooth_alpha < 1:
            raise CompactLMError(f"--smooth-alpha must lie in (0, 1), got {self.smooth_alpha}")
        if self.holdout is not None and (self.holdout < 0 or (self.holdout >= 1 and self.holdout != int(self.holdout))):
            raise CompactLMError(f"--holdout: expected a fraction in (0, 1), a whole count >= 1 or 0, got {self.holdout}")
        if self.eval_every < 0:
            raise CompactLMError(f"--eval-every must be >= 0, got {self.eval_every}")
        if self.amp not in (None, *AMP_DTYPES):
            raise CompactLMError(f"--amp: expected one of {', '.join(AMP_DTYPES)} (or none), got {self.amp!r}")

    def split(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(train, held_out)`` row indices of ``n`` calibration samples (sorted, disjoint).

        No held-out rows: ``train`` is ``arange(n)`` and training draws exactly as without a split.
        """
        if self.holdout is None:
            k = n // 8 if n >= 8 else 0
        elif self.holdout < 1:
            k = round(self.holdout * n) if self.holdout > 0 else 0
            k = max(k, 1) if self.holdout > 0 else 0
        else:
            k = int(self.holdout)
        if k == 0:
            return torch.arange(n), torch.arange(0)
        if k >= n:
            raise CompactLMError(f"--holdout {self.holdout} leaves no training samples out of {n}; use a smaller --holdout")
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed * 7919 + 104729))
        return perm[k:].sort().values, perm[:k].sort().values


AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def reconstruction_loss(out_q: torch.Tensor, out_fp: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Block reconstruction error ``mean_{b,c} Σ_t (out_q - out_fp)²``.

    Args:
        out_q: ``(B, T, C)`` output of the quantized block.
        out_fp: ``(B, T, C)`` target (FP block on FP input).
        mask: Optional ``(B, T)`` 1 for real tokens, 0 for padding.
    Returns:
        Scalar loss.
    """
    err = (out_q - out_fp).pow(2)  # (B, T, C)
    if mask is not None:
        err = err * mask[..., None].to(err.dtype)
    return err.sum(dim=1).mean()


def sample_losses(out_q: torch.Tensor, out_fp: torch.Tensor) -> torch.Tensor:
    """Per-sample block error ``mean_c Σ_t (out_q - out_fp)²``, ``(B,)`` (its mean is :func:`reconstruction_loss`)."""
    return (out_q - out_fp).pow(2).sum(dim=1).mean(dim=-1)


def _acts_in_recon(scheme: QuantScheme, config: ReconstructionConfig) -> bool:
    if scheme.a_bits is None:
        return False
    return scheme.a_static if config.recon_act_quant is None else bool(config.recon_act_quant)


def _chunks(n: int, size: int):
    for start in range(0, n, size):
        yield start, slice(start, min(start + size, n))


@torch.no_grad()
def _run_block(runner: BlockRunner, index: int, block: nn.Module, src: ActivationStore,
               dst: ActivationStore | None, batch: int, device, target: ActivationStore | None = None,
               rows: torch.Tensor | None = None, per_sample: list | None = None) -> float:
    """Run ``block`` over the rows of ``src`` (all, or ``rows``), writing outputs to ``dst``;
    returns the mean loss vs ``target`` (and appends each sample's loss to ``per_sample``)."""
    total, count = 0.0, 0
    n = len(src) if rows is None else len(rows)
    for start, idx in _chunks(n, batch):
        if rows is not None:
            idx = rows[idx]
        out = runner(index, block, src.get(idx, device))
        if dst is not None:
            dst.put(start, out)
        if target is not None:
            y = target.get(idx, device)
            total += float(reconstruction_loss(out, y)) * out.shape[0]
            count += out.shape[0]
            if per_sample is not None:
                per_sample.extend(sample_losses(out, y).tolist())
    return total / max(count, 1)


def _sig(x: float | None) -> float | None:
    """``x`` to 6 significant digits (block losses of small models are far below 1e-6)."""
    return None if x is None else float(f"{x:.6g}")


def _split_losses(per_sample: list[float], train: torch.Tensor, held: torch.Tensor) -> tuple[float, float | None]:
    """Mean per-sample loss of the training rows and of the held-out rows (``None`` without any)."""
    losses = torch.tensor(per_sample, dtype=torch.float64)
    hold = float(losses[held].mean()) if len(held) else None
    return float(losses[train].mean()), hold


def reconstruct(
    model: nn.Module,
    scheme: QuantScheme,
    calib: torch.Tensor,
    config: ReconstructionConfig,
    make_quantizer: Callable[[str, torch.Tensor, torch.Generator], WeightQuantizer],
    method: str,
) -> dict:
    """Quantize every block of ``model`` in place by block-wise reconstruction.

    Args:
        model: HF model (any architecture of :mod:`compactlm.models.specs`).
        scheme: Weight / activation scheme.
        calib: ``(N, T)`` calibration token ids (unpadded).
        config: Engine options (method configs subclass :class:`ReconstructionConfig`).
        make_quantizer: ``(linear name, W [C_out, C_in], generator) -> WeightQuantizer``.
        method: Method name (progress bars, fingerprint, report).

    Returns:
        Report: per-block losses before / after and seconds, learned-parameter count, totals.
    """
    config.check()
    if calib is None or calib.dim() != 2 or len(calib) == 0:
        raise CompactLMError(f"method {method!r} needs calibration data: pass calib (CLI: --calib wiki)")
    spec = get_spec(model)
    blocks = get_blocks(model)
    device = next(model.parameters()).device
    n = len(calib)
    train_rows, held_rows = config.split(n)
    batch = min(config.batch_size, len(train_rows))
    report: dict = {"blocks": [], "holdout": {"count": len(held_rows), "rows": held_rows.tolist()}}

    if config.smooth_alpha is not None:
        try:
            from compactlm.ptq.smoothquant import smooth_model
        except ImportError as exc:
            raise CompactLMError("--smooth-alpha needs compactlm.ptq.smoothquant, which is not installed") from exc
        report["smoothquant"] = smooth_model(model, calib[train_rows] if len(held_rows) else calib, config.smooth_alpha)

    temporary = config.work_dir is None
    work = WorkDir(Path(tempfile.mkdtemp(prefix=f"compactlm-{method}-")) if temporary else Path(config.work_dir),
                   run_fingerprint(model, scheme, method, config, calib), temporary)
    act_in_recon = _acts_in_recon(scheme, config)
    flags = _freeze_parameters(model)
    stores: dict[str, ActivationStore] = {}
    try:
        runner = BlockRunner(model, calib)
        x0 = capture_first_block_input(model, calib[:1])
        shape = (n, *x0.shape[1:])
        spill = 3 * math.prod(shape) * 4 / 2**20 > config.spill_mb
        stores = {k: ActivationStore(shape, work.spill_path(k) if spill else None) for k in ("x_fp", "x_q", "y_fp")}
        start_block = _reconstruct_blocks(model, spec, blocks, scheme, calib, config, make_quantizer, method,
                                          work, runner, stores, act_in_recon, batch, device, report,
                                          (train_rows, held_rows))
    finally:
        for store in stores.values():
            store.close()
        work.cleanup()
        _restore_requires_grad(flags)
    report["learned_params"] = sum(b["learned_params"] for b in report["blocks"])
    report["quantized_weights"] = sum(m.int_weight.numel() for b in blocks for m in b.modules() if hasattr(m, "int_weight"))
    report["resumed_blocks"] = start_block
    trained = [b for b in report["blocks"] if b.get("train_seconds")]
    iters = sum(b["iters"] for b in trained)
    report["it_per_s"] = round(iters / sum(b["train_seconds"] for b in trained), 3) if trained else None
    report["work_dir"] = None if temporary else str(work.path)
    return report


def _freeze_parameters(model: nn.Module) -> list[tuple[nn.Parameter, bool]]:
    """Turn off gradients of every parameter; returns the flags to restore."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    return flags


def _restore_requires_grad(flags: list[tuple[nn.Parameter, bool]]) -> None:
    """Put back the caller's ``requires_grad`` flags (parameters replaced meanwhile are gone from the model)."""
    for p, flag in flags:
        p.requires_grad_(flag)


def _reconstruct_blocks(model, spec, blocks, scheme, calib, config, make_quantizer, method, work: WorkDir,
                        runner, stores: dict[str, ActivationStore], act_in_recon: bool, batch: int, device,
                        report: dict, split: tuple[torch.Tensor, torch.Tensor]) -> int:
    """Reconstruct (or replay from ``work``) every block in order; returns the number of replayed blocks."""
    n = len(calib)
    x_fp, x_q, y_fp = stores["x_fp"], stores["x_q"], stores["y_fp"]
    start_block = work.done
    if start_block == 0:
        for start, idx in _chunks(n, batch):
            x_fp.put(start, capture_first_block_input(model, calib[idx]))
        x_q.data[:] = x_fp.data
    else:
        log.info("%s: resuming from %s after %d finished blocks", method, work.path, start_block)
        work.load_inputs_into(start_block, x_fp, x_q)

    t_start = time.perf_counter()
    for i, block in enumerate(blocks):
        if i < start_block:
            tensors, block_report = work.load_block(i)
            _install_saved(block, spec, scheme, tensors)
            report["blocks"].append(block_report)
            continue
        t0 = time.perf_counter()
        # Target: FP block on FP input; it is also the next block's FP input.
        _run_block(runner, i, block, x_fp, y_fp, batch, device)

        gen = torch.Generator().manual_seed(config.seed * 1_000_003 + i)
        train_rows, held_rows = split
        moments = None
        if config.clip in ACTIVATION_CLIPS:  # the step-size search weighs columns by E[x²] (training rows only)
            moments = _input_moments(runner, i, block, spec, x_q, batch, device, train_rows if len(held_rows) else None)
        wrappers, act_qs = _wrap_block(block, spec, scheme, make_quantizer, gen, act_in_recon, moments)
        if scheme.a_static:
            _calibrate_static(runner, i, block, wrappers, act_qs, x_q, batch, device,
                              train_rows if len(held_rows) else None)
        per_before: list[float] = []
        loss_before = _run_block(runner, i, block, x_q, None, batch, device, target=y_fp, per_sample=per_before)

        params = [p for w in wrappers.values() for p in w.weight_quantizer.parameters() if p.requires_grad]
        n_learned = sum(p.numel() for p in params)
        curve: list[list] = []
        train_seconds = 0.0
        if config.iters > 0 and params:
            t_train = time.perf_counter()
            curve = _train_block(runner, i, len(blocks), block, params, x_q, y_fp, config, gen, device, method,
                                 train_rows, held_rows)
            train_seconds = time.perf_counter() - t_train

        qweights = {name: w.to_qweight() for name, w in wrappers.items()}
        # Next quantized-path input: this block on its final grid (the quantizers' forward equals
        # the baked grid bit for bit: WeightQuantizer contract) on the quantized-path input.
        per_after: list[float] = []
        loss_after = _run_block(runner, i, block, x_q, x_q, batch, device, target=y_fp, per_sample=per_after)
        x_fp.data, y_fp.data = y_fp.data, x_fp.data  # FP output is the next FP input
        x_fp.path, y_fp.path = y_fp.path, x_fp.path  # (each path stays with its buffer)
        tensors = _install_wrapped(block, spec, scheme, act_qs, qweights)
        train_before, held_before = _split_losses(per_before, train_rows, held_rows)
        train_after, held_after = _split_losses(per_after, train_rows, held_rows)
        block_report = {
            "block": i, "loss_before": round(loss_before, 6), "loss_after": round(loss_after, 6),
            "train_loss_before": _sig(train_before), "train_loss_after": _sig(train_after),
            "holdout_loss_before": _sig(held_before), "holdout_loss_after": _sig(held_after),
            "learned_params": n_learned, "seconds": round(time.perf_counter() - t0, 2),
            "iters": config.iters if train_seconds else 0, "train_seconds": round(train_seconds, 3),
            "it_per_s": round(config.iters / train_seconds, 3) if train_seconds else None,
        }
        if curve:
            block_report["curve"] = curve
        log.info("%s block %d/%d: loss %.4g -> %.4g (%.1fs)", method, i + 1, len(blocks),
                 loss_before, loss_after, block_report["seconds"])
        report["blocks"].append(block_report)
        work.save_block(i, tensors, x_fp, x_q, block_report)
    report["reconstruction_seconds"] = round(time.perf_counter() - t_start, 2)
    return start_block


@torch.no_grad()
def _input_moments(runner, index, block, spec, x_q, batch, device, rows=None) -> dict[str, torch.Tensor]:
    """Mean squared input activation of every input column of each block linear, ``{name: [C_in]}``,
    over the quantized-path inputs (all rows, or ``rows``)."""
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    hooks = []
    for name, module in block_linears(block, spec).items():
        def hook(mod, inputs, output, name=name):
            x = inputs[0].detach().reshape(-1, inputs[0].shape[-1]).double()
            sums[name] = sums.get(name, 0) + (x * x).sum(0)
            counts[name] = counts.get(name, 0) + x.shape[0]
        hooks.append(module.register_forward_hook(hook))
    try:
        _run_block(runner, index, block, x_q, None, batch, device, rows=rows)
    finally:
        for h in hooks:
            h.remove()
    return {name: (sums[name] / counts[name]).float() for name in sums}


def _wrap_block(block: nn.Module, spec: ArchSpec, scheme: QuantScheme, make_quantizer, gen: torch.Generator,
                act_in_recon: bool, moments: dict[str, torch.Tensor] | None = None,
                ) -> tuple[dict[str, FakeQuantLinear], dict[str, ActQuantizer | None]]:
    """Swap the block's linears for :class:`FakeQuantLinear` around the method's quantizers
    (``make_quantizer(name, W, gen)``, with ``col_weight=`` the column's ``E[x²]`` from ``moments``
    when the step-size search needs it).

    Returns:
        ``(wrappers, act_qs)``: the fake-quant linears, and every linear's input quantizer for the
        scheme (static ranges are calibrated on it even when activations are not quantized during
        reconstruction, in which case the wrapper holds none).
    """
    wrappers, act_qs = {}, {}
    for name, module in block_linears(block, spec).items():
        weight = linear_weight(module)  # the linear's own (frozen) Parameter; GPT-2 Conv1D: a transposed view
        if not isinstance(weight, nn.Parameter):
            weight = nn.Parameter(weight.detach(), requires_grad=False)  # same storage, no copy
        w = weight.detach().float()
        in_q = act_quantizer_for(scheme)
        out_q = kv_quantizer_for(scheme) if name in spec.kv_proj else None
        wrapper = FakeQuantLinear(
            weight, linear_bias(module),
            make_quantizer(name, w, gen) if moments is None else make_quantizer(name, w, gen, col_weight=moments[name]),
            in_q if act_in_recon else None, out_q if act_in_recon else None,
        ).to(w.device)
        set_module(block, name, wrapper)
        wrappers[name], act_qs[name] = wrapper, in_q
    return wrappers, act_qs


@torch.no_grad()
def _calibrate_static(runner, index, block, wrappers, act_qs, x_q, batch, device, rows=None) -> None:
    """Observe per-tensor input ranges of every linear on the quantized-path inputs (all, or ``rows``)."""
    applied = {name: w.input_quantizer for name, w in wrappers.items()}
    for name, w in wrappers.items():
        w.input_quantizer = act_qs[name]
        w.input_quantizer.start_observing()  # observing returns its input unchanged
    _run_block(runner, index, block, x_q, None, batch, device, rows=rows)
    for name, w in wrappers.items():
        w.input_quantizer.finish_observing()
        w.input_quantizer = applied[name]


def _train_block(runner, index, n_blocks, block, params, x_q, y_fp, config, gen, device, method,
                 train_rows: torch.Tensor, held_rows: torch.Tensor) -> list[list]:
    """``config.iters`` Adam steps on batches of training rows; returns the loss curve
    (``[iteration, train loss, held-out loss]`` every ``config.eval_every`` iterations, else ``[]``).

    Speed (numerics unchanged): Adam updates all parameters with one multi-tensor kernel per op
    (``foreach``), and with no held-out rows the batch indices are drawn exactly as always.
    """
    opt = torch.optim.Adam(params, lr=config.lr, foreach=True)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=config.iters, eta_min=0.0)
    n_train, whole = len(train_rows), len(held_rows) == 0
    size = min(config.batch_size, n_train)
    amp = AMP_DTYPES.get(config.amp)
    dev_type = torch.device(device).type
    curve: list[list] = []

    def measure(step: int) -> None:
        per: list[float] = []
        _run_block(runner, index, block, x_q, None, size, device, target=y_fp, per_sample=per)
        train, held = _split_losses(per, train_rows, held_rows)
        curve.append([step, _sig(train), _sig(held)])

    bar = tqdm(range(config.iters), desc=f"{method} block {index + 1}/{n_blocks}", leave=False)
    for step in bar:
        if config.eval_every and step % config.eval_every == 0:
            measure(step)
        draw = torch.randint(n_train, (size,), generator=gen)
        idx = draw if whole else train_rows[draw]
        with torch.autocast(dev_type, dtype=amp, enabled=amp is not None):
            out = runner(index, block, x_q.get(idx, device))
        loss = reconstruction_loss(out.float() if amp is not None else out, y_fp.get(idx, device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 10 == 0 or step == config.iters - 1:
            bar.set_postfix(loss=f"{loss.item():.4g}")
    bar.close()
    if config.eval_every:
        measure(config.iters)
    return curve


def _install_wrapped(block, spec, scheme, act_qs: dict[str, ActQuantizer | None],
                     qweights: dict[str, QuantizedWeight]) -> dict[str, torch.Tensor]:
    """Swap the fake-quant linears for deployed ``QuantLinear`` modules; returns the tensors to save."""
    tensors: dict[str, torch.Tensor] = {}
    for name in act_qs:
        module = replace_linear(block, name, qweights[name], scheme, spec)
        if module.input_quantizer is not None and module.input_quantizer.static:
            src = act_qs[name]
            if src is None or not src.calibrated:
                raise CompactLMError(f"static activation range of {name} was not calibrated")
            module.input_quantizer.set_range(float(src.x_min), float(src.x_max))
        for key, value in qweights[name].state_dict(f"{name}.").items():
            tensors[key] = value
        if module.input_quantizer is not None and module.input_quantizer.static:
            tensors[f"{name}.act_range"] = torch.stack([module.input_quantizer.x_min, module.input_quantizer.x_max])
    return tensors


def _install_saved(block, spec, scheme, tensors: dict[str, torch.Tensor]) -> None:
    """Replace a finished block's linears from the work directory."""
    for name, module in block_linears(block, spec).items():
        w = linear_weight(module)
        qw = QuantizedWeight(
            tensors[f"{name}.int_weight"], tensors[f"{name}.scale"], tensors[f"{name}.zero_point"],
            scheme.w_bits, tensors[f"{name}.int_weight"].shape[1] // tensors[f"{name}.scale"].shape[1],
            scheme.w_symmetric,
        )
        q = replace_linear(block, name, qw, scheme, spec)
        q.to(w.device)
        if f"{name}.act_range" in tensors:
            lo, hi = tensors[f"{name}.act_range"].tolist()
            q.input_quantizer.set_range(lo, hi)
