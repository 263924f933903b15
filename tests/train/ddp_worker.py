"""Worker for the multi-process test: QAT-distil a tiny Llama for a few steps, write the loss history.

Run with ``accelerate launch --num_processes 2 --cpu tests/train/ddp_worker.py OUT.json`` or plain
``python tests/train/ddp_worker.py OUT.json`` (one process).
"""

import copy
import json
import sys

import torch

from compactlm.distill.lm import LMDistillLoss
from compactlm.train import Trainer, TrainConfig
from compactlm.models.tiny import tiny_model
from compactlm.qat import prepare_qat


def main(out: str) -> None:
    torch.set_num_threads(1)
    teacher = tiny_model("llama", seed=0)
    student = prepare_qat(copy.deepcopy(teacher), "w2a16")
    data = torch.randint(2, 128, (16, 24), generator=torch.Generator().manual_seed(1))
    trainer = Trainer(student, LMDistillLoss(teacher, "tsld"), data,
                             TrainConfig(steps=4, batch_size=4, grad_accum=2, lr=1e-3, warmup=0.0),
                             progress=False, extra_modules=(teacher,))
    history = trainer.train()
    if trainer.accelerator.is_main_process:
        with open(out, "w") as f:
            json.dump({"processes": trainer.accelerator.num_processes, "history": history}, f)


if __name__ == "__main__":
    main(sys.argv[1])
