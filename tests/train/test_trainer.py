"""Trainer on tiny models: the loss goes down, resume is exact, 2 processes match 1."""

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from compactlm.distill.lm import LMDistillLoss, parse_terms
from compactlm.train import Trainer, TrainConfig, lr_lambda
from compactlm.errors import CompactLMError
from compactlm.models.tiny import tiny_model
from compactlm.qat import prepare_qat

WORKER = Path(__file__).with_name("ddp_worker.py")



def _setup(loss="tsld", scheme="w2a16"):
    teacher = tiny_model("llama", seed=0)
    with torch.no_grad():  # a random tiny model is nearly uniform: sharpen it so distillation has signal
        teacher.lm_head.weight.mul_(8.0)
    student = prepare_qat(copy.deepcopy(teacher), scheme)
    data = torch.randint(2, 128, (16, 24), generator=torch.Generator().manual_seed(1))
    return teacher, student, data


@pytest.mark.parametrize("loss", ["gt", "kd", "kd+gt", "tsld", "l2l", "rkl", "attn"])
def test_few_steps_lower_the_loss(loss):
    teacher, student, data = _setup()
    cfg = TrainConfig(steps=12, batch_size=4, lr=3e-4, warmup=0.0, schedule="constant")
    hist = Trainer(student, LMDistillLoss(teacher, loss), data, cfg, progress=False).train()
    first = sum(h["loss"] for h in hist[:3]) / 3
    last = sum(h["loss"] for h in hist[-3:]) / 3
    assert last < first, (loss, first, last)
    assert {t for t, _ in parse_terms(loss)} <= set(hist[0])  # every term logged


def test_checkpoint_resume_continues_identically(tmp_path):
    cfg = TrainConfig(steps=6, batch_size=4, grad_accum=2, lr=2e-3, warmup=0.2, schedule="cosine")
    teacher, student, data = _setup()
    full = Trainer(student, LMDistillLoss(teacher, "tsld"), data, cfg, progress=False).train()

    teacher, student, data = _setup()
    t1 = Trainer(student, LMDistillLoss(teacher, "tsld"), data, cfg, checkpoint_dir=tmp_path, progress=False)
    t1.train(stop_after=3)
    assert (tmp_path / "checkpoint.pt").exists()
    teacher, student2, data = _setup()  # a fresh process would start from the FP weights again
    t2 = Trainer(student2, LMDistillLoss(teacher, "tsld"), data, cfg, checkpoint_dir=tmp_path, progress=False)
    assert t2.step == 3
    resumed = t2.train()
    assert [h["step"] for h in resumed] == list(range(1, 7))
    for a, b in zip(full, resumed):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5, abs=1e-6)
    # other settings on the same checkpoint are refused
    teacher, student3, data = _setup()
    with pytest.raises(CompactLMError, match="lr"):
        Trainer(student3, LMDistillLoss(teacher, "tsld"), data, TrainConfig(steps=6, batch_size=4, grad_accum=2,
                       lr=1e-3, warmup=0.2, schedule="cosine"), checkpoint_dir=tmp_path, progress=False)


class _Payload:
    """Pickles to a call of ``Path.touch`` on load: a checkpoint that executes code."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_checkpoint_is_loaded_without_executing_code(tmp_path):
    teacher, student, data = _setup()
    cfg = TrainConfig(steps=2, batch_size=4)
    Trainer(student, LMDistillLoss(teacher, "tsld"), data, cfg, checkpoint_dir=tmp_path, progress=False).train()
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)  # plain types only
    marker = tmp_path / "code-ran"
    state["history"] = [_Payload(marker)]
    torch.save(state, tmp_path / "checkpoint.pt")
    teacher, student, data = _setup()
    with pytest.raises(CompactLMError, match="checkpoint: cannot load .*checkpoint.pt") as info:
        Trainer(student, LMDistillLoss(teacher, "tsld"), data, cfg, checkpoint_dir=tmp_path, progress=False)
    assert not marker.exists()
    assert "\n" not in str(info.value)


def test_truncated_checkpoint_is_one_line_error(tmp_path):
    (tmp_path / "checkpoint.pt").write_bytes(b"PK\x03\x04 truncated")
    teacher, student, data = _setup()
    with pytest.raises(CompactLMError, match="checkpoint: cannot load") as info:
        Trainer(student, LMDistillLoss(teacher, "tsld"), data, TrainConfig(steps=2, batch_size=4),
                       checkpoint_dir=tmp_path, progress=False)
    assert "\n" not in str(info.value)


def test_lr_schedule_and_config_errors():
    f = lr_lambda(TrainConfig(steps=10, warmup=0.2))
    assert f(0) < f(1) < f(2) == 1.0 and f(9) < f(5) < 1.0
    with pytest.raises(CompactLMError, match="--steps"):
        TrainConfig(steps=0).validate()
    with pytest.raises(CompactLMError, match="--loss"):
        parse_terms("tsld,foo")
    with pytest.raises(CompactLMError, match="teacher"):
        LMDistillLoss(None, "kd")
    assert parse_terms("tsld:1,gt:0.5") == (("tsld", 1.0), ("gt", 0.5))


def _loopback_error() -> str | None:
    """Why a TCP connection to 127.0.0.1 fails (e.g. ``unshare -n`` leaves ``lo`` down), or ``None``."""
    import socket

    try:
        with socket.socket() as server:
            server.bind(("127.0.0.1", 0))
            server.listen()
            socket.create_connection(server.getsockname(), timeout=2).close()
    except OSError as e:
        return str(e)
    return None


@pytest.mark.parametrize("job", ["decoder", "encoder"])
def test_two_processes_match_one(tmp_path, job):
    """`accelerate launch --multi_gpu --num_processes 2` with ACCELERATE_USE_CPU (torchrun, gloo DDP on CPU)
    gives the single-process losses, for decoder QAT and for encoder KD-QAT (its own accelerator and
    padding trim). (`--cpu` alone runs one process: accelerate's multi-CPU launcher is mpirun.)"""
    if (why := _loopback_error()) is not None:
        pytest.skip(f"DDP rendezvous needs the loopback interface: {why}")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "ACCELERATE_USE_CPU": "true"}
    one, two = tmp_path / "one.json", tmp_path / "two.json"
    subprocess.run([sys.executable, str(WORKER), job, str(one)], check=True, env=env, timeout=120)
    launcher = Path(sys.executable).with_name("accelerate")
    import socket

    for attempt in range(2):  # the free port can be taken between here and the rendezvous on a shared host
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        run = subprocess.run([str(launcher), "launch", "--num_processes", "2", "--num_machines", "1", "--multi_gpu",
                              "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(port),
                              str(WORKER), job, str(two)], env=env, timeout=300)
        if run.returncode == 0:
            break
    run.check_returncode()
    h1, h2 = json.loads(one.read_text()), json.loads(two.read_text())
    assert h1["processes"] == 1 and h2["processes"] == 2
    for a, b in zip(h1["history"], h2["history"], strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)
    assert h1["history"][-1]["loss"] < h1["history"][0]["loss"]
