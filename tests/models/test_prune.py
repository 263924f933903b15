"""Structured pruning: exactness when everything is kept, rewiring, smaller models that reload."""

import json
import subprocess
import sys

import pytest
import torch
import transformers as T

from compactlm.models import load_model
from compactlm.models.prune import (
    evenly_spaced,
    finalize,
    gradient_importance,
    magnitude_importance,
    param_count,
    prune_depth,
    prune_width,
    rewire,
    save_pruned,
    select_units,
    unit_counts,
)
from compactlm.models.tiny import tiny_model
from compactlm.errors import CompactLMError


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 128, (3, 10), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def _logits(model, batch):
    with torch.no_grad():
        return model(**batch).logits


def _encoder(model_type):
    return tiny_model(model_type, head="sequence-classification", num_hidden_layers=4)


@pytest.mark.parametrize("model_type", ["bert", "xlm-roberta"])
def test_width_one_and_rewiring_reproduce_the_teacher(model_type, batch):
    teacher = _encoder(model_type)
    ref = _logits(teacher, batch)
    kept = prune_width(_encoder(model_type), 1.0)
    assert torch.equal(_logits(kept, batch), ref)
    assert param_count(kept) == param_count(teacher)
    g = torch.Generator().manual_seed(3)
    imp = ([torch.rand(4, generator=g) for _ in range(4)], [torch.rand(128, generator=g) for _ in range(4)])
    rewired = rewire(_encoder(model_type), imp)
    torch.testing.assert_close(_logits(rewired, batch), ref, atol=1e-5, rtol=1e-5)
    # the most important head of layer 0 is now head 0
    top = int(torch.argmax(imp[0][0]))
    d = 16
    q0 = rewired.base_model.encoder.layer[0].attention.self.query.weight[:d]
    assert torch.equal(q0, teacher.base_model.encoder.layer[0].attention.self.query.weight[top * d:(top + 1) * d])


def test_selecting_units_equals_masking_them(batch):
    from compactlm.models.prune import HeadMask

    model = _encoder("bert")
    with HeadMask(model, [torch.tensor([1.0, 0.0, 1.0, 0.0])] * 4):
        masked = _logits(model, batch)
    pruned = finalize(select_units(_encoder("bert"), [[0, 2]] * 4, None))
    torch.testing.assert_close(_logits(pruned, batch), masked, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("model_type", ["bert", "xlm-roberta"])
def test_half_width_is_smaller_and_reloads(model_type, batch, tmp_path):
    teacher = _encoder(model_type)
    student = prune_width(_encoder(model_type), 0.5)
    assert unit_counts(student) == [(2, 64)] * 4
    assert student.config.num_attention_heads == 2 and student.config.intermediate_size == 64
    assert student.config.model_type == f"compactlm-pruned-{model_type}"
    assert param_count(student) < param_count(teacher)
    out = student(**batch).logits
    assert out.shape == (3, 2) and torch.isfinite(out).all()
    save_pruned(student, None, tmp_path / "s")
    cfg = json.loads((tmp_path / "s" / "config.json").read_text())
    assert cfg["num_attention_heads"] == 2 and cfg["attention_head_size"] == 16
    full_bytes = sum(p.numel() for p in teacher.parameters()) * 4
    assert (tmp_path / "s" / "model.safetensors").stat().st_size < full_bytes
    # compactlm (registered types) ...
    loaded, _ = load_model(str(tmp_path / "s"))
    torch.testing.assert_close(_logits(loaded, batch), _logits(student, batch))
    # ... and plain transformers in a fresh process (remote code saved beside the weights)
    code = (
        "import sys, torch, transformers as T\n"
        f"m = T.AutoModelForSequenceClassification.from_pretrained({str(tmp_path / 's')!r}, trust_remote_code=True)\n"
        "assert 'compactlm' not in sys.modules, 'compactlm was imported'\n"
        f"ids = torch.tensor({batch['input_ids'].tolist()}); am = torch.tensor({batch['attention_mask'].tolist()})\n"
        "print(m(input_ids=ids, attention_mask=am).logits.tolist())\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    torch.testing.assert_close(torch.tensor(json.loads(res.stdout.strip().splitlines()[-1])), _logits(student, batch))


def test_depth_pruning_keeps_evenly_spaced_layers_and_loads_as_plain_bert(batch, tmp_path):
    assert evenly_spaced(6, 3) == [1, 3, 5]
    assert evenly_spaced(12, 6) == [1, 3, 5, 7, 9, 11]
    assert evenly_spaced(4, 4) == [0, 1, 2, 3]
    with pytest.raises(CompactLMError):
        evenly_spaced(4, 5)
    teacher = _encoder("bert")
    student = prune_depth(_encoder("bert"), [1, 3])
    # the student's hidden states are the teacher's up to layer 1, then layer 3 applied to that
    hs = teacher(**batch, output_hidden_states=True).hidden_states
    ss = student(**batch, output_hidden_states=True).hidden_states
    torch.testing.assert_close(ss[0], hs[0])
    assert len(ss) == 3
    save_pruned(student, None, tmp_path / "d")
    plain = T.AutoModelForSequenceClassification.from_pretrained(tmp_path / "d")
    assert type(plain).__name__ == "BertForSequenceClassification" and plain.config.num_hidden_layers == 2
    torch.testing.assert_close(_logits(plain.eval(), batch), _logits(student, batch))


def test_importance_orders_units(batch):
    model = _encoder("bert")
    with torch.no_grad():  # make head 3 and neuron 5 of layer 0 dead: lowest importance
        lin = model.bert.encoder.layer[0].attention.output.dense
        lin.weight[:, 48:64] = 0
        model.bert.encoder.layer[0].output.dense.weight[:, 5] = 0
    heads, neurons = magnitude_importance(model)
    assert heads[0].shape == (4,) and neurons[0].shape == (128,)

    def loss_fn(m, b):
        return m(**b).logits.logsumexp(-1).mean()

    g_heads, g_neurons = gradient_importance(model, [batch, batch], loss_fn)
    assert int(torch.argmin(g_heads[0])) == 3 and g_heads[0][3] == 0
    assert int(torch.argmin(g_neurons[0])) == 5 and g_neurons[0][5] == 0
    assert all(p.grad is None for p in model.parameters())
    pruned = prune_width(model, 0.75, (g_heads, g_neurons))
    assert unit_counts(pruned)[0] == (3, 96)
