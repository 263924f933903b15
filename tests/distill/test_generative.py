"""Generative distillation loops on a tiny random model: each method learns, PromptKD's teacher step
touches only the soft prompt, resume continues identically, the CLI writes a loadable run."""

import json

import pytest
import torch
from safetensors.torch import load_file

from compactlm.data.char_tokenizer import char_tokenizer
from compactlm.data.instructions import encode_examples, jsonl_instructions
from compactlm.distill.generative import (
    METHODS, DistillConfig, GenerativeDistillLoss, PromptedPair, prompted_teacher, run_distill, trim,
)
from compactlm.distill.students import depth_pruned_student
from compactlm.errors import CompactLMError
from compactlm.models.tiny import tiny_model


@pytest.fixture
def data(tmp_path):
    rows = [{"instruction": f"{t} {i}", "output": f"{t[::-1]}{i}", "task": t} for t in ("abc", "xyz", "uvw")
            for i in range(8)]
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return str(path)


def _config(data, method, **kw):
    base = dict(teacher="tiny-llama", loss=method, data=data, unseen_tasks="uvw", samples=8, seq_len=170,
                max_new_tokens=6, steps=4, batch_size=4, lr=1e-3, eval_samples=0, val_samples=2, val_every=1,
                replay_threshold=-1.0, checkpoint_every=2, device="cpu", on_policy=0.5)
    base.update(kw)
    return DistillConfig(**base)


def _teacher():
    return tiny_model("llama", num_hidden_layers=4)


def _fixed_batch(data, tok):
    ex = jsonl_instructions(data)[:4]
    return trim(encode_examples(tok, ex, 170, 6))


@pytest.mark.parametrize("method", METHODS)
def test_a_few_steps_lower_the_methods_loss(method, data):
    """The method's own loss on a fixed batch (same step/micro seeds, so the same coin flips) drops."""
    tok = char_tokenizer()
    cfg = _config(data, method, on_policy=1.0)
    teacher = _teacher()
    student, _ = depth_pruned_student(teacher, 2)
    student.requires_grad_(True)
    model = student
    loss_teacher = teacher
    if method == "promptkd":
        model, loss_teacher = PromptedPair(student, prompted_teacher(teacher, tok, 3, "be a student"), 3), None
    loss = GenerativeDistillLoss(method, None if method == "sft" else loss_teacher, tok, cfg)
    loss.replay_p = 1.0 if method == "distillm" else 0.0
    batch = _fixed_batch(data, tok)

    def measure():
        loss.step = loss.micro = 0
        loss.buffer = []
        with torch.no_grad():
            return float(loss(model, batch)[0])

    before = measure()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    for step in range(8):
        loss.step, loss.micro = step, 0
        value, parts = loss(model, batch)
        opt.zero_grad()
        value.backward()
        opt.step()
        assert all(torch.isfinite(torch.as_tensor(v)) for v in parts.values())
    assert measure() < before


def test_promptkd_teacher_step_only_touches_the_soft_prompt(data):
    tok = char_tokenizer()
    teacher = _teacher()
    student, _ = depth_pruned_student(teacher, 2)
    student.requires_grad_(True)
    pair = PromptedPair(student, prompted_teacher(teacher, tok, 5, "Suppose you are a student."), 5)
    trainable = {n for n, p in pair.named_parameters() if p.requires_grad}
    assert {n for n in trainable if not n.startswith("student.")} == {"teacher.prompt_encoder.default.embedding.weight"}
    assert pair.soft_prompt().shape == (5, teacher.config.hidden_size)
    # initialised from the init text's token embeddings (repeated / cut to length)
    ids = tok("Suppose you are a student.", add_special_tokens=False)["input_ids"][:5]
    emb = teacher.get_input_embeddings().weight[ids]
    assert torch.allclose(pair.soft_prompt(), emb)
    loss = GenerativeDistillLoss("promptkd", None, tok, _config(data, "promptkd"))
    batch = _fixed_batch(data, tok)
    loss_t, loss_s, parts = loss.promptkd_terms(pair, batch)
    loss_t.backward()
    assert pair.soft_prompt().grad is not None and pair.soft_prompt().grad.abs().sum() > 0
    assert all(p.grad is None for p in student.parameters())
    assert all(p.grad is None for n, p in pair.teacher.named_parameters() if "prompt_encoder" not in n)
    pair.zero_grad(set_to_none=True)
    loss_s.backward()  # the student step does not move the prompt
    assert pair.soft_prompt().grad is None and any(p.grad is not None for p in student.parameters())
    assert parts["lambda"] == 1.0 and {"prompt_kl", "prompt_reg", "rkl"} <= set(parts)


