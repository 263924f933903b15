"""Attention distillation losses on hand-made tensors: zero when equal, padding masked, known values."""

import math

import pytest
import torch

from compactlm.distill.attention_losses import (
    attention_map_kl,
    attention_output_mse,
    attention_score_mse,
    sum_over_layers,
)


def _probs(B=2, H=3, T=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(B, H, T, T, generator=g), -1)


def test_map_kl_zero_when_equal_and_positive_otherwise():
    a, b = _probs(seed=0), _probs(seed=1)
    assert attention_map_kl(a, a).abs() < 1e-7
    assert attention_map_kl(b, a) > 0


def test_map_kl_matches_row_kl_by_hand():
    # one batch, one head, two rows: KL(t || s) per row, averaged over rows
    t = torch.tensor([[[[0.5, 0.5], [0.9, 0.1]]]])
    s = torch.tensor([[[[0.25, 0.75], [0.9, 0.1]]]])
    row0 = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    assert attention_map_kl(s, t).item() == pytest.approx(row0 / 2, rel=1e-6)


def test_map_kl_ignores_padding_rows_and_columns():
    t, s = _probs(seed=0), _probs(seed=1)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    ref = attention_map_kl(s, t, mask)
    s2 = s.clone()
    s2[0, :, 3:, :] = torch.softmax(torch.randn(3, 2, 5), -1)  # padding query rows of batch 0
    s2[0, :, :, 3:] = 1e-3  # padding key columns of batch 0
    assert attention_map_kl(s2, t, mask).item() == pytest.approx(ref.item(), rel=1e-6)
    # and the mask matters: padded rows change the unmasked value
    assert attention_map_kl(s2, t).item() != pytest.approx(attention_map_kl(s, t).item(), rel=1e-6)


def test_map_kl_clamps_zeros():
    t = torch.tensor([[[[1.0, 0.0]]]])
    s = torch.tensor([[[[0.0, 1.0]]]])
    val = attention_map_kl(s, t)
    assert torch.isfinite(val) and val.item() == pytest.approx(-math.log(1e-8), rel=1e-4)


def test_output_mse_masks_padding_tokens():
    g = torch.Generator().manual_seed(0)
    o_t = torch.randn(2, 4, 8, generator=g)
    o_s = o_t.clone()
    o_s[1, 3] += 100.0  # differs only on a padded token
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
    assert attention_output_mse(o_s, o_t, mask).item() == 0.0
    assert attention_output_mse(o_s, o_t).item() == pytest.approx(100.0**2 / 8, rel=1e-5)
    o_s[0, 0, 0] += 2.0  # one real token, one channel: 4 / (7 tokens * 8 channels)
    assert attention_output_mse(o_s, o_t, mask).item() == pytest.approx(4.0 / 56, rel=1e-5)


def test_score_mse_counts_only_real_pairs():
    s_t = torch.zeros(1, 2, 3, 3)
    s_s = s_t.clone()
    mask = torch.tensor([[1, 1, 0]])
    s_s[..., 2, :] = 5.0  # padding query
    s_s[..., :, 2] = 5.0  # padding key
    assert attention_score_mse(s_s, s_t, mask).item() == 0.0
    s_s[0, 0, 0, 1] = 2.0  # one real pair of 2 heads x 4 pairs
    assert attention_score_mse(s_s, s_t, mask).item() == pytest.approx(4.0 / 8)


def test_losses_check_shapes_and_sum_over_layers():
    a, b = _probs(T=5), _probs(T=4)
    with pytest.raises(ValueError):
        attention_map_kl(a, b)
    x, y = _probs(seed=0), _probs(seed=1)
    total = sum_over_layers(attention_map_kl, [x, y], [y, x])
    assert total.item() == pytest.approx((attention_map_kl(x, y) + attention_map_kl(y, x)).item())
    with pytest.raises(ValueError):
        sum_over_layers(attention_map_kl, [x], [x, y])


def test_losses_have_gradients_to_the_student():
    t = _probs(seed=0)
    logits = torch.randn(2, 3, 5, 5, requires_grad=True)
    attention_map_kl(torch.softmax(logits, -1), t).backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0
