"""Resume state of the reconstruction engine: a killed run resumes, a finished one is removable."""

import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

from compactlm.api import quantize
from compactlm.errors import CompactLMError
from compactlm.models.tiny import tiny_model
from compactlm.ptq.store import remove_work_dir
from compactlm.quant.linear import QuantLinear

OPTS = dict(iters=4, lr=1e-2, seed=2, spill_mb=0.0)  # spilled: a kill leaves memory-mapped files behind


@pytest.fixture
def calib():
    return torch.randint(2, 128, (4, 24), generator=torch.Generator().manual_seed(1))


def _state(model):
    return {n: {k: v.clone() for k, v in m.state_dict().items()}
            for n, m in model.named_modules() if isinstance(m, QuantLinear)}


def _assert_same(a, b):
    assert a.keys() == b.keys() and a
    for name in a:
        assert a[name].keys() == b[name].keys()
        for key in a[name]:
            assert torch.equal(a[name][key], b[name][key]), (name, key)


_KILLED_RUN = """
import os, signal, torch
from compactlm.api import quantize
from compactlm.models.tiny import tiny_model
from compactlm.ptq import engine

real_train = engine._train_block

def die_in_block_1(runner, index, *args, **kwargs):
    if index == 1:
        os.kill(os.getpid(), signal.SIGKILL)  # no finally blocks, no cleanup: as a killed job
    return real_train(runner, index, *args, **kwargs)

engine._train_block = die_in_block_1
calib = torch.randint(2, 128, (4, 24), generator=torch.Generator().manual_seed(1))
quantize(tiny_model("llama"), "lrq", "w4a16", calib=calib, work_dir={work!r}, **{opts!r})
"""


def test_sigkilled_run_resumes_to_the_uninterrupted_result(calib, tmp_path):
    reference = tiny_model("llama")
    quantize(reference, "lrq", "w4a16", calib=calib, **OPTS)

    work = tmp_path / "out.work"
    code = textwrap.dedent(_KILLED_RUN.format(work=str(work), opts=OPTS))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert (work / "block_0.safetensors").exists() and not (work / "block_1.safetensors").exists()
    assert (work / "spill").is_dir()  # the kill left the memory-mapped activations behind

    resumed = tiny_model("llama")
    report = quantize(resumed, "lrq", "w4a16", calib=calib, work_dir=str(work), **OPTS)
    assert report["resumed_blocks"] == 1 and report["work_dir"] == str(work)
    _assert_same(_state(reference), _state(resumed))
    with torch.no_grad():
        assert torch.equal(reference(input_ids=calib).logits, resumed(input_ids=calib).logits)


def test_finished_work_dir_replays_every_block_until_removed(calib, tmp_path):
    """A run that finished but whose caller died while saving replays from its work dir; once the
    output is saved, remove_work_dir deletes it and the next run starts afresh."""
    work = tmp_path / "out.work"
    first = tiny_model("llama")
    quantize(first, "flexround", "w4a16", calib=calib, work_dir=str(work), **OPTS)
    assert (work / "fingerprint.json").exists() and not (work / "spill").exists()

    again = tiny_model("llama")
    report = quantize(again, "flexround", "w4a16", calib=calib, work_dir=str(work), **OPTS)
    assert report["resumed_blocks"] == len(report["blocks"]) == 2
    _assert_same(_state(first), _state(again))

    assert remove_work_dir(work) is True and not work.exists()
    assert remove_work_dir(work) is False  # already gone: nothing to do
    fresh = quantize(tiny_model("llama"), "flexround", "w4a16", calib=calib, work_dir=str(work), **OPTS)
    assert fresh["resumed_blocks"] == 0


def test_remove_work_dir_refuses_other_directories(tmp_path):
    other = tmp_path / "runs"
    other.mkdir()
    (other / "model.safetensors").write_bytes(b"keep me")
    with pytest.raises(CompactLMError, match=r"--work-dir .*runs is not a reconstruction work directory"):
        remove_work_dir(other)
    assert (other / "model.safetensors").read_bytes() == b"keep me"


def test_changed_settings_on_a_default_work_dir_are_one_line(calib, tmp_path):
    work = tmp_path / "out.work"
    quantize(tiny_model("llama"), "lrq", "w4a16", calib=calib, work_dir=str(work), iters=1)
    with pytest.raises(CompactLMError) as e:
        quantize(tiny_model("llama"), "lrq", "w4a16", calib=calib, work_dir=str(work), iters=2)
    assert str(work) in str(e.value) and "\n" not in str(e.value)
