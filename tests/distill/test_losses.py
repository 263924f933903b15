"""Distillation losses on hand-made tensors: zero when equal, gradient sign, masking, TSLD weights."""

import pytest
import torch
import torch.nn.functional as F

from compactlm.distill import losses as L


def _logits(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


MASK = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])


@pytest.mark.parametrize("fn", [L.logit_kd, L.reverse_kl])
@pytest.mark.parametrize("shape,mask", [((2, 6, 11), MASK), ((5, 3), None), ((5, 3), torch.tensor([1, 1, 0, 1, 1]))])
def test_kd_zero_when_equal_and_positive_otherwise(fn, shape, mask):
    z = _logits(*shape)
    assert fn(z, z.clone(), mask, temperature=2.0).abs() < 1e-6
    assert fn(_logits(*shape, seed=1), z, mask, temperature=2.0) > 1e-3


def test_tsld_and_hidden_zero_when_equal():
    z = _logits(2, 6, 11)
    y = torch.randint(0, 11, (2, 6))
    assert L.tsld_loss(z, z.clone(), y, MASK).abs() < 1e-6
    h = _logits(2, 6, 8)
    assert L.hidden_state_mse(h, h.clone(), MASK) == 0
    s = _logits(2, 3, 6, 6)
    assert L.attention_score_mse(s, s.clone(), MASK) == 0


def test_gradient_moves_student_towards_teacher():
    """One gradient step on the student logits lowers every loss (right sign)."""
    t = _logits(2, 6, 11, seed=0)
    y = t.argmax(-1)
    for name, fn in {
        "kd": lambda s: L.logit_kd(s, t, MASK, temperature=2.0),
        "kd_soft_ce": lambda s: L.logit_kd(s, t, MASK, form="soft_ce"),
        "rkl": lambda s: L.reverse_kl(s, t, MASK),
        "tsld": lambda s: L.tsld_loss(s, t, y, MASK),
        "gt": lambda s: L.gt_cross_entropy(s, y, MASK),
        "hidden": lambda s: L.hidden_state_mse(s, t, MASK),
    }.items():
        s = _logits(2, 6, 11, seed=3).requires_grad_()
        loss = fn(s)
        loss.backward()
        with torch.no_grad():
            after = fn(s - 0.1 * s.grad)
        assert after < loss, name
    # the teacher gets no gradient
    tt = t.clone().requires_grad_()
    s = _logits(2, 6, 11, seed=3).requires_grad_()
    L.logit_kd(s, tt).backward()
    assert tt.grad is None


def test_padding_positions_do_not_count():
    t, s = _logits(2, 6, 11), _logits(2, 6, 11, seed=1)
    s2 = s.clone()
    s2[0, 4:] = 100.0  # change only padded positions
    y = torch.randint(0, 11, (2, 6))
    for fn in (lambda a: L.logit_kd(a, t, MASK), lambda a: L.reverse_kl(a, t, MASK),
               lambda a: L.tsld_loss(a, t, y, MASK), lambda a: L.gt_cross_entropy(a, y, MASK),
               lambda a: L.hidden_state_mse(a, t, MASK)):
        assert torch.allclose(fn(s), fn(s2))


def test_kd_matches_direct_formula_with_temperature():
    t, s = _logits(4, 7), _logits(4, 7, seed=1)
    tau = 3.0
    ref = tau**2 * F.kl_div(F.log_softmax(s / tau, -1), F.log_softmax(t / tau, -1), log_target=True,
                            reduction="batchmean")
    assert torch.allclose(L.logit_kd(s, t, temperature=tau), ref, atol=1e-6)


def test_tsld_weights_sum_to_one_and_ignore_padding():
    t = _logits(3, 6, 11)
    y = torch.randint(0, 11, (3, 6))
    y[2, 0] = L.IGNORE_INDEX
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1] * 6, [0] * 6])
    w = L.tsld_token_weights(t, y, mask, tau=10.0)
    assert torch.allclose(w.sum(-1), torch.tensor([1.0, 1.0, 0.0]))
    assert (w[0, 4:] == 0).all() and (w[2] == 0).all()
    # padded logits do not change the valid weights (masked before the softmax)
    t2 = t.clone()
    t2[0, 4:] = -50.0
    assert torch.allclose(L.tsld_token_weights(t2, y, mask), w)
    # harder tokens for the teacher get larger weight; τ → ∞ gives uniform weights
    ce = F.cross_entropy(t[1], y[1], reduction="none")
    assert w[1].argmax() == ce.argmax()
    assert torch.allclose(L.tsld_token_weights(t, y, mask, tau=1e9)[1], torch.full((6,), 1 / 6))


def test_shift_for_causal_lm_masks_padding_and_ignore():
    logits = _logits(2, 5, 7)
    ids = torch.tensor([[3, 4, 5, 6, 1], [3, 4, -100, 6, 1]])
    am = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    z, y, m = L.shift_for_causal_lm(logits, ids, am)
    assert z.shape == (2, 4, 7) and y.tolist()[0] == [4, 5, 6, 1]
    assert m.tolist() == [[True, True, False, False], [True, False, True, True]]


def test_shape_errors():
    with pytest.raises(ValueError, match="shapes differ"):
        L.logit_kd(_logits(2, 3), _logits(2, 4))
    with pytest.raises(ValueError, match="mask"):
        L.logit_kd(_logits(2, 6, 3), _logits(2, 6, 3), torch.ones(2, 5))
