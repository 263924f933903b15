"""Task fine-tuning of an encoder for sequence classification: the full-precision teacher.

Standard recipe (BERT, Devlin et al. 2019): cross-entropy on the labels, AdamW, linear warm-up then
linear decay, dropout on. The fine-tuned model is the teacher of encoder QAT (§2.2) and SDQ (§2.3)
and the FP row of the encoder benchmark. Training runs on the one trainer
(:class:`compactlm.train.Trainer`: ``accelerate``, so the same code uses a GPU when there is one;
checkpoints and exact resume when given a checkpoint directory).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from compactlm.data.classification import encode_examples, get_task, iter_batches, load_classification
from compactlm.errors import CompactLMError
from compactlm.quant.activation import padding_mask
from compactlm.train import TrainConfig, Trainer, steps_for

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FinetuneConfig:
    """Options of task fine-tuning.

    Attributes:
        task: Classification task (``sarcasm``, ``boolq``).
        epochs: Passes over the (possibly limited) train split; fractions allowed.
        steps: Optimizer steps (``None``: ``epochs`` over the train data).
        lr: Peak AdamW learning rate.
        batch_size: Examples per step.
        warmup: Fraction of steps of linear warm-up (formula: :mod:`compactlm.train.trainer`).
        weight_decay: AdamW weight decay (not on biases and norms).
        max_grad_norm: Gradient-norm clipping (``0``: none, as in the paper recipes).
        max_length: Tokens per example (default: the task's).
        train_limit: Seeded subset of the train split (``None``: all of it).
        eval_limit: Seeded subset of validation and test (``None``: all).
        seed: Seed of the subset, the data order and dropout.
        checkpoint_every: Steps between checkpoints when the job has a checkpoint directory
            (``0``: only at the end).
    """

    task: str = "sarcasm"
    epochs: float = 1.0
    steps: int | None = None
    lr: float = 5e-5
    batch_size: int = 32
    warmup: float = 0.1
    weight_decay: float = 0.01
    max_grad_norm: float = 0.0
    max_length: int | None = None
    train_limit: int | None = None
    eval_limit: int | None = None
    seed: int = 0
    checkpoint_every: int = 50

    def __post_init__(self) -> None:
        get_task(self.task)
        if self.epochs <= 0:
            raise CompactLMError(f"--epochs: expected a positive number, got {self.epochs}")
        if self.lr <= 0:
            raise CompactLMError(f"--lr: expected a positive learning rate, got {self.lr}")
        if not 0 <= self.warmup < 1:
            raise CompactLMError(f"--warmup: expected a fraction in [0, 1), got {self.warmup}")
        if self.steps is not None and self.steps < 1:
            raise CompactLMError(f"--steps: expected a positive number of steps, got {self.steps}")

    def train_config(self, n_train: int) -> TrainConfig:
        """The trainer settings for ``n_train`` training examples (``steps`` or ``epochs`` of them)."""
        steps = steps_for(self.steps, self.epochs, n_train, self.batch_size)
        return TrainConfig(steps=steps, batch_size=self.batch_size, lr=self.lr, weight_decay=self.weight_decay,
                           warmup=self.warmup, schedule="linear", max_grad_norm=self.max_grad_norm, seed=self.seed,
                           checkpoint_every=self.checkpoint_every)

    def job_settings(self) -> dict:
        """Settings beyond the trainer's that a checkpoint must share to be resumed."""
        skip = {f.name for f in dataclasses.fields(TrainConfig)} | {"eval_limit", "epochs"}
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in skip}


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


def trim_padding(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Cut the ``(b, T)`` tensors of a batch to its longest example (``labels`` ``(b,)`` untouched)."""
    t = int(batch["attention_mask"].sum(-1).max())
    return {k: (v if v.dim() == 1 else v[:, :t]) for k, v in batch.items()}


def accelerator_for(model: nn.Module):
    """An ``accelerate.Accelerator`` on the device the model already sits on (CPU stays CPU)."""
    from accelerate import Accelerator

    return Accelerator(cpu=model_device(model).type == "cpu")


def classification_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict]:
    """Cross-entropy of the classifier logits ``(B, num_labels)`` against ``labels`` ``(B,)``."""
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with padding_mask(inputs.get("attention_mask")):
        logits = model(**inputs).logits
    return F.cross_entropy(logits, batch["labels"]), {}


def finetune(model: nn.Module, tokenizer, config: FinetuneConfig, progress: bool = True,
             checkpoint_dir: str | os.PathLike | None = None) -> dict:
    """Fine-tune ``model`` in place on ``config.task``; returns the report (accuracies, steps, seconds).

    Args:
        model: A sequence-classification model with ``num_labels`` of the task.
        tokenizer: Its tokenizer.
        config: Options.
        checkpoint_dir: Where to keep checkpoints; a checkpoint there (same settings) is resumed.
    """
    check_classifier(model, config.task)
    torch.manual_seed(config.seed)
    train = encode_split(tokenizer, config.task, "train", config.train_limit, config.seed, config.max_length)
    val = encode_split(tokenizer, config.task, "validation", config.eval_limit, 0, config.max_length)
    test = encode_split(tokenizer, config.task, "test", config.eval_limit, 0, config.max_length)
    train_config = config.train_config(len(train["labels"]))
    start = time.perf_counter()
    trainer = Trainer(model, classification_loss, train, train_config, checkpoint_dir=checkpoint_dir,
                      accelerator=accelerator_for(model), progress=progress, collate=trim_padding,
                      job=config.job_settings(), desc=f"finetune {config.task}")
    resumed_at = trainer.step
    history = trainer.train()
    model = trainer.unwrapped.eval()
    losses = [h["loss"] for h in history]
    report = {
        "task": config.task,
        "train_examples": len(train["labels"]),
        "steps": train_config.steps,
        "resumed_at_step": resumed_at,
        "final_train_loss": round(sum(losses[-20:]) / len(losses[-20:]), 4),
        "val_acc": round(accuracy(model, val), 4),
        "test_acc": round(accuracy(model, test), 4),
        "val_examples": len(val["labels"]),
        "test_examples": len(test["labels"]),
        "train_seconds": round(trainer.seconds, 1),
        "seconds": round(time.perf_counter() - start, 1),
    }
    log.info("finetune %s: val acc %.4f, test acc %.4f", config.task, report["val_acc"], report["test_acc"])
    return report
