"""`compactlm qat --task ...` (delegated encoder QAT) and `compactlm sdq` end to end on a tiny BERT
teacher with the character tokenizer and a small local stand-in for the sarcasm rows (offline; a few
examples, two steps)."""

import argparse
import json

import pytest

from compactlm.cli import main
from compactlm.commands.encoder_qat import add_encoder_arguments, build_config
from compactlm.encoder.finetune import accuracy, encode_split
from compactlm.encoder.sdq import SDQConfig
from compactlm.errors import CompactLMError
from compactlm.models import load_model
from compactlm.quant import QuantLinear, QuantScheme


def _qat_like_parser():
    """The decoder `qat` flags this module must coexist with (all default None), plus ours."""
    p = argparse.ArgumentParser()
    for flag in ("--model", "--scheme", "--loss", "--out", "--quantizer", "--per"):
        p.add_argument(flag)
    for flag in ("--steps", "--seq-len", "--seed", "--batch-size"):
        p.add_argument(flag, type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--clip", type=float)
    add_encoder_arguments(p)
    return p


def test_build_config_defaults_and_errors():
    p = _qat_like_parser()
    c = build_config(p.parse_args(["--task", "sarcasm", "--loss", "map-out", "--seq-len", "32", "--steps", "5"]))
    assert (c.scheme, c.loss, c.max_length, c.steps, c.lr, c.batch_size) == (
        "w2a8-tensor-actsym", "map-out", 32, 5, 2e-5, 32)
    assert (c.per, c.clip, c.embeddings) == ("tensor", 2.5, True)  # the paper's setting by default
    c = build_config(p.parse_args(["--task", "sarcasm", "--loss", "sdq", "--beta", "0.5"]))
    assert isinstance(c, SDQConfig) and c.scheme == "w8a8-dynamic-actsym" and c.beta == 0.5 and c.clip is None
    c = build_config(p.parse_args(["--task", "sarcasm", "--loss", "attn-map", "--scheme", "w4a8-sym-tensor-actsym",
                                   "--clip", "0", "--quantizer", "lsq"]))
    assert (c.clip, c.quantizer, c.qat_config().resolve(QuantScheme.parse(c.scheme))) == (None, "lsq", "lsq")
    with pytest.raises(CompactLMError, match="--loss"):
        build_config(p.parse_args(["--task", "sarcasm"]))  # the decoder default (None / tsld) is no encoder loss
    with pytest.raises(CompactLMError, match="--scheme"):
        build_config(p.parse_args(["--task", "sarcasm", "--loss", "attn-map", "--scheme", "w2a99"]))


def test_w2a8_is_one_scheme_in_quantize_and_encoder_qat():
    c = build_config(_qat_like_parser().parse_args(["--task", "sarcasm", "--loss", "attn-map", "--scheme", "w2a8"]))
    assert QuantScheme.parse(c.scheme) == QuantScheme.parse("w2a8")  # per-token asymmetric, as in `quantize`
    assert QuantScheme.parse("w2a8-tensor-actsym") != QuantScheme.parse("w2a8")


@pytest.mark.parametrize("argv", [
    ["qat", "--scheme", "w2a8-tensor-actsym", "--loss", "attn-map"],
    ["sdq", "--ramp", "0.5"],
])
def test_cli_writes_loadable_quantized_run(teacher_dir, local_sarcasm, tmp_path, argv, capsys):
    out = tmp_path / "run"
    rc = main([*argv, "--model", str(teacher_dir), "--task", "sarcasm", "--steps", "2", "--batch-size", "8",
               "--seq-len", "24", "--train-limit", "16", "--eval-limit", "16", "--out", str(out)])
    assert rc == 0
    report = json.loads((out / "report.json").read_text())
    assert report["steps"] == 2 and report["test_examples"] == 16
    assert report["scheme"] == ("w2a8-tensor-actsym" if argv[0] == "qat" else "w8a8-dynamic-actsym")
    assert report["qat_config"]["clip"] == (2.5 if argv[0] == "qat" else None)
    assert not (tmp_path / "run.ckpt").exists()  # the checkpoint goes once the run directory is written
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
    with pytest.raises(CompactLMError, match="--recipe: .*unknown key"):
        apply_recipe(_qat_like_parser().parse_args([]), str(recipe))
    with pytest.raises(CompactLMError, match="--recipe: no such file"):
        apply_recipe(_qat_like_parser().parse_args([]), str(tmp_path / "missing.yaml"))


@pytest.mark.parametrize("command", ["finetune", "qat"])
def test_rerun_with_the_same_out_resumes_and_overwrite_starts_over(command, teacher_dir, local_sarcasm, tmp_path,
                                                                   monkeypatch, capsys):
    from compactlm.train import Trainer

    out = tmp_path / "run"
    argv = [command, "--model", str(teacher_dir / "model"), "--task", "sarcasm", "--steps", "3", "--batch-size", "8",
            "--seq-len", "24", "--train-limit", "16", "--eval-limit", "8", "--checkpoint-every", "1", "--out", str(out),
            "--no-progress"]
    if command == "qat":
        argv += ["--loss", "attn-map"]
    original = Trainer.train

    def killed(self, stop_after=None):
        original(self, stop_after=2)
        raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "train", killed)
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 130 and "rerun" in capsys.readouterr().err
    monkeypatch.setattr(Trainer, "train", original)
    assert not out.exists() and (tmp_path / "run.ckpt" / "checkpoint.pt").exists()
    assert main(argv) == 0
    assert json.loads((out / "report.json").read_text())["resumed_at_step"] == 2
    assert not (tmp_path / "run.ckpt").exists()
    with pytest.raises(SystemExit):  # a finished run is not redone without --overwrite
        main(argv)
    assert "already exists" in capsys.readouterr().err
    assert main([*argv, "--overwrite"]) == 0
    assert json.loads((out / "report.json").read_text())["resumed_at_step"] == 0
