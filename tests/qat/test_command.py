"""`compactlm qat` and `run_qat` on tiny models: run dir, reload, recipe + overrides, resume, errors."""

import json

import pytest

from compactlm.errors import CompactLMError
from compactlm.models import load_model
from compactlm.qat import QATRecipe, run_qat
from compactlm.train import checkpoint_dir_for
from compactlm.quant import QuantLinear

FAST = ["--samples", "8", "--seq-len", "16", "--steps", "3", "--batch-size", "2", "--no-progress"]



def test_cli_writes_a_run_dir_that_reloads_and_matches(tmp_path, run_cli):
    out = tmp_path / "runs" / "q"
    code, stdout, err = run_cli(["qat", "--model", "tiny-llama", "--scheme", "w2a16", "--loss", "tsld", *FAST,
                                 "--out", str(out)])
    assert code == 0, err
    assert {p.name for p in out.iterdir()} >= {"model", "config.json", "report.json", "quantization.json",
                                                "quant_state.safetensors"}
    report = json.loads((out / "report.json").read_text())
    assert len(report["history"]) == 3 and {"tsld", "gt", "loss"} <= set(report["history"][0])
    assert report["quantizer"] == "twn" and report["train_tokens"] == 3 * 2 * 16
    config = json.loads((out / "config.json").read_text())
    assert config["recipe"]["loss"] == [["tsld", 1.0], ["gt", 1.0]]
    model, _ = load_model(str(out))
    qls = [m for m in model.modules() if isinstance(m, QuantLinear)]
    assert len(qls) == 14 and all(q.bits == 2 for q in qls)
    for q in qls:  # ternary: three levels per channel at most
        assert q.int_weight.min() >= -1 and q.int_weight.max() <= 1
    assert not checkpoint_dir_for(out).exists()
    # the PTQ path's export works unchanged on the ternary grid
    code, stdout, err = run_cli(["export", "--model", str(out), "--format", "compressed-tensors",
                                 "--out", str(tmp_path / "ct"), "--verify"])
    assert code == 0, err
    assert '"weight_bits": 2' in stdout and '"max_abs_logit_diff": 0.0' in stdout
    code, _, err = run_cli(["qat", "--model", "tiny-llama", *FAST, "--out", str(out)])
    assert code == 2 and "--overwrite" in err


def test_recipe_yaml_with_flag_override(tmp_path, run_cli):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: tiny-gpt2\nscheme: w4a16-g16\nloss: {kd: 1.0, gt: 0.5}\nsamples: 8\nseq_len: 16\n"
                      "steps: 5\nbatch_size: 2\nlr: 1.0e-3\n")
    out = tmp_path / "r"
    code, _, err = run_cli(["qat", "--recipe", str(recipe), "--steps", "2", "--no-progress", "--out", str(out)])
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    assert len(report["history"]) == 2 and {"kd", "gt"} <= set(report["history"][0])  # --steps 2 beat steps: 5
    assert report["loss_terms"] == [["kd", 1.0], ["gt", 0.5]]
    qls = [m for m in load_model(str(out))[0].modules() if isinstance(m, QuantLinear)]
    assert qls and {(q.bits, q.group_size) for q in qls} == {(4, 16)}  # the recipe's scheme was trained and saved
    recipe.write_text("model: tiny-gpt2\nsteps: 2\nfoo: 1\n")
    code, _, err = run_cli(["qat", "--recipe", str(recipe), "--out", str(tmp_path / "z")])
    assert code == 2 and "foo" in err


def test_run_qat_resumes_from_checkpoint(tmp_path, monkeypatch):
    from compactlm.train import Trainer

    out = tmp_path / "q"
    recipe = QATRecipe(model="tiny-llama", samples=8, seq_len=16, steps=4, batch_size=2, checkpoint_every=2, lr=1e-3)
    _, _, full = run_qat(recipe, progress=False)  # in memory, no checkpoints
    original = Trainer.train

    def interrupted(self, stop_after=None):
        original(self, stop_after=2)
        raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "train", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_qat(recipe, out=out, progress=False)
    monkeypatch.setattr(Trainer, "train", original)
    assert (checkpoint_dir_for(out) / "checkpoint.pt").exists() and not out.exists()
    _, _, resumed = run_qat(recipe, out=out, progress=False)
    assert resumed["resumed_at_step"] == 2 and out.exists() and not checkpoint_dir_for(out).exists()
    assert [h["loss"] for h in resumed["history"]] == pytest.approx([h["loss"] for h in full["history"]], rel=1e-5)


def test_errors(tmp_path, run_cli):
    with pytest.raises(CompactLMError, match="--loss"):
        QATRecipe(loss="nope")
    code, _, err = run_cli(["qat", "--model", "tiny-llama", "--steps", "0", "--out", str(tmp_path / "e")])
    assert code == 2 and "--steps" in err
    import importlib.util

    if importlib.util.find_spec("compactlm.commands.encoder_qat") is None:
        code, _, err = run_cli(["qat", "--task", "sarcasm", "--out", str(tmp_path / "t")])
        assert code == 2 and "--task" in err


def test_same_teacher_object_serves_several_runs():
    """The teacher is frozen by the first run; the next student must still train."""
    teacher, _ = load_model("tiny-llama")
    recipe = QATRecipe(model="tiny-llama", samples=8, seq_len=16, steps=2, batch_size=2)
    for loss in ("tsld", "kd"):
        _, _, report = run_qat(recipe, teacher=teacher, loss=loss, progress=False)
        assert len(report["history"]) == 2
    assert not any(p.requires_grad for p in teacher.parameters())
