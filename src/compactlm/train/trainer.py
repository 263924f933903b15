"""The one training loop of compactlm, on ``accelerate``: loss hook, accumulation, clipping, LR
schedule, atomic checkpoints and exact resume, DDP.

Every training job runs on :class:`Trainer` — decoder QAT (:mod:`compactlm.qat.run`), encoder
fine-tuning (:mod:`compactlm.encoder.finetune`), encoder KD-QAT (:mod:`compactlm.encoder.qat`) and SDQ
(:mod:`compactlm.encoder.sdq`) — differing only in ``compute_loss``, data and hooks. The trainer
knows nothing about quantization or teachers: it optimizes the trainable parameters of ``model``
against ``compute_loss(model, batch) -> (loss, parts)`` where ``parts`` maps term names to
(detached) values for logging. Distillation objectives (:class:`compactlm.distill.lm.LMDistillLoss`
for causal LMs; the encoder QAT's own) close over their frozen teacher. Hooks: ``on_step(model,
step, total)`` runs before each optimizer step (SDQ's Quant-Noise schedule); ``collate(batch)``
shapes each micro-batch (the encoders trim padding); ``train_mode=False`` trains with the model in
eval mode (no dropout: encoder KD-QAT).

Optimizer: AdamW; weight decay only on tensors of 2 or more dimensions (matrices), never on biases
and norm weights. Schedule (:func:`lr_lambda`): with ``W = int(warmup · steps)`` warm-up steps,
the LR multiplier at step ``k`` (0-based) is ``(k + 1) / (W + 1)`` for ``k < W`` (linear, the peak
not reached), then ``1 − (k − W) / (steps − W)`` (linear decay, from the peak at ``k = W``),
``½(1 + cos(π·(k − W)/(steps − W)))`` (cosine) or 1 (constant). (Encoder training used
``(k + 1) / W`` during warm-up before the trainers were merged: its warm-up LRs are now
``W / (W + 1)`` of what they were; the decay is unchanged.)

Data is a tensor (or dict of tensors) with ``N`` examples on the first axis. Step ``k`` uses
micro-batches ``k·A .. k·A + A − 1`` (``A`` = accumulation) of a seeded per-epoch permutation; a
micro-batch of the global ``batch_size`` is split evenly across processes, and DDP averages the
gradients, so a run on ``P`` processes computes the same update as one process (up to float
reduction order). The order depends only on ``(seed, step)``, which makes resuming exact.

Runs unchanged under ``accelerate launch --num_processes P [--cpu]`` (DDP; with an FSDP accelerate
config the model is sharded by ``accelerator.prepare``).

Checkpoint (main process, every ``checkpoint_every`` steps and at the end): ``<dir>/checkpoint.pt``
with the model's trainable state, optimizer, scheduler, step, loss history, the job's settings and
RNG state (CPU, and CUDA when used), written to a temporary file and renamed (atomic); loaded with
``weights_only=True`` (no code runs). A trainer built with the same settings on the same directory
resumes where the checkpoint left off and ends on the same weights as an uninterrupted run.
"""

from __future__ import annotations

import logging
import math
import os
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Mapping

import torch
from torch import nn
from tqdm.auto import tqdm

from compactlm.errors import CompactLMError

log = logging.getLogger(__name__)

LossFn = Callable[[nn.Module, Mapping[str, torch.Tensor]], "tuple[torch.Tensor, Mapping[str, torch.Tensor | float]]"]
StepHook = Callable[[nn.Module, int, int], None]
CHECKPOINT = "checkpoint.pt"


def checkpoint_dir_for(out: str | os.PathLike) -> Path:
    """Where a job writing the run directory ``out`` keeps its checkpoints: ``<out>.ckpt/`` beside it
    (``out`` itself appears atomically at the end, then the checkpoint directory is removed)."""
    out = Path(out)
    return out.parent / f"{out.name}.ckpt"


def resume_dir(out: str | os.PathLike, overwrite: bool = False) -> Path:
    """The checkpoint directory of a job about to write ``out``: resumed from when it exists.

    ``overwrite`` discards it (the run starts over); without it an existing, non-empty ``out``
    (a finished run) is refused before any work is done.

    Raises:
        CompactLMError: ``out`` exists and ``overwrite`` is not set.
    """
    import shutil

    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise CompactLMError(f"--out: {out} already exists; choose another path or pass --overwrite")
    ckpt = checkpoint_dir_for(out)
    if overwrite:
        shutil.rmtree(ckpt, ignore_errors=True)
    return ckpt


