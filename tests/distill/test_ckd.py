"""Encoder distillation variants on the one trainer: students, terms as data, loss goes down."""

import pytest
import torch

from compactlm.distill.ckd import VARIANTS, distill_trainer, make_student, resolve_terms
from compactlm.errors import CompactLMError
from compactlm.models.prune import param_count
from compactlm.models.tiny import tiny_model
from compactlm.train import TrainConfig


def _data(n=16, t=12):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 128, (n, t), generator=g)
    mask = torch.ones_like(ids)
    mask[::4, 7:] = 0
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.randint(0, 2, (n,), generator=g)}


def _sharp_teacher(model_type):
    """A tiny teacher without dropout and with confident logits (a random one is near-uniform)."""
    teacher = tiny_model(model_type, head="sequence-classification", num_hidden_layers=4,
                         hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    with torch.no_grad():
        for name, p in teacher.named_parameters():
            if "classifier" in name:
                p.mul_(30.0)
    return teacher


def test_students_are_smaller_copies():
    teacher = tiny_model("bert", head="sequence-classification", num_hidden_layers=4)
    deep = make_student(teacher, layers=2)
    half = make_student(teacher, width=0.5)
    assert deep.config.num_hidden_layers == 2 and teacher.config.num_hidden_layers == 4
    assert half.config.num_attention_heads == 2 and half.config.intermediate_size == 64
    assert param_count(deep) < param_count(teacher) and param_count(half) < param_count(teacher)
    with pytest.raises(CompactLMError, match="--loss"):
        resolve_terms("nope")
    with pytest.raises(CompactLMError, match="--loss"):
        resolve_terms((("kd", 1.0), ("bogus", 1.0)))


@pytest.mark.parametrize("model_type", ["bert", "xlm-roberta"])
@pytest.mark.parametrize("loss", list(VARIANTS))
def test_every_variant_trains(model_type, loss):
    teacher = _sharp_teacher(model_type)
    student = make_student(teacher, layers=2, width=0.5)
    with torch.no_grad():  # the student's head starts away from the teacher's
        for name, p in student.named_parameters():
            if "classifier" in name:
                p.copy_(0.02 * torch.randn_like(p))
    config = TrainConfig(steps=6, batch_size=16, lr=1e-3, warmup=0.0, max_grad_norm=0.0)
    trainer = distill_trainer(student, teacher, _data(), VARIANTS[loss], config, progress=False)
    history = trainer.train()
    assert history[-1]["loss"] < history[0]["loss"]
    assert {n for n, _ in VARIANTS[loss]} <= set(history[0])


def test_hidden_mse_trains_a_projection_for_a_narrower_student():
    teacher = tiny_model("bert", head="sequence-classification", num_hidden_layers=4)
    student = tiny_model("bert", head="sequence-classification", hidden_size=32, intermediate_size=64, num_hidden_layers=2)
    config = TrainConfig(steps=4, batch_size=16, lr=3e-3, warmup=0.0)
    trainer = distill_trainer(student, teacher, _data(), VARIANTS["kd-hidden"], config, progress=False)
    history = trainer.train()
    assert history[-1]["hidden"] < history[0]["hidden"]
    assert trainer.unwrapped.student is student and trainer.unwrapped.projection.proj.weight.shape == (64, 32)


@pytest.mark.parametrize("loss,ok", [("ckd", False), ("ltr", False), ("wr", True), ("kd-hidden", True)])
def test_one_layer_student_and_ltr_angle_is_a_one_line_error(loss, ok):
    teacher = _sharp_teacher("bert")
    student = make_student(teacher, layers=1)
    config = TrainConfig(steps=1, batch_size=16, lr=1e-3, warmup=0.0, max_grad_norm=0.0)
    if ok:
        distill_trainer(student, teacher, _data(), VARIANTS[loss], config, progress=False).train()
    else:
        with pytest.raises(CompactLMError, match=r"--student-layers: the ltr_angle term needs .* at least 2 layers \(got 1\)"):
            distill_trainer(student, teacher, _data(), VARIANTS[loss], config, progress=False)
