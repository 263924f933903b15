"""Block-wise reconstruction engine shared by every learned-rounding PTQ method (METHODS.md §1.3).

One transformer block at a time, the block's linears are replaced by learnable weight quantizers
and trained so that the quantized block reproduces the full-precision one:

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

Memory: only the current block's activations (FP input, quantized-path input, FP target, each
``(N, T, C)``) are held; above ``spill_mb`` they live in memory-mapped files of the work
directory. Resume (only with a ``work_dir``): after each block its baked
:class:`~compactlm.quant.QuantizedWeight` grids and activation ranges, and the next block's two
inputs (as ``.npy``, streamed from RAM or from the memory-mapped spill without another in-memory
copy), are written atomically to ``work_dir``; a restarted run with the same configuration replays
the finished blocks from there and continues with identical results (every random draw is seeded
per block). Without a ``work_dir`` nothing but the spill files is written. The ``requires_grad``
flags of the caller's parameters are restored at the end.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from compactlm.errors import CompactLMError
from compactlm.io import write_json
from compactlm.models.capture import BlockRunner, capture_first_block_input
from compactlm.models.specs import ArchSpec, block_linears, get_blocks, get_spec, linear_bias, linear_weight, set_module
from compactlm.ptq.common import replace_linear
from compactlm.quant.activation import ActQuantizer, act_quantizer_for
from compactlm.quant.qweight import QuantizedWeight
from compactlm.quant.scheme import QuantScheme

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReconstructionConfig:
    """Options shared by every reconstruction method (they become ``compactlm quantize`` flags).

    Attributes:
        iters: Optimisation steps per block (the papers use 5000; CPU budgets 25-500).
        lr: Adam learning rate of all quantizer parameters (cosine-decayed to 0).
        batch_size: Calibration sequences per step.
        clip: Initial step size ``s1``: ``"minmax"`` or ``"lp"`` (Lp clip search, as RTN).
        seed: Seed of batch sampling and random initialisation.
        work_dir: Directory for resumable state (created; reused when the config matches).
            ``None``: a temporary directory, removed at the end (no resume).
        spill_mb: Keep cached activations in RAM up to this size, memory-map them to files above.
        recon_act_quant: Quantize input activations during reconstruction: ``None`` = automatic
            (static per-tensor schemes yes, dynamic per-token schemes no, as in the LRQ paper).
        smooth_alpha: Run SmoothQuant migration with this alpha before quantizing (W8A8 recipe of
            the LRQ paper); ``None``: off.
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

    def check(self) -> None:
        if self.iters < 0:
            raise CompactLMError(f"--iters must be >= 0, got {self.iters}")
        if not self.lr > 0:
            raise CompactLMError(f"--lr must be > 0, got {self.lr}")
        if self.batch_size < 1:
            raise CompactLMError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.clip not in ("minmax", "lp"):
            raise CompactLMError(f"--clip: expected 'minmax' or 'lp', got {self.clip!r}")
        if self.smooth_alpha is not None and not 0 < self.smooth_alpha < 1:
            raise CompactLMError(f"--smooth-alpha must lie in (0, 1), got {self.smooth_alpha}")


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


class WeightQuantizer(nn.Module):
    """Interface of a learnable weight quantizer used by the engine.

    ``forward()`` returns the fake-quantized weight ``[C_out, C_in]`` (differentiable w.r.t. the
    quantizer's parameters); ``bake()`` returns the final integer grid.
    """

    def bake(self) -> QuantizedWeight:  # pragma: no cover - interface
        raise NotImplementedError

    def num_learned(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)


class ReconLinear(nn.Module):
    """A block linear during reconstruction: ``y = Q_out(Q_in(x) @ Ŵᵀ + b)``.

    ``Ŵ`` comes from the learnable ``quantizer`` while training, from the baked grid once
    :meth:`freeze` is called.
    """

    def __init__(self, quantizer: WeightQuantizer, bias: torch.Tensor | None,
                 input_quantizer: ActQuantizer | None, output_quantizer: ActQuantizer | None):
        super().__init__()
        self.quantizer = quantizer
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)
        self.input_quantizer = input_quantizer
        self.output_quantizer = output_quantizer
        self.quantize_input = input_quantizer is not None
        self.quantize_output = output_quantizer is not None
        self.qweight: QuantizedWeight | None = None
        self._frozen_weight: torch.Tensor | None = None

    def freeze(self) -> QuantizedWeight:
        """Bake the grid and use it from now on."""
        with torch.no_grad():
            self.qweight = self.quantizer.bake()
            self._frozen_weight = self.qweight.dequantize(torch.float32)
        return self.qweight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.quantize_input:
            x = self.input_quantizer(x)
        w = self._frozen_weight if self._frozen_weight is not None else self.quantizer()
        y = F.linear(x, w.to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))
        if self.quantize_output:
            y = self.output_quantizer(y)
        return y


