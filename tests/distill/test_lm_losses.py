"""Losses of generative-LM distillation (GKD, DistiLLM skew KLs, PromptKD's prompt objective)."""

import math

import pytest
import torch
import torch.nn.functional as F

from compactlm.distill import losses as L

MASK = torch.tensor([[1, 1, 1, 1, 0, 0], [0, 1, 1, 1, 1, 1]])  # a prompt position and padding masked


def _z(seed, shape=(2, 6, 11)):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


STUDENT_LOSSES = {
    "jsd": lambda s, t, m: L.generalized_jsd(s, t, m, beta=0.1),
    "jsd_half": lambda s, t, m: L.generalized_jsd(s, t, m, beta=0.5),
    "skew_fkl": lambda s, t, m: L.skew_forward_kl(s, t, m, alpha=0.1),
    "skew_rkl": lambda s, t, m: L.skew_reverse_kl(s, t, m, alpha=0.1),
}


@pytest.mark.parametrize("name", STUDENT_LOSSES)
def test_zero_when_equal_positive_otherwise(name):
    fn = STUDENT_LOSSES[name]
    z = _z(0)
    assert fn(z, z.clone(), MASK).abs() < 1e-6
    assert fn(_z(1), z, MASK) > 1e-3


@pytest.mark.parametrize("name", STUDENT_LOSSES)
def test_gradient_step_lowers_loss_and_teacher_gets_none(name):
    fn = STUDENT_LOSSES[name]
    t = _z(0).requires_grad_()
    s = _z(3).requires_grad_()
    loss = fn(s, t, MASK)
    loss.backward()
    assert t.grad is None
    with torch.no_grad():
        assert fn(s - 0.5 * s.grad, t, MASK) < loss


@pytest.mark.parametrize("name", STUDENT_LOSSES)
def test_masked_positions_do_not_count(name):
    fn = STUDENT_LOSSES[name]
    s, t = _z(3), _z(0)
    s2 = s.clone()
    s2[MASK == 0] = 100 * torch.randn_like(s2[MASK == 0])  # garbage where masked
    assert torch.allclose(fn(s, t, MASK), fn(s2, t, MASK))
    s = s.clone().requires_grad_()
    fn(s, t, MASK).backward()
    assert s.grad[MASK == 0].abs().max() == 0


def test_formulas_match_direct_computation():
    s, t = _z(3), _z(0)
    p, q = F.softmax(t, -1), F.softmax(s, -1)
    m = 0.1 * p + 0.9 * q
    jsd = 0.1 * (p * (p / m).log()).sum(-1) + 0.9 * (q * (q / m).log()).sum(-1)
    assert torch.allclose(L.generalized_jsd(s, t, beta=0.1), jsd.mean(), atol=1e-6)
    sf = (p * (p / (0.1 * p + 0.9 * q)).log()).sum(-1).mean()
    assert torch.allclose(L.skew_forward_kl(s, t, alpha=0.1), sf, atol=1e-6)
    sr = (q * (q / (0.9 * p + 0.1 * q)).log()).sum(-1).mean()
    assert torch.allclose(L.skew_reverse_kl(s, t, alpha=0.1), sr, atol=1e-6)
    # skew forward = the authors' cross-entropy form minus the teacher entropy
    ce = -(p * (0.1 * p + 0.9 * q).log()).sum(-1).mean()
    entropy = -(p * p.log()).sum(-1).mean()
    assert torch.allclose(L.skew_forward_kl(s, t, alpha=0.1), ce - entropy, atol=1e-5)


def test_promptkd_prompt_loss_grad_only_to_prompted_teacher_and_sign():
    s, t = _z(3).requires_grad_(), _z(0).requires_grad_()
    tp = _z(5).requires_grad_()
    loss, parts = L.promptkd_prompt_loss(tp, s, t, MASK, lam=0.5)
    assert torch.allclose(loss, parts["prompt_kl"] + 0.5 * parts["prompt_reg"])
    loss.backward()
    assert s.grad is None and t.grad is None and tp.grad[MASK == 1].abs().sum() > 0
    assert tp.grad[MASK == 0].abs().max() == 0
    with torch.no_grad():
        assert L.promptkd_prompt_loss(tp - 0.5 * tp.grad, s, t, MASK, lam=0.5)[0] < loss
    # the first slot is the prompted teacher: KL(p_Tφ || q_S)
    pt, q = F.softmax(tp.detach(), -1), F.softmax(s.detach(), -1)
    direct = L.masked_mean((pt * (pt / q).log()).sum(-1), MASK)
    assert torch.allclose(parts["prompt_kl"], direct, atol=1e-6)
    # zero when the prompted teacher equals both
    z = _z(0)
    assert L.promptkd_prompt_loss(z, z.clone(), z.clone(), MASK, 1.0)[0].abs() < 1e-6


def test_linear_decay_and_errors():
    assert L.linear_decay(0, 10) == 1.0 and math.isclose(L.linear_decay(5, 10), 0.5) and L.linear_decay(12, 10) == 0
    with pytest.raises(ValueError):
        L.generalized_jsd(_z(0), _z(1), beta=1.0)
    with pytest.raises(ValueError):
        L.skew_forward_kl(_z(0), _z(1, (2, 6, 7)))


def test_sft_on_response_tokens_only():
    """SFT = ground-truth CE with the mask on response tokens: prompt tokens do not count."""
    z = _z(3)
    y = torch.randint(0, 11, (2, 6))
    y2 = y.clone()
    y2[MASK == 0] = (y2[MASK == 0] + 1) % 11
    assert torch.allclose(L.gt_cross_entropy(z, y, MASK), L.gt_cross_entropy(z, y2, MASK))
