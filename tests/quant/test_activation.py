"""Activation quantizers ignore padding positions when a caller sets the batch's attention mask."""

import pytest
import torch

from compactlm.encoder.finetune import predict_logits
from compactlm.encoder.qat import kd_forward, ptq_encoder
from compactlm.models.tiny import tiny_model
from compactlm.quant.activation import ActQuantizer, padding_mask, real_tokens


def _padded(seed=0):
    """(2, 8, 16) activations, row 1 padded after 5 tokens with huge values, and its mask."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 8, 16, generator=g)
    mask = torch.ones(2, 8, dtype=torch.long)
    mask[1, 5:] = 0
    x[1, 5:] = 1000.0
    return x, mask


def test_dynamic_per_tensor_range_skips_padding():
    q = ActQuantizer(8, "tensor", static=False, symmetric=True)
    x, mask = _padded()
    real = x[mask.bool()]  # (13, 16): the real tokens alone
    with padding_mask(mask):
        out = q(x)
    torch.testing.assert_close(out[mask.bool()], q(real), rtol=0, atol=0)
    assert (out[mask.bool()] - real).abs().max() < 0.02  # 8-bit error of the real range, not of 1000
    assert (q(x)[mask.bool()] - real).abs().max() > 1.0  # without the mask the padding sets the step


def test_static_calibration_skips_padding():
    q = ActQuantizer(8, "tensor", static=True)
    x, mask = _padded()
    q.start_observing()
    with padding_mask(mask):
        q(x)
    q.finish_observing()
    real = x[mask.bool()]
    assert float(q.x_max) == float(real.max()) and float(q.x_min) == float(real.min())


def test_mask_applies_only_to_matching_layouts():
    x, mask = _padded()
    with padding_mask(mask):
        assert real_tokens(x).shape == (13, 16)
        assert real_tokens(x[0]).shape == (8, 16)  # 2-D: no (B, T) layout
        assert real_tokens(torch.randn(3, 8, 16)).shape == (3, 8, 16)  # another batch: untouched
    assert real_tokens(x).shape == x.shape  # the mask ends with the block


@pytest.fixture
def w2a8_bert():
    return ptq_encoder(tiny_model("bert", initializer_range=0.2), "w2a8-tensor-actsym")


def _batch():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(2, 128, (2, 16), generator=g)
    mask = torch.ones(2, 16, dtype=torch.long)
    mask[1, 10:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def test_a_padded_example_scores_as_if_unpadded(w2a8_bert):
    batch = _batch()
    alone = {"input_ids": batch["input_ids"][1:, :10], "attention_mask": batch["attention_mask"][1:, :10]}
    padded = {k: v[1:] for k, v in batch.items()}  # the same example with 6 padding positions
    with torch.no_grad():
        ref = w2a8_bert(**alone).logits
        with padding_mask(padded["attention_mask"]):
            masked = w2a8_bert(**padded).logits
        unmasked = w2a8_bert(**padded).logits
    torch.testing.assert_close(masked, ref, rtol=0, atol=1e-5)
    assert (unmasked - ref).abs().max() > 1e-3  # the padding does reach the quantizers


def test_evaluation_and_distillation_forwards_mask_padding(w2a8_bert):
    batch = _batch()
    with torch.no_grad(), padding_mask(batch["attention_mask"]):
        want = w2a8_bert(**batch).logits
    got = predict_logits(w2a8_bert, {**batch, "labels": torch.zeros(2, dtype=torch.long)})
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    with torch.no_grad():
        torch.testing.assert_close(kd_forward(w2a8_bert, batch, set(), detach=True).logits, want, rtol=0, atol=0)
