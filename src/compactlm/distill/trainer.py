"""Teacher → student training loop on ``accelerate``: loss-term hook, accumulation, LR schedule,
atomic checkpoints and exact resume.

The trainer knows nothing about quantization or teachers: it optimizes the trainable parameters of
``model`` against ``compute_loss(model, batch) -> (loss, parts)`` where ``parts`` maps term names
to (detached) values for logging. Distillation objectives (:class:`compactlm.distill.lm.LMDistillLoss`
for causal LMs; the encoder QAT's own) close over their frozen teacher.

Data is a tensor (or dict of tensors) with ``N`` examples on the first axis. Step ``k`` uses
micro-batches ``k·A .. k·A + A − 1`` (``A`` = accumulation) of a seeded per-epoch permutation; a
micro-batch of the global ``batch_size`` is split evenly across processes, and DDP averages the
gradients, so a run on ``P`` processes computes the same update as one process (up to float
reduction order). The order depends only on ``(seed, step)``, which makes resuming exact.

Runs unchanged under ``accelerate launch --num_processes P [--cpu]`` (DDP; with an FSDP accelerate
config the model is sharded by ``accelerator.prepare``).

Checkpoint (main process, every ``checkpoint_every`` steps and at the end): ``<dir>/checkpoint.pt``
with the model's trainable state, optimizer, scheduler, step, loss history and RNG state, written to
a temporary file and renamed (atomic).
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
CHECKPOINT = "checkpoint.pt"


@dataclass
class TrainConfig:
    """Optimization settings.

    Attributes:
        steps: Optimizer steps.
        batch_size: Global examples per micro-batch (split across processes).
        grad_accum: Micro-batches per optimizer step.
        lr: Peak learning rate (AdamW).
        weight_decay: AdamW weight decay.
        warmup: Fraction of steps of linear warm-up.
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


def lr_lambda(config: TrainConfig) -> Callable[[int], float]:
    """Multiplier of the peak LR at step ``k``: linear warm-up, then linear/cosine decay or constant."""
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


class DistillTrainer:
    """Train ``model`` on ``compute_loss`` over ``data``.

    Args:
        model: The student (its ``requires_grad`` parameters are optimized).
        compute_loss: ``(model, batch) -> (loss, parts)``; ``batch`` is a dict of tensors on the device.
        data: ``LongTensor [N, T]`` token ids (becomes ``{"input_ids": ...}``) or a dict of ``[N, ...]`` tensors.
        config: :class:`TrainConfig`.
        checkpoint_dir: Where checkpoints go; an existing checkpoint there is resumed.
        accelerator: An ``accelerate.Accelerator`` (a default one is created).
        progress: Show a tqdm bar (main process only).
        extra_modules: Modules whose state follows the model's device but is not trained (the teacher).
    """

    def __init__(self, model: nn.Module, compute_loss: LossFn, data, config: TrainConfig,
                 checkpoint_dir: str | os.PathLike | None = None, accelerator=None, progress: bool = True,
                 extra_modules: tuple[nn.Module, ...] = ()):
        from accelerate import Accelerator

        config.validate()
        self.config = config
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
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise CompactLMError("model: no trainable parameters")
        optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(config))
        self.model, self.optimizer = acc.prepare(model, optimizer)
        self.step = 0
        self.history: list[dict[str, float]] = []
        self.seconds = 0.0
        if self.checkpoint_dir is not None and (self.checkpoint_dir / CHECKPOINT).exists():
            self._load()

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
        return {k: v.to(self.accelerator.device) for k, v in batch.items()}

    # ---- training ---------------------------------------------------------------------------------
    def train(self, stop_after: int | None = None) -> list[dict[str, float]]:
        """Run until ``config.steps`` (or ``stop_after`` steps in total, to simulate an interruption).

        Returns:
            The loss history: one dict per step with ``loss``, each term, ``lr`` and ``step``.
        """
        acc, cfg = self.accelerator, self.config
        end = cfg.steps if stop_after is None else min(cfg.steps, stop_after)
        self.model.train()
        bar = tqdm(total=cfg.steps, initial=self.step, desc="qat", disable=not (self.progress and acc.is_main_process))
        t0 = time.perf_counter()
        while self.step < end:
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
                "rng": torch.get_rng_state(),
            }
            tmp = self.checkpoint_dir / f".{CHECKPOINT}.tmp"
            torch.save(state, tmp)
            os.replace(tmp, self.checkpoint_dir / CHECKPOINT)
        acc.wait_for_everyone()

    def _load(self) -> None:
        state = load_checkpoint_state(self.checkpoint_dir / CHECKPOINT)
        saved = {k: v for k, v in state["config"].items() if k != "checkpoint_every"}
        now = {k: v for k, v in asdict(self.config).items() if k != "checkpoint_every"}
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
        log.info("resumed from %s at step %d", self.checkpoint_dir / CHECKPOINT, self.step)