class ActivationStore:
    """``(N, T, C)`` float32 activations, in RAM or memory-mapped from a file.

    Args:
        shape: ``(N, T, C)``.
        path: File to memory-map, or ``None`` for RAM.
    """

    def __init__(self, shape: tuple[int, ...], path: Path | None = None):
        self.shape = tuple(shape)
        self.path = path
        if path is None:
            self.data = torch.empty(self.shape, dtype=torch.float32)
        else:
            arr = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=self.shape)
            self.data = torch.from_numpy(arr)

    def __len__(self) -> int:
        return self.shape[0]

    def put(self, start: int, x: torch.Tensor) -> None:
        self.data[start : start + len(x)] = x.detach().to("cpu", torch.float32)

    def get(self, index, device: torch.device) -> torch.Tensor:
        return self.data[index].to(device)

    def close(self) -> None:
        self.data = None  # type: ignore[assignment]
        if self.path is not None and self.path.exists():
            self.path.unlink()


class WorkDir:
    """State of one reconstruction run: spill files, and (unless temporary) resume state.

    Layout: ``fingerprint.json`` (what run this is), ``progress.json`` (``{"done": k}``),
    ``block_<i>.safetensors`` (baked grids + activation ranges of block ``i``),
    ``inputs_<k>.x_fp.npy`` / ``inputs_<k>.x_q.npy`` (FP and quantized-path inputs of block ``k``),
    ``spill/``. A temporary work directory (no ``--work-dir``: no resume) holds ``spill/`` only.
    """

    def __init__(self, path: Path, fingerprint: dict, temporary: bool):
        self.path = path
        self.temporary = temporary
        path.mkdir(parents=True, exist_ok=True)
        if temporary:
            return
        fp_file = path / "fingerprint.json"
        if fp_file.exists():
            old = json.loads(fp_file.read_text())
            if old != fingerprint:
                raise CompactLMError(
                    f"--work-dir {path} holds state of a different run (model, scheme, options or "
                    "calibration data differ); remove it or choose another --work-dir"
                )
        else:
            write_json(fp_file, fingerprint)

    @property
    def resumable(self) -> bool:
        return not self.temporary

    @property
    def done(self) -> int:
        f = self.path / "progress.json"
        return json.loads(f.read_text())["done"] if self.resumable and f.exists() else 0

    def spill_path(self, name: str) -> Path:
        (self.path / "spill").mkdir(exist_ok=True)
        return self.path / "spill" / f"{name}.npy"

    def _inputs_path(self, index: int, name: str) -> Path:
        return self.path / f"inputs_{index}.{name}.npy"

    def save_block(self, index: int, tensors: dict[str, torch.Tensor], x_fp: ActivationStore,
                   x_q: ActivationStore, report: dict) -> None:
        """Record block ``index`` as finished, with the inputs of block ``index + 1`` (no-op when temporary)."""
        if not self.resumable:
            return
        _atomic_save(tensors, self.path / f"block_{index}.safetensors")
        for name, store in (("x_fp", x_fp), ("x_q", x_q)):
            _atomic_save_npy(store.data, self._inputs_path(index + 1, name))
        write_json(self.path / f"report_{index}.json", report)
        write_json(self.path / "progress.json", {"done": index + 1})
        for name in ("x_fp", "x_q"):
            self._inputs_path(index, name).unlink(missing_ok=True)
        (self.path / f"inputs_{index}.safetensors").unlink(missing_ok=True)

    def load_block(self, index: int) -> tuple[dict[str, torch.Tensor], dict]:
        tensors = load_file(self.path / f"block_{index}.safetensors")
        report = json.loads((self.path / f"report_{index}.json").read_text())
        return tensors, report

    def load_inputs_into(self, index: int, x_fp: ActivationStore, x_q: ActivationStore, chunk: int = 64) -> None:
        """Copy the saved inputs of block ``index`` into the stores, ``chunk`` rows at a time (memory-mapped reads)."""
        legacy = self.path / f"inputs_{index}.safetensors"  # work dirs written before the .npy layout
        if legacy.exists() and not self._inputs_path(index, "x_fp").exists():
            from safetensors import safe_open

            with safe_open(str(legacy), framework="pt") as f:
                for name, store in (("x_fp", x_fp), ("x_q", x_q)):
                    store.data[:] = f.get_tensor(name)
            return
        for name, store in (("x_fp", x_fp), ("x_q", x_q)):
            path = self._inputs_path(index, name)
            if not path.exists():
                raise CompactLMError(f"--work-dir {self.path}: {path.name} is missing; remove the work dir to start over")
            saved = np.load(path, mmap_mode="r")
            if tuple(saved.shape) != store.shape:
                raise CompactLMError(
                    f"--work-dir {self.path}: {path.name} has shape {tuple(saved.shape)}, expected {store.shape}"
                )
            for start in range(0, len(store), chunk):
                store.put(start, torch.from_numpy(np.array(saved[start : start + chunk])))  # one chunk in RAM
            del saved

    def cleanup(self) -> None:
        if self.temporary:
            shutil.rmtree(self.path, ignore_errors=True)
        else:
            shutil.rmtree(self.path / "spill", ignore_errors=True)