@dataclass
class TrainConfig:
    """Optimization settings.

    Attributes:
        steps: Optimizer steps.
        batch_size: Global examples per micro-batch (split across processes).
        grad_accum: Micro-batches per optimizer step.
        lr: Peak learning rate (AdamW).
        weight_decay: AdamW weight decay (matrices only; biases and norms get none).
        warmup: Fraction of steps of linear warm-up (module docstring: the formula).
        schedule: ``"linear"`` / ``"cosine"`` decay to 0 after warm-up, or ``"constant"``.
        max_grad_norm: Gradient clipping (``0``: none).
        seed: Data order and initialization seed.
        checkpoint_every: Steps between checkpoints (``0``: only at the end).
    """

    steps: int = 100
    batch_size: int = 4
    grad_accum: int = 1
    lr: float = 1e-4
    weight_decay: float = 0.0
    warmup: float = 0.05
    schedule: str = "linear"
    max_grad_norm: float = 1.0
    seed: int = 0
    checkpoint_every: int = 0

    def validate(self) -> None:
        for name in ("steps", "batch_size", "grad_accum"):
            if getattr(self, name) < 1:
                raise CompactLMError(f"--{name.replace('_', '-')}: must be positive, got {getattr(self, name)}")
        if self.lr <= 0:
            raise CompactLMError(f"--lr: must be positive, got {self.lr}")
        if self.schedule not in ("linear", "cosine", "constant"):
            raise CompactLMError(f"--schedule: expected linear, cosine or constant, got {self.schedule!r}")
        if not 0 <= self.warmup < 1:
            raise CompactLMError(f"--warmup: a fraction of the steps in [0, 1), got {self.warmup}")


def steps_for(steps: int | None, epochs: float, n_train: int, batch_size: int) -> int:
    """Optimizer steps of a run given as ``steps`` or, when that is ``None``, as ``epochs`` over
    ``n_train`` examples in batches of ``batch_size`` (at least 1)."""
    return steps or max(1, math.ceil(epochs * n_train / batch_size))


def lr_lambda(config: TrainConfig) -> Callable[[int], float]:
    """Multiplier of the peak LR at step ``k``: linear warm-up, then linear/cosine decay or constant
    (the formula is in the module docstring)."""
    warm = int(config.warmup * config.steps)

    def f(step: int) -> float:
        if step < warm:
            return (step + 1) / (warm + 1)
        if config.schedule == "constant":
            return 1.0
        progress = (step - warm) / max(1, config.steps - warm)
        if config.schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * progress))
        return max(0.0, 1.0 - progress)

    return f


def _n_examples(data) -> int:
    return len(next(iter(data.values()))) if isinstance(data, Mapping) else len(data)


def _take(data, idx: torch.Tensor):
    if isinstance(data, Mapping):
        return {k: v[idx] for k, v in data.items()}
    return {"input_ids": data[idx]}


def _plain(value):
    """``value`` as JSON-like plain types (tuples → lists), the form a checkpoint stores and compares."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def load_checkpoint_state(path: Path) -> dict:
    """Read a trainer checkpoint without executing code (``weights_only``: tensors and plain types).

    Raises:
        CompactLMError: the file is not a readable trainer checkpoint (truncated, or it holds
            pickled objects other than tensors and plain Python types).
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError, truncated zip, ...: one line naming the file
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CompactLMError(
            f"checkpoint: cannot load {path} as a trainer checkpoint (tensors and plain types only): "
            f"{reason}; delete it or pass --overwrite to start over"
        ) from None
    if not isinstance(state, dict) or not {"step", "model", "optimizer", "scheduler", "config"} <= set(state):
        raise CompactLMError(f"checkpoint: {path} is not a trainer checkpoint; delete it or pass --overwrite")
    return state


def adamw(model: nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW over the trainable parameters; no decay on biases and norm weights (1-D tensors).

    Raises:
        CompactLMError: ``model`` has no trainable parameter.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise CompactLMError("model: no trainable parameters")
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr)


