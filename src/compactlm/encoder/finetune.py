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

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from compactlm.data.classification import encode_examples, get_task, iter_batches, load_classification
from compactlm.errors import CompactLMError

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


def finetune(model: nn.Module, tokenizer, config: FinetuneConfig, progress: bool = True) -> dict:
    """Fine-tune ``model`` in place on ``config.task``; returns the report (accuracies, steps, seconds).

    Args:
        model: A sequence-classification model with ``num_labels`` of the task.
        tokenizer: Its tokenizer.
        config: Options.
    """
    from accelerate import Accelerator

    check_classifier(model, config.task)
    torch.manual_seed(config.seed)
    train = encode_split(tokenizer, config.task, "train", config.train_limit, config.seed, config.max_length)
    val = encode_split(tokenizer, config.task, "validation", config.eval_limit, 0, config.max_length)
    test = encode_split(tokenizer, config.task, "test", config.eval_limit, 0, config.max_length)
    steps_per_epoch = math.ceil(len(train["labels"]) / config.batch_size)
    total = max(1, int(round(config.epochs * steps_per_epoch)))
    accelerator = Accelerator(cpu=model_device(model).type == "cpu")
    optimizer = adamw(model, config.lr, config.weight_decay)
    scheduler = linear_warmup_decay(optimizer, total, config.warmup)
    model, optimizer = accelerator.prepare(model, optimizer)
    gen = torch.Generator().manual_seed(config.seed)
    start = time.perf_counter()
    model.train()
    step, losses = 0, []
    bar = tqdm(total=total, desc=f"finetune {config.task}", disable=not progress)
    while step < total:
        for batch in iter_batches(train, config.batch_size, shuffle=True, generator=gen):
            batch = {k: v.to(accelerator.device) for k, v in batch.items()}
            labels = batch.pop("labels")
            loss = F.cross_entropy(model(**batch).logits, labels)
            accelerator.backward(loss)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()))
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{sum(losses[-20:]) / len(losses[-20:]):.4f}")
            if step >= total:
                break
    bar.close()
    model = accelerator.unwrap_model(model)
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
