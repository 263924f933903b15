"""The Python API's one shape: model object + config in, model changed in place, report out, nothing written."""

import json
import os

import pytest
import torch

import compactlm
from compactlm.errors import CompactLMError
from compactlm.models.tiny import tiny_model
from compactlm.quant.fake import FakeQuantLinear
from compactlm.quant.linear import QuantLinear


def _quant_linears(model):
    return [m for m in model.modules() if isinstance(m, QuantLinear)]


def test_qat_decoder_in_place_report_and_writes_nothing(tmp_path, token_batch, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model = tiny_model("llama")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = compactlm.qat(model, "w4a16", data=token_batch, loss="kd", steps=6, batch_size=2, lr=1e-3,
                           progress=False)
    assert list(tmp_path.iterdir()) == []  # no run dir, no checkpoints
    assert _quant_linears(model) and not any(isinstance(m, FakeQuantLinear) for m in model.modules())
    assert report["scheme"] == "w4a16" and report["steps"] == 6 and len(report["history"]) == 6
    assert set(report["loss_end"]) >= {"loss", "kd"}
    json.dumps(report)  # JSON-able
    with torch.no_grad():
        out = model(token_batch).logits
    assert torch.isfinite(out).all()
    # the teacher was a copy taken before any change: the embeddings the student froze are untouched
    emb = "model.embed_tokens.weight"
    assert torch.equal(model.state_dict()[emb], before[emb])


def test_qat_rejects_bad_options_and_data(token_batch):
    model = tiny_model("llama")
    with pytest.raises(CompactLMError, match="unknown option.*stepz"):
        compactlm.qat(model, "w4a16", data=token_batch, stepz=3)
    with pytest.raises(CompactLMError, match="data"):
        compactlm.qat(model, "w4a16", data=None)
    assert not _quant_linears(model)  # refused before touching the model


def test_qat_encoder_on_a_task(local_sarcasm):
    from compactlm.data.char_tokenizer import char_tokenizer

    model = tiny_model("bert", head="sequence-classification")
    report = compactlm.qat(model, "w2a8-tensor-actsym", task="sarcasm", tokenizer=char_tokenizer(), loss="attn-map",
                           steps=4, batch_size=8, lr=1e-3, progress=False)
    assert report["qat_config"]["quantizer"] in ("auto", "twn") and report["steps"] == 4
    assert all(m.bits == 2 for m in _quant_linears(model))
    with pytest.raises(CompactLMError, match="task= and tokenizer="):
        compactlm.qat(tiny_model("bert", head="sequence-classification"), "w2a8")


def test_apply_luts_returns_a_handle_with_report_and_remove(token_batch):
    model = tiny_model("llama")
    logits = lambda: model(token_batch).logits.detach()  # noqa: E731
    ref = logits()
    handle = compactlm.apply_luts(model, ops=("silu",))
    assert handle.report()
    assert not torch.equal(logits(), ref)
    handle.remove()
    assert torch.equal(logits(), ref)


def test_public_names():
    for name in ("quantize", "qat", "distill", "apply_luts", "load_model", "save_quantized", "QuantScheme"):
        assert name in compactlm.__all__ and hasattr(compactlm, name)


def test_distill_decoder_in_place_and_writes_nothing(tmp_path, monkeypatch):
    import json as _json

    from compactlm.data.char_tokenizer import char_tokenizer
    from compactlm.distill.students import depth_pruned_student

    rows = [{"instruction": f"{t} {i}", "output": f"{t[::-1]}{i}", "task": t} for t in ("abc", "xyz", "uvw")
            for i in range(8)]
    data = tmp_path / "pairs.jsonl"
    data.write_text("\n".join(_json.dumps(r) for r in rows))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    teacher = tiny_model("llama", num_hidden_layers=4)
    student, _ = depth_pruned_student(teacher, 2)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    report = compactlm.distill(student, teacher, char_tokenizer(), loss="kd", data=str(data), unseen_tasks="uvw",
                               samples=8, seq_len=170, max_new_tokens=6, steps=3, batch_size=4, lr=1e-3,
                               eval_samples=0, val_samples=2, device="cpu", progress=False)
    assert report["steps"] == 3 and "seconds" in report
    assert any(not torch.equal(before[k], v) for k, v in student.state_dict().items())  # trained in place
    assert list(work.iterdir()) == []
    with pytest.raises(CompactLMError, match="unknown option"):
        compactlm.distill(student, teacher, char_tokenizer(), bogus=1)


def test_distill_encoder_on_a_task(local_sarcasm):
    from compactlm.data.char_tokenizer import char_tokenizer
    from compactlm.distill.ckd import make_student

    teacher = tiny_model("bert", head="sequence-classification")
    student = make_student(teacher, 1, None)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    report = compactlm.distill(student, teacher, char_tokenizer(), task="sarcasm", loss="wr", steps=3, batch_size=8,
                               lr=1e-3, progress=False)
    assert report["steps"] == 3 or report.get("train_steps") == 3 or "loss_end" in report
    assert any(not torch.equal(before[k], v) for k, v in student.state_dict().items())
    with pytest.raises(CompactLMError, match="task="):
        compactlm.distill(student, teacher, char_tokenizer())