@pytest.mark.parametrize("method", ["distillm", "promptkd", "gkd"])
def test_resume_continues_identically(method, data, tmp_path):
    cfg = _config(data, method, steps=5)
    full = run_distill(cfg, out=tmp_path / "full", teacher=_teacher(), tokenizer=char_tokenizer(), progress=False)
    part = run_distill(cfg, out=tmp_path / "resumed", teacher=_teacher(), tokenizer=char_tokenizer(), progress=False,
                       stop_after=3)
    assert part["steps"] == 3 and not (tmp_path / "resumed").exists()
    resumed = run_distill(cfg, out=tmp_path / "resumed", teacher=_teacher(), tokenizer=char_tokenizer(),
                          progress=False)
    assert resumed["resumed_at_step"] == 3
    assert [h["loss"] for h in resumed["history"]] == [h["loss"] for h in full["history"]]
    a = load_file(tmp_path / "full" / "model" / "model.safetensors")
    b = load_file(tmp_path / "resumed" / "model" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    if method == "distillm":
        assert full["final_state"]["replay_p"] > 0 and full["final_state"] == resumed["final_state"]
    assert not (tmp_path / "resumed.ckpt").exists()


def test_config_errors(data):
    with pytest.raises(CompactLMError, match="--loss"):
        DistillConfig(loss="xx").validate()
    with pytest.raises(CompactLMError, match="--student-layers"):
        DistillConfig(student="a", student_layers=3).validate()
    with pytest.raises(CompactLMError, match="--recipe"):
        DistillConfig.from_settings({"bogus": 1})
    assert DistillConfig.from_settings({"eval_seeds": "3,4", "steps": None}).eval_seeds == (3, 4)


def test_cli_writes_a_loadable_run_and_report(run_cli, data, tmp_path):
    from compactlm.models import load_model

    out = tmp_path / "run"
    recipe = tmp_path / "r.yaml"
    recipe.write_text("loss: kd\nsteps: 3\nmax_new_tokens: 6\nseq_len: 170\neval_seeds: '0'\n")
    code, stdout, err = run_cli(["distill", "--teacher", "tiny-llama", "--student-layers", "1", "--data", data,
                                 "--unseen-tasks", "uvw", "--samples", "8", "--steps", "2", "--eval-samples", "2",
                                 "--recipe", str(recipe), "--device", "cpu", "--out", str(out), "--no-progress"])
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    assert report["method"] == "kd" and report["steps"] == 2  # the typed flag beats the recipe
    assert report["kept_blocks"] == [1] and report["data"]["unseen_tasks"] == ["uvw"]
    assert set(report["eval"]["sampled"]["tasks"]) == {"abc", "xyz", "uvw"}
    model, _ = load_model(str(out))
    assert model.config.num_hidden_layers == 1
    code, _, err = run_cli(["distill", "--teacher", "tiny-llama", "--data", data, "--out", str(out)])
    assert code == 2 and "already exists" in err


def test_quantized_student_distils_and_saves_a_quantized_run(data, tmp_path):
    from compactlm.models import load_model
    from compactlm.quant.linear import QuantLinear

    cfg = _config(data, "kd", steps=2, student_scheme="w4a16-g16", student_layers=2)
    report = run_distill(cfg, out=tmp_path / "q", teacher=_teacher(), tokenizer=char_tokenizer(), progress=False)
    assert report["student_scheme"] == "w4a16-g16" and (tmp_path / "q" / "quantization.json").exists()
    model, _ = load_model(str(tmp_path / "q"))
    assert sum(isinstance(m, QuantLinear) for m in model.modules()) == 2 * 7
