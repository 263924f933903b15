"""Worker for the multi-process tests: a few steps of a job on a tiny model, the loss history written out.

``JOB`` is ``decoder`` (QAT-distil a tiny Llama, TSLD) or ``encoder`` (KD-QAT of a tiny BERT classifier
with the attention-map loss, the encoder QAT / SDQ path, ``compactlm.encoder.qat.kd_qat``). Run with
``accelerate launch --multi_gpu --num_processes 2 tests/train/ddp_worker.py JOB OUT.json`` (with
``ACCELERATE_USE_CPU=true``) or plain ``python tests/train/ddp_worker.py JOB OUT.json`` (one process).
"""

import copy
import json
import sys

import torch

from compactlm.train import Trainer, TrainConfig
from compactlm.models.tiny import tiny_model


def decoder_job() -> Trainer:
    from compactlm.distill.lm import LMDistillLoss
    from compactlm.qat import prepare_qat

    teacher = tiny_model("llama", seed=0)
    student = prepare_qat(copy.deepcopy(teacher), "w2a16")
    data = torch.randint(2, 128, (16, 24), generator=torch.Generator().manual_seed(1))
    trainer = Trainer(student, LMDistillLoss(teacher, "tsld"), data,
                      TrainConfig(steps=4, batch_size=4, grad_accum=2, lr=1e-3, warmup=0.0),
                      progress=False, extra_modules=(teacher,))
    trainer.train()
    return trainer


def encoder_job() -> Trainer:
    from compactlm.encoder.qat import kd_qat, prepare_encoder_qat, resolve_terms

    teacher = tiny_model("bert", seed=0, initializer_range=0.2)
    student = prepare_encoder_qat(copy.deepcopy(teacher), "w2a16")
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(2, 128, (16, 12), generator=g)
    # no padding: token-mean terms (hidden MSE) are means per process's micro-batch, so with padded
    # rows one process and two weigh tokens differently (as any per-replica-mean DDP loss does)
    mask = torch.ones(16, 12, dtype=torch.long)
    data = {"input_ids": ids, "attention_mask": mask, "labels": torch.randint(0, 2, (16,), generator=g)}
    return kd_qat(student, teacher, data, resolve_terms("attn-map"),
                  TrainConfig(steps=4, batch_size=4, grad_accum=2, lr=5e-4, warmup=0.0), progress=False)


def main(job: str, out: str) -> None:
    torch.set_num_threads(1)
    trainer = {"decoder": decoder_job, "encoder": encoder_job}[job]()
    if trainer.accelerator.is_main_process:
        with open(out, "w") as f:
            json.dump({"processes": trainer.accelerator.num_processes, "history": trainer.history}, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
