"""Task fine-tuning of an encoder for sequence classification: the full-precision teacher.

Standard recipe (BERT, Devlin et al. 2019): cross-entropy on the labels, AdamW, linear warm-up then
linear decay, dropout on. The fine-tuned model is the teacher of encoder QAT (§2.2) and SDQ (§2.3)
and the FP row of the encoder benchmark. Training runs through ``accelerate`` so the same code uses
a GPU when there is one.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from compactlm.data.classification import encode_examples, get_task, iter_batches, load_classification
from compactlm.errors import CompactLMError
from compactlm.quant.activation import padding_mask

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FinetuneConfig:
    """Options of task fine-tuning.

    Attributes:
        task: Classification task (``sarcasm``, ``boolq``).
        epochs: Passes over the (possibly limited) train split; fractions allowed.
        lr: Peak AdamW learning rate.
        batch_size: Examples per step.
        warmup: Fraction of steps of linear warm-up.
        weight_decay: AdamW weight decay (not on biases and norms).
        max_length: Tokens per example (default: the task's).
        train_limit: Seeded subset of the train split (``None``: all of it).
        eval_limit: Seeded subset of validation and test (``None``: all).
        seed: Seed of the subset, the data order and dropout.
    """

    task: str = "sarcasm"
    epochs: float = 1.0
    lr: float = 5e-5
    batch_size: int = 32
    warmup: float = 0.1
    weight_decay: float = 0.01
    max_length: int | None = None
    train_limit: int | None = None
    eval_limit: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        get_task(self.task)
        if self.epochs <= 0:
            raise CompactLMError(f"--epochs: expected a positive number, got {self.epochs}")
        if self.lr <= 0:
            raise CompactLMError(f"--lr: expected a positive learning rate, got {self.lr}")
        if not 0 <= self.warmup < 1:
            raise CompactLMError(f"--warmup: expected a fraction in [0, 1), got {self.warmup}")


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def predict_logits(model: nn.Module, encoded: dict[str, torch.Tensor], batch_size: int = 64) -> torch.Tensor:
    """Logits ``(N, num_labels)`` of a classifier over encoded examples (eval mode, no grad)."""
    was_training = model.training
    model.eval()
    device = model_device(model)
    out = []
    for batch in iter_batches(encoded, batch_size):
        inputs = {k: v.to(device) for k, v in batch.items() if k != "labels"}
        with padding_mask(inputs.get("attention_mask")):
            out.append(model(**inputs).logits.float().cpu())
    model.train(was_training)
    return torch.cat(out)


def accuracy(model: nn.Module, encoded: dict[str, torch.Tensor], batch_size: int = 64) -> float:
    """Share of examples whose arg-max logit is the label."""
    logits = predict_logits(model, encoded, batch_size)
    return float((logits.argmax(-1) == encoded["labels"]).float().mean())


def encode_split(tokenizer, task: str, split: str, limit: int | None, seed: int, max_length: int | None):
    """Encoded tensors of one split (see :func:`compactlm.data.classification.encode_examples`)."""
    t = get_task(task)
    return encode_examples(tokenizer, load_classification(task, split, limit, seed), max_length or t.max_length)


def check_classifier(model: nn.Module, task: str) -> None:
    """Raise a clear error unless ``model`` is a sequence classifier with the task's label count."""
    n = getattr(getattr(model, "config", None), "num_labels", None)
    if not hasattr(model, "classifier") and "SequenceClassification" not in type(model).__name__:
        raise CompactLMError("--model: expected a sequence-classification model (load it with head='sequence-classification')")
    if n != get_task(task).num_labels:
        raise CompactLMError(f"--model: its head has {n} labels, task {task} has {get_task(task).num_labels}")


def linear_warmup_decay(optimizer: torch.optim.Optimizer, total_steps: int, warmup: float):
    """LambdaLR: linear warm-up over ``warmup · total_steps`` steps, then linear decay to 0."""
    n_warm = int(warmup * total_steps)

    def factor(step: int) -> float:
        if step < n_warm:
            return (step + 1) / max(1, n_warm)
        return max(0.0, (total_steps - step) / max(1, total_steps - n_warm))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def adamw(model: nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW over trainable parameters; no decay on biases and norm weights (1-D tensors)."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=lr
    )


def train_steps(
    model: nn.Module,
    train: dict[str, torch.Tensor],
    step_loss: Callable[[dict[str, torch.Tensor]], tuple[torch.Tensor, dict[str, float]]],
    *,
    steps: int,
    lr: float,
    batch_size: int,
    warmup: float,
    weight_decay: float,
    seed: int,
    on_step: Callable[[nn.Module, int, int], None] | None = None,
    desc: str = "train",
    progress: bool = True,
) -> tuple[nn.Module, list[dict[str, float]]]:
    """The training loop shared by fine-tuning, encoder QAT and SDQ.

    AdamW (:func:`adamw`) with linear warm-up / decay, seeded shuffled passes over ``train`` until
    ``steps`` optimizer steps, through ``accelerate`` (device from the model). The model's train /
    eval mode is left as the caller set it.

    Args:
        model: The trained model.
        train: Encoded examples (``input_ids``, ``attention_mask``, ``labels``, ... each ``(N, T)`` / ``(N,)``).
        step_loss: ``batch -> (loss, parts)``: batch tensors already on the model's device.
        on_step: ``on_step(model, step, steps)`` before each step (e.g. a Quant-Noise schedule).

    Returns:
        ``(model, history)``: the unwrapped model and, per step, ``parts`` plus ``loss``.
    """
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=model_device(model).type == "cpu")
    optimizer = adamw(model, lr, weight_decay)
    scheduler = linear_warmup_decay(optimizer, steps, warmup)
    model, optimizer = accelerator.prepare(model, optimizer)
    gen = torch.Generator().manual_seed(seed)
    history: list[dict[str, float]] = []
    bar = tqdm(total=steps, desc=desc, disable=not progress)
    while len(history) < steps:
        for batch in iter_batches(train, batch_size, shuffle=True, generator=gen):
            if on_step is not None:
                on_step(model, len(history), steps)
            loss, parts = step_loss({k: v.to(accelerator.device) for k, v in batch.items()})
            accelerator.backward(loss)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            history.append({**parts, "loss": float(loss.detach())})
            bar.update(1)
            bar.set_postfix(loss=f"{sum(h['loss'] for h in history[-20:]) / len(history[-20:]):.4f}")
            if len(history) >= steps:
                break
    bar.close()
    return accelerator.unwrap_model(model), history