def _atomic_save(tensors: dict[str, torch.Tensor], path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))
    os.replace(tmp, path)


def _atomic_save_npy(data: torch.Tensor, path: Path) -> None:
    """Write a contiguous float32 CPU tensor as ``.npy`` straight from its buffer.

    ``np.save`` writes the array's memory with ``tofile``: a memory-mapped spill streams through the
    page cache instead of being copied into RAM (as ``safetensors.save_file`` would: it builds the
    whole file as one bytes object).
    """
    if not data.is_contiguous():
        raise ValueError("activation store must be contiguous")
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.save(f, data.numpy(), allow_pickle=False)
    os.replace(tmp, path)


def _fingerprint(model: nn.Module, scheme: QuantScheme, method: str, config, calib: torch.Tensor) -> dict:
    options = {k: v for k, v in dataclasses.asdict(config).items() if k not in ("work_dir", "spill_mb")}
    first = linear_weight(next(iter(block_linears(get_blocks(model)[0], get_spec(model)).values())))
    return {
        "method": method,
        "scheme": scheme.to_dict(),
        "options": options,
        "model": str(getattr(model.config, "_name_or_path", "")),
        "model_type": model.config.model_type,
        "blocks": len(get_blocks(model)),
        "weight_checksum": float(first.detach().double().abs().sum()),
        "calib_shape": list(calib.shape),
        "calib_sha1": hashlib.sha1(calib.cpu().numpy().tobytes()).hexdigest(),
    }


def _acts_in_recon(scheme: QuantScheme, config: ReconstructionConfig) -> bool:
    if scheme.a_bits is None:
        return False
    return scheme.a_static if config.recon_act_quant is None else bool(config.recon_act_quant)


def _chunks(n: int, size: int):
    for start in range(0, n, size):
        yield start, slice(start, min(start + size, n))


