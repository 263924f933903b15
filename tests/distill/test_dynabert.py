"""DynaBERT: sub-networks, extraction, rewiring and training steps on tiny BERT and XLM-R."""

import pytest
import torch

from compactlm.distill.dynabert import (
    DynaBERTConfig,
    depth_layers,
    extract,
    loss_terms,
    rewire_from_teacher,
    stage_trainer,
    subnetwork,
)
from compactlm.errors import CompactLMError
from compactlm.models.prune import param_count, unit_counts
from compactlm.models.tiny import tiny_model


def _teacher(model_type):
    return tiny_model(model_type, head="sequence-classification", num_hidden_layers=4)


def _data(n=16, t=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 128, (n, t), generator=g)
    mask = torch.ones_like(ids)
    mask[::3, 8:] = 0
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.randint(0, 2, (n,), generator=g)}


def test_depth_layers():
    assert depth_layers(6, 1.0) == [0, 1, 2, 3, 4, 5]
    assert depth_layers(6, 0.5) == [0, 2, 4]
    assert depth_layers(6, 0.75) == [0, 1, 2, 4, 5]
    assert depth_layers(4, 0.5) == [0, 2]
    with pytest.raises(CompactLMError):
        depth_layers(4, 0.0)


@pytest.mark.parametrize("model_type", ["bert", "xlm-roberta"])
@pytest.mark.parametrize("width,depth", [(1.0, 1.0), (0.5, 1.0), (0.75, 0.5), (0.25, 0.75)])
def test_extracted_subnetwork_equals_masked_network(model_type, width, depth):
    model = rewire_from_teacher(_teacher(model_type), importance="magnitude")
    batch = {k: v for k, v in _data(4).items() if k != "labels"}
    with torch.no_grad(), subnetwork(model, width, depth):
        masked = model(**batch).logits
    full = model(**batch).logits
    sub = extract(model, width, depth)
    with torch.no_grad():
        torch.testing.assert_close(sub(**batch).logits, masked, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(model(**batch).logits, full)  # the context restored the full model
    if (width, depth) != (1.0, 1.0):
        assert param_count(sub) < param_count(model)
        assert not torch.allclose(masked, full)
    assert sub.config.num_hidden_layers == len(depth_layers(4, depth))
    assert len(unit_counts(sub)) == sub.config.num_hidden_layers


def test_rewiring_by_gradient_keeps_the_function():
    teacher = _teacher("bert")
    data = _data()
    model = rewire_from_teacher(teacher, data, "gradient", batches=2, batch_size=8)
    batch = {k: v for k, v in data.items() if k != "labels"}
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, teacher(**batch).logits, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("model_type,loss,stage", [
    ("bert", "dynabert", "width"), ("xlm-roberta", "dynabert", "depth"), ("bert", "ckd", "width"),
    ("xlm-roberta", "dynabert+ckd", "width"),
])
def test_training_steps_lower_the_loss(model_type, loss, stage):
    teacher = _teacher(model_type)
    model = rewire_from_teacher(teacher, importance="magnitude")
    data = _data()
    config = DynaBERTConfig(task="sarcasm", steps=8, lr=2e-3, batch_size=16, warmup=0.0, loss=loss,
                            widths=(1.0, 0.5, 0.25), depths=(1.0, 0.5))
    trainer = stage_trainer(model, teacher, data, config, stage, progress=False)
    history = trainer.train()
    assert history[-1]["loss"] < history[0]["loss"]
    grid = {k for k in history[0] if k.startswith("d")}
    assert grid == ({"d1w1", "d1w0.5", "d1w0.25"} if stage == "width" else
                    {f"d{d}w{w}" for d in ("1", "0.5") for w in ("1", "0.5", "0.25")})
    assert {n for n, _ in loss_terms(loss)} >= ({"soft_ce"} if "dynabert" in loss else {"wr_dist"})
