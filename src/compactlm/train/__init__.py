"""The one training loop (:class:`Trainer`) every compactlm training job runs on."""

from compactlm.train.trainer import (
    CHECKPOINT,
    TrainConfig,
    Trainer,
    adamw,
    checkpoint_dir_for,
    load_checkpoint_state,
    lr_lambda,
    resume_dir,
    steps_for,
)

__all__ = ["CHECKPOINT", "TrainConfig", "Trainer", "adamw", "checkpoint_dir_for", "load_checkpoint_state", "lr_lambda", "resume_dir", "steps_for"]
