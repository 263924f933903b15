"""Every encoder training job resumes after an interruption and ends on the weights of an
uninterrupted run (fine-tuning with dropout on; KD-QAT; SDQ with its Quant-Noise schedule)."""

import pytest
import torch

from compactlm.data.char_tokenizer import char_tokenizer
from compactlm.encoder.finetune import FinetuneConfig, finetune
from compactlm.encoder.qat import EncoderQATConfig, run_encoder_qat
from compactlm.encoder.sdq import SDQConfig, run_sdq
from compactlm.models.tiny import tiny_model
from compactlm.train import Trainer

BUDGET = dict(task="sarcasm", steps=4, batch_size=8, train_limit=24, eval_limit=8, max_length=24, checkpoint_every=1)


def _interrupted(monkeypatch, after: int):
    """Make the next ``Trainer.train`` stop after ``after`` steps as a kill would (KeyboardInterrupt)."""
    original = Trainer.train

    def train(self, stop_after=None):
        original(self, stop_after=after)
        raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "train", train)
    return lambda: monkeypatch.setattr(Trainer, "train", original)


def _assert_same_state(a: torch.nn.Module, b: torch.nn.Module):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_finetune_resumes_to_the_same_weights(local_sarcasm, tmp_path, monkeypatch):
    tok = char_tokenizer()
    config = FinetuneConfig(lr=1e-3, **BUDGET)
    full = tiny_model("bert")
    assert full.config.hidden_dropout_prob > 0  # dropout on: the RNG state must be restored too
    finetune(full, tok, config, progress=False)
    restore = _interrupted(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        finetune(tiny_model("bert"), tok, config, progress=False, checkpoint_dir=tmp_path / "ckpt")
    restore()
    assert (tmp_path / "ckpt" / "checkpoint.pt").exists()
    resumed = tiny_model("bert")  # as a new process would: a fresh model, the checkpoint on disk
    report = finetune(resumed, tok, config, progress=False, checkpoint_dir=tmp_path / "ckpt")
    assert report["resumed_at_step"] == 2 and report["steps"] == 4
    _assert_same_state(full, resumed)
    moved = [p for p, q in zip(resumed.parameters(), tiny_model("bert").parameters()) if not torch.equal(p, q)]
    assert moved  # training changed the weights (the comparison above is not trivially true)


@pytest.mark.parametrize("kind", ["qat", "sdq"])
def test_encoder_qat_and_sdq_resume_to_the_same_weights(kind, local_sarcasm, tmp_path, monkeypatch):
    tok = char_tokenizer()
    teacher = tiny_model("bert", initializer_range=0.2)
    if kind == "qat":
        config = EncoderQATConfig(loss="attn-map", lr=1e-3, **BUDGET)
        run = run_encoder_qat
    else:
        config = SDQConfig(lr=1e-3, p_start=0.2, ramp=0.5, **BUDGET)  # noise share changes at every step
        run = run_sdq
    full, _ = run(teacher, tok, config, progress=False, eval_splits=("test",))
    restore = _interrupted(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        run(teacher, tok, config, progress=False, eval_splits=("test",), checkpoint_dir=tmp_path / "ckpt")
    restore()
    resumed, report = run(teacher, tok, config, progress=False, eval_splits=("test",), checkpoint_dir=tmp_path / "ckpt")
    assert report["resumed_at_step"] == 2
    _assert_same_state(full, resumed)
    # a checkpoint of other settings is refused, not silently resumed
    other = EncoderQATConfig(loss="attn-out", lr=1e-3, **BUDGET) if kind == "qat" else SDQConfig(lr=1e-3, beta=2.0, **BUDGET)
    restore = _interrupted(monkeypatch, 1)
    with pytest.raises(KeyboardInterrupt):
        run(teacher, tok, config, progress=False, eval_splits=("test",), checkpoint_dir=tmp_path / "ckpt2")
    restore()
    from compactlm.errors import CompactLMError

    with pytest.raises(CompactLMError, match="other settings"):
        run(teacher, tok, other, progress=False, eval_splits=("test",), checkpoint_dir=tmp_path / "ckpt2")