@torch.no_grad()
def _run_block(runner: BlockRunner, index: int, block: nn.Module, src: ActivationStore,
               dst: ActivationStore | None, batch: int, device, target: ActivationStore | None = None) -> float:
    """Run ``block`` over every row of ``src``, writing outputs to ``dst``; returns the mean loss vs ``target``."""
    total, count = 0.0, 0
    for start, idx in _chunks(len(src), batch):
        out = runner(index, block, src.get(idx, device))
        if dst is not None:
            dst.put(start, out)
        if target is not None:
            total += float(reconstruction_loss(out, target.get(idx, device))) * out.shape[0]
            count += out.shape[0]
    return total / max(count, 1)


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
    n, batch = len(calib), min(config.batch_size, len(calib))
    report: dict = {"blocks": []}

    if config.smooth_alpha is not None:
        try:
            from compactlm.ptq.smoothquant import smooth_model
        except ImportError as exc:
            raise CompactLMError("--smooth-alpha needs compactlm.ptq.smoothquant, which is not installed") from exc
        report["smoothquant"] = smooth_model(model, calib, config.smooth_alpha)

    temporary = config.work_dir is None
    work = WorkDir(Path(tempfile.mkdtemp(prefix=f"compactlm-{method}-")) if temporary else Path(config.work_dir),
                   _fingerprint(model, scheme, method, config, calib), temporary)
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
                                          work, runner, stores, act_in_recon, batch, device, report)
    finally:
        for store in stores.values():
            store.close()
        work.cleanup()
        _restore_requires_grad(flags)
    report["learned_params"] = sum(b["learned_params"] for b in report["blocks"])
    report["quantized_weights"] = sum(m.int_weight.numel() for b in blocks for m in b.modules() if hasattr(m, "int_weight"))
    report["resumed_blocks"] = start_block
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
                        report: dict) -> int:
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
        wrappers = _wrap_block(block, spec, scheme, make_quantizer, gen, act_in_recon)
        if scheme.a_static:
            _calibrate_static(runner, i, block, wrappers, x_q, batch, device)
        loss_before = _run_block(runner, i, block, x_q, None, batch, device, target=y_fp)

        params = [p for w in wrappers.values() for p in w.quantizer.parameters() if p.requires_grad]
        n_learned = sum(p.numel() for p in params)
        if config.iters > 0 and params:
            _train_block(runner, i, len(blocks), block, params, x_q, y_fp, config, gen, device, method)

        qweights = {name: w.freeze() for name, w in wrappers.items()}
        # Next quantized-path input: this block, baked, on the quantized-path input.
        loss_after = _run_block(runner, i, block, x_q, x_q, batch, device, target=y_fp)
        x_fp.data, y_fp.data = y_fp.data, x_fp.data  # FP output is the next FP input
        x_fp.path, y_fp.path = y_fp.path, x_fp.path  # (each path stays with its buffer)
        tensors = _install_wrapped(block, spec, scheme, wrappers, qweights)
        block_report = {
            "block": i, "loss_before": round(loss_before, 6), "loss_after": round(loss_after, 6),
            "learned_params": n_learned, "seconds": round(time.perf_counter() - t0, 2),
        }
        log.info("%s block %d/%d: loss %.4g -> %.4g (%.1fs)", method, i + 1, len(blocks),
                 loss_before, loss_after, block_report["seconds"])
        report["blocks"].append(block_report)
        work.save_block(i, tensors, x_fp, x_q, block_report)
    report["reconstruction_seconds"] = round(time.perf_counter() - t_start, 2)
    return start_block


def _wrap_block(block: nn.Module, spec: ArchSpec, scheme: QuantScheme, make_quantizer, gen: torch.Generator,
                act_in_recon: bool) -> dict[str, ReconLinear]:
    wrappers = {}
    for name, module in block_linears(block, spec).items():
        w = linear_weight(module).detach().float()
        in_q = act_quantizer_for(scheme)  # static ranges are calibrated even if not applied in training
        out_q = None
        if scheme.kv_bits is not None and name in spec.kv_proj:
            out_q = ActQuantizer(scheme.kv_bits, "token", static=False, symmetric=False)
        wrapper = ReconLinear(make_quantizer(name, w, gen), linear_bias(module), in_q, out_q).to(w.device)
        wrapper.quantize_input = act_in_recon and in_q is not None
        wrapper.quantize_output = act_in_recon and out_q is not None
        set_module(block, name, wrapper)
        wrappers[name] = wrapper
    return wrappers


@torch.no_grad()
def _calibrate_static(runner, index, block, wrappers, x_q, batch, device) -> None:
    """Observe per-tensor input ranges of every linear on the quantized-path inputs."""
    flags = {name: w.quantize_input for name, w in wrappers.items()}
    for w in wrappers.values():
        w.quantize_input = True
        w.input_quantizer.start_observing()  # observing returns its input unchanged
    _run_block(runner, index, block, x_q, None, batch, device)
    for name, w in wrappers.items():
        w.input_quantizer.finish_observing()
        w.quantize_input = flags[name]


def _train_block(runner, index, n_blocks, block, params, x_q, y_fp, config, gen, device, method) -> None:
    opt = torch.optim.Adam(params, lr=config.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=config.iters, eta_min=0.0)
    bar = tqdm(range(config.iters), desc=f"{method} block {index + 1}/{n_blocks}", leave=False)
    for step in bar:
        idx = torch.randint(len(x_q), (min(config.batch_size, len(x_q)),), generator=gen)
        loss = reconstruction_loss(runner(index, block, x_q.get(idx, device)), y_fp.get(idx, device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 10 == 0 or step == config.iters - 1:
            bar.set_postfix(loss=f"{loss.item():.4g}")
    bar.close()


def _install_wrapped(block, spec, scheme, wrappers: dict[str, ReconLinear], qweights) -> dict[str, torch.Tensor]:
    """Swap wrappers for deployed ``QuantLinear`` modules; returns the tensors to save."""
    tensors: dict[str, torch.Tensor] = {}
    for name, wrapper in wrappers.items():
        module = replace_linear(block, name, qweights[name], scheme, spec)
        if module.input_quantizer is not None and module.input_quantizer.static:
            src = wrapper.input_quantizer
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