class Trainer:
    """Train ``model`` on ``compute_loss`` over ``data``.

    Args:
        model: The model trained (its ``requires_grad`` parameters are optimized).
        compute_loss: ``(model, batch) -> (loss, parts)``; ``batch`` is a dict of tensors on the device.
        data: ``LongTensor [N, T]`` token ids (becomes ``{"input_ids": ...}``) or a dict of ``[N, ...]`` tensors.
        config: :class:`TrainConfig`.
        checkpoint_dir: Where checkpoints go; an existing checkpoint there is resumed.
        accelerator: An ``accelerate.Accelerator`` (a default one is created).
        progress: Show a tqdm bar (main process only).
        extra_modules: Modules whose state follows the model's device but is not trained (the teacher).
        on_step: ``on_step(model, step, total)`` before each optimizer step (``model`` unwrapped).
        collate: ``collate(batch) -> batch`` applied to each micro-batch before it moves to the device.
        train_mode: Put the model in train mode (dropout on); ``False``: eval mode, gradients still flow.
        job: The job's own settings (scheme, loss, task, ...): saved in the checkpoint, and a
            checkpoint with other settings is not resumed.
        desc: Progress-bar label.

    Each global batch of ``batch_size`` examples is split evenly over the processes (DDP) and
    ``grad_accum`` micro-batches; the loss of each micro-batch is ``compute_loss``'s own mean, and the
    micro-batch gradients are averaged. A token-mean loss over padded data therefore weighs a token by
    its micro-batch's token count, so with padding 1 and 2 processes differ slightly (tested equal
    without padding, ``tests/train/test_trainer.py::test_two_processes_match_one``).
    """

    def __init__(self, model: nn.Module, compute_loss: LossFn, data, config: TrainConfig,
                 checkpoint_dir: str | os.PathLike | None = None, accelerator=None, progress: bool = True,
                 extra_modules: tuple[nn.Module, ...] = (), on_step: StepHook | None = None,
                 collate: Callable[[dict], dict] | None = None, train_mode: bool = True,
                 job: Mapping | None = None, desc: str = "train"):
        from accelerate import Accelerator

        config.validate()
        self.config = config
        self.on_step = on_step
        self.collate = collate
        self.train_mode = train_mode
        self.job = _plain(dict(job or {}))
        self.desc = desc
        self.accelerator = accelerator or Accelerator()
        acc = self.accelerator
        if config.batch_size % acc.num_processes:
            raise CompactLMError(
                f"--batch-size: {config.batch_size} does not split over {acc.num_processes} processes"
            )
        self.n = _n_examples(data)
        if self.n < config.batch_size:
            raise CompactLMError(f"--samples: {self.n} training examples, fewer than --batch-size {config.batch_size}")
        self.data = data
        self.compute_loss = compute_loss
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        self.progress = progress
        for m in extra_modules:
            m.to(acc.device)
        optimizer = adamw(model, config.lr, config.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(config))
        self.model, self.optimizer = acc.prepare(model, optimizer)
        self.step = 0
        self.history: list[dict[str, float]] = []
        self.seconds = 0.0
        if self.checkpoint_dir is not None and (self.checkpoint_dir / CHECKPOINT).exists():
            self._load()
        self.resumed_at = self.step  # 0 for a fresh run

    # ---- data order -------------------------------------------------------------------------------
    def _micro_batch(self, micro: int) -> dict[str, torch.Tensor]:
        """This process's share of global micro-batch number ``micro``."""
        b = self.config.batch_size
        per_epoch = self.n // b
        epoch, pos = divmod(micro, per_epoch)
        perm = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.config.seed * 100_003 + epoch))
        idx = perm[pos * b : (pos + 1) * b]
        share = b // self.accelerator.num_processes
        r = self.accelerator.process_index
        batch = _take(self.data, idx[r * share : (r + 1) * share])
        if self.collate is not None:
            batch = self.collate(batch)
        return {k: v.to(self.accelerator.device) for k, v in batch.items()}

    # ---- training ---------------------------------------------------------------------------------
    def train(self, stop_after: int | None = None) -> list[dict[str, float]]:
        """Run until ``config.steps`` (or ``stop_after`` steps in total, to simulate an interruption).

        Returns:
            The loss history: one dict per step with ``loss``, each term, ``lr`` and ``step``.
        """
        acc, cfg = self.accelerator, self.config
        end = cfg.steps if stop_after is None else min(cfg.steps, stop_after)
        self.model.train(self.train_mode)
        bar = tqdm(total=cfg.steps, initial=self.step, desc=self.desc,
                   disable=not (self.progress and acc.is_main_process))
        t0 = time.perf_counter()
        while self.step < end:
            if self.on_step is not None:
                self.on_step(self.unwrapped, self.step, cfg.steps)
            sums: dict[str, torch.Tensor] = {}
            for a in range(cfg.grad_accum):
                batch = self._micro_batch(self.step * cfg.grad_accum + a)
                sync = a == cfg.grad_accum - 1
                ctx = acc.no_sync(self.model) if not sync and acc.num_processes > 1 else nullcontext()
                with ctx:
                    loss, parts = self.compute_loss(self.model, batch)
                    if not torch.isfinite(loss):
                        raise CompactLMError(f"training diverged at step {self.step} (loss {loss.item()}); lower --lr")
                    acc.backward(loss / cfg.grad_accum)
                for k, v in {"loss": loss, **parts}.items():
                    v = torch.as_tensor(v, dtype=torch.float32, device=acc.device).detach()
                    sums[k] = sums.get(k, 0) + v / cfg.grad_accum
            if cfg.max_grad_norm > 0:
                acc.clip_grad_norm_(self.model.parameters(), cfg.max_grad_norm)
            lr = self.scheduler.get_last_lr()[0]
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            names = sorted(sums)
            reduced = acc.reduce(torch.stack([sums[k] for k in names]), reduction="mean")
            record = {"step": self.step + 1, "lr": lr, **{k: float(v) for k, v in zip(names, reduced)}}
            self.history.append(record)
            self.step += 1
            bar.update(1)
            bar.set_postfix({k: f"{v:.4f}" for k, v in record.items() if k not in ("step", "lr")})
            if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0 and self.step < end:
                self.seconds += time.perf_counter() - t0
                t0 = time.perf_counter()
                self.save_checkpoint()
        bar.close()
        self.seconds += time.perf_counter() - t0
        if self.checkpoint_dir is not None:
            self.save_checkpoint()
        return self.history

    @property
    def unwrapped(self) -> nn.Module:
        return self.accelerator.unwrap_model(self.model)

    # ---- checkpoints ------------------------------------------------------------------------------
    def _trainable_state(self) -> dict[str, torch.Tensor]:
        model = self.unwrapped
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        return {k: v.detach().cpu().clone() for k, v in model.state_dict().items() if k in trainable}

    def save_checkpoint(self) -> None:
        """Atomically write the checkpoint (main process); every process waits for it."""
        acc = self.accelerator
        if self.checkpoint_dir is None:
            return
        if acc.is_main_process:
            self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
            state = {
                "step": self.step,
                "model": self._trainable_state(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "history": self.history,
                "seconds": self.seconds,
                "config": asdict(self.config),
                "job": self.job,
                "rng": torch.get_rng_state(),
            }
            if torch.cuda.is_available() and torch.cuda.is_initialized():
                state["cuda_rng"] = torch.cuda.get_rng_state_all()
            tmp = self.checkpoint_dir / f".{CHECKPOINT}.tmp"
            torch.save(state, tmp)
            os.replace(tmp, self.checkpoint_dir / CHECKPOINT)
        acc.wait_for_everyone()

    def _load(self) -> None:
        state = load_checkpoint_state(self.checkpoint_dir / CHECKPOINT)
        saved = {k: v for k, v in state["config"].items() if k != "checkpoint_every"}
        now = {k: v for k, v in asdict(self.config).items() if k != "checkpoint_every"}
        saved_job = state.get("job", {})
        if saved_job != self.job:
            diff = sorted(k for k in set(saved_job) | set(self.job) if saved_job.get(k) != self.job.get(k))
            raise CompactLMError(
                f"--out: a checkpoint with other settings ({', '.join(diff)}) exists in {self.checkpoint_dir}; "
                "use the same settings to resume or pass --overwrite"
            )
        if saved != now:
            diff = sorted(k for k in now if saved.get(k) != now[k])
            raise CompactLMError(
                f"--out: a checkpoint with other settings ({', '.join(diff)}) exists in {self.checkpoint_dir}; "
                "use the same settings to resume or pass --overwrite"
            )
        missing = self.unwrapped.load_state_dict(state["model"], strict=False)
        if missing.unexpected_keys:
            raise CompactLMError(f"checkpoint: unexpected parameters {missing.unexpected_keys[:3]}...")
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step, self.history, self.seconds = state["step"], state["history"], state.get("seconds", 0.0)
        torch.set_rng_state(state["rng"])
        if "cuda_rng" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        log.info("resumed from %s at step %d", self.checkpoint_dir / CHECKPOINT, self.step)
