"""Hooks capture the right attention tensors for tiny BERT and XLM-R (vs output_attentions / by hand)."""

import pytest
import torch

from compactlm.errors import CompactLMError
from compactlm.models.attention import AttentionCapture
from compactlm.models.specs import get_blocks, get_module
from compactlm.models.tiny import tiny_model


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(2, 128, (2, 9), generator=g)
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[1, 6:] = 0
    return {"input_ids": ids, "attention_mask": mask}


@pytest.mark.parametrize("model_type", ["bert", "xlm-roberta"])
def test_probs_match_output_attentions(model_type, batch):
    model = tiny_model(model_type)
    with AttentionCapture(model, probs=True) as cap:
        out = model(**batch, output_attentions=True)
    assert len(cap.probs) == model.config.num_hidden_layers
    for mine, ref in zip(cap.probs, out.attentions, strict=True):
        assert mine.shape == (2, 4, 9, 9)
        torch.testing.assert_close(mine, ref)
    # padding keys get no attention, rows sum to one
    assert cap.probs[0][1, :, :, 6:].abs().max() < 1e-6
    torch.testing.assert_close(cap.probs[0].sum(-1), torch.ones(2, 4, 9))


@pytest.mark.parametrize("model_type", ["bert", "xlm-roberta"])
def test_scores_rebuild_probs_and_outputs_are_sublayer_outputs(model_type, batch):
    model = tiny_model(model_type)
    block_in = {}
    blocks = get_blocks(model)

    def grab(module, args, kwargs):
        block_in["x"] = args[0] if args else kwargs["hidden_states"]

    h = blocks[1].register_forward_pre_hook(grab, with_kwargs=True)
    with AttentionCapture(model, probs=True, scores=True, outputs=True) as cap:
        model(**batch)
    h.remove()
    additive = (1.0 - batch["attention_mask"][:, None, None, :].float()) * torch.finfo(torch.float32).min
    assert len(cap.scores) == len(cap.probs) == model.config.num_hidden_layers
    for scores, probs in zip(cap.scores, cap.probs, strict=True):
        assert scores.shape == (2, 4, 9, 9)
        torch.testing.assert_close(torch.softmax(scores + additive, -1), probs)
    # layer 1 attention output = LayerNorm(dense(context) + x) by hand, x the block input
    attn = get_module(blocks[1], "attention")
    with torch.no_grad():
        x = block_in["x"]
        heads, d = 4, 16
        q = attn.self.query(x).view(2, 9, heads, d).transpose(1, 2)
        v = attn.self.value(x).view(2, 9, heads, d).transpose(1, 2)
        ctx = (cap.probs[1] @ v).transpose(1, 2).reshape(2, 9, 64)
        ref = attn.output.LayerNorm(attn.output.dense(ctx) + x)
    assert q.shape == (2, heads, 9, d)
    torch.testing.assert_close(cap.outputs[1], ref)
    assert cap.outputs[1].shape == (2, 9, 64)


def test_capture_switches_to_eager_and_restores(batch):
    model = tiny_model("bert")
    model.set_attn_implementation("sdpa")
    with AttentionCapture(model, probs=True) as cap:
        model(**batch)
        assert model.config._attn_implementation == "eager"
    assert model.config._attn_implementation == "sdpa"
    assert len(cap.probs) == 2
    model(**batch)  # hooks are gone: no error, nothing new stored
    cap.clear()
    with pytest.raises(CompactLMError):
        cap.probs


def test_student_capture_keeps_graph_and_teacher_detaches(batch):
    model = tiny_model("bert")
    with AttentionCapture(model, probs=True, outputs=True) as cap:
        model(**batch)
    assert cap.probs[0].requires_grad and cap.outputs[0].requires_grad
    with AttentionCapture(model, outputs=True, detach=True) as cap:
        model(**batch)
    assert not cap.outputs[0].requires_grad


def test_scores_refused_for_decoders():
    with pytest.raises(CompactLMError):
        AttentionCapture(tiny_model("llama"), scores=True)