def finetune(model: nn.Module, tokenizer, config: FinetuneConfig, progress: bool = True) -> dict:
    """Fine-tune ``model`` in place on ``config.task``; returns the report (accuracies, steps, seconds).

    Args:
        model: A sequence-classification model with ``num_labels`` of the task.
        tokenizer: Its tokenizer.
        config: Options.
    """
    check_classifier(model, config.task)
    torch.manual_seed(config.seed)
    train = encode_split(tokenizer, config.task, "train", config.train_limit, config.seed, config.max_length)
    val = encode_split(tokenizer, config.task, "validation", config.eval_limit, 0, config.max_length)
    test = encode_split(tokenizer, config.task, "test", config.eval_limit, 0, config.max_length)
    steps_per_epoch = math.ceil(len(train["labels"]) / config.batch_size)
    total = max(1, int(round(config.epochs * steps_per_epoch)))

    def step_loss(batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        labels = batch.pop("labels")
        return F.cross_entropy(model(**batch).logits, labels), {}

    start = time.perf_counter()
    model.train()
    model, history = train_steps(
        model, train, step_loss, steps=total, lr=config.lr, batch_size=config.batch_size, warmup=config.warmup,
        weight_decay=config.weight_decay, seed=config.seed, desc=f"finetune {config.task}", progress=progress,
    )
    losses = [h["loss"] for h in history]
    model.eval()
    train_seconds = time.perf_counter() - start
    report = {
        "task": config.task,
        "train_examples": len(train["labels"]),
        "steps": total,
        "final_train_loss": round(sum(losses[-20:]) / len(losses[-20:]), 4),
        "val_acc": round(accuracy(model, val), 4),
        "test_acc": round(accuracy(model, test), 4),
        "val_examples": len(val["labels"]),
        "test_examples": len(test["labels"]),
        "train_seconds": round(train_seconds, 1),
        "seconds": round(time.perf_counter() - start, 1),
    }
    log.info("finetune %s: val acc %.4f, test acc %.4f", config.task, report["val_acc"], report["test_acc"])
    return report
