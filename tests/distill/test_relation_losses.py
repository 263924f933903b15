"""CKD relation losses: zero for equal relations, invariances, padding, layer matching."""

import pytest
import torch

from compactlm.distill.relation_losses import (
    HiddenProjection,
    layers_mean,
    ltr_angle,
    ltr_dist,
    match_layers,
    projected_hidden_mse,
    select_layers,
    wr_angle,
    wr_dist,
)


def _rotation(c: int, seed: int = 0) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(c, c, generator=torch.Generator().manual_seed(seed)))
    return q


@pytest.fixture
def hidden():
    g = torch.Generator().manual_seed(1)
    h = torch.randn(3, 12, 16, generator=g)
    mask = torch.ones(3, 12, dtype=torch.long)
    mask[1, 8:] = 0
    mask[2, 5:] = 0
    return h, mask


def test_match_layers_uniform_skip():
    assert match_layers(3, 6) == [(0, 0), (1, 2), (2, 4), (3, 6)]
    assert match_layers(6, 12) == [(l, 2 * l) for l in range(7)]
    assert match_layers(4, 4) == [(l, l) for l in range(5)]
    pairs = match_layers(4, 6)  # not a divisor: embeddings and last always matched, monotone
    assert pairs[0] == (0, 0) and pairs[-1] == (4, 6)
    assert [t for _, t in pairs] == sorted({t for _, t in pairs})
    hs = [torch.full((1, 1, 1), float(i)) for i in range(4)]
    ht = [torch.full((1, 1, 1), float(10 + i)) for i in range(7)]
    s, t = select_layers(hs, ht)
    assert [int(x) for x in s] == [0, 1, 2, 3] and [int(x) for x in t] == [10, 12, 14, 16]


@pytest.mark.parametrize("loss", [wr_dist, wr_angle])
def test_wr_zero_for_identical_and_positive_otherwise(loss, hidden):
    h, mask = hidden
    assert loss(h, h.clone(), mask).item() == pytest.approx(0.0, abs=1e-6)
    assert loss(h + torch.randn_like(h), h, mask).item() > 1e-3


@pytest.mark.parametrize("loss", [wr_dist, wr_angle])
def test_wr_invariant_to_rotation_and_scale(loss, hidden):
    h, mask = hidden
    other = 2.5 * h @ _rotation(16)
    assert loss(other, h, mask).item() == pytest.approx(0.0, abs=1e-5)


def test_wr_relations_work_across_widths(hidden):
    h, mask = hidden
    wide = torch.cat([h, torch.zeros(3, 12, 8)], -1) @ _rotation(24)  # same geometry in 24 dims
    assert wr_dist(h, wide, mask).item() == pytest.approx(0.0, abs=1e-5)
    assert wr_angle(h, wide, mask).item() == pytest.approx(0.0, abs=1e-5)


def test_wr_angle_invariant_to_translation_but_dist_not(hidden):
    h, mask = hidden
    shifted = h + 3.0 * torch.randn(16)
    assert wr_angle(shifted, h, mask).item() == pytest.approx(0.0, abs=1e-5)
    assert wr_dist(shifted, h, mask).item() > 1e-3  # cosine to the origin changes under translation


@pytest.mark.parametrize("loss", [wr_dist, wr_angle])
def test_wr_ignores_padding(loss, hidden):
    h, mask = hidden
    s = h + 0.3 * torch.randn_like(h)
    garbage = s.clone()
    garbage[mask == 0] = 1e3 * torch.randn_like(garbage[mask == 0])
    assert loss(garbage, h, mask).item() == pytest.approx(loss(s, h, mask).item(), rel=1e-5)
    # and without the mask the garbage would count
    assert loss(garbage, h, None).item() != pytest.approx(loss(s, h, None).item(), rel=1e-3)


def test_wr_angle_window_limits_the_triples():
    h = torch.randn(1, 10, 8)
    s = h.clone()
    s[0, 9] += 5.0  # moves only the last token
    # vertex 0 with window 2 never sees token 9; with the full window, it does
    near = wr_angle(s[:, :3], h[:, :3], None, window=2)
    assert near.item() == pytest.approx(0.0, abs=1e-6)
    assert wr_angle(s, h, None, window=2).item() > 0
    assert wr_angle(s, h, None, window=2).item() != pytest.approx(wr_angle(s, h, None, window=9).item())


@pytest.fixture
def layers():
    g = torch.Generator().manual_seed(2)
    return [torch.randn(2, 6, 16, generator=g) for _ in range(4)]


@pytest.mark.parametrize("loss", [ltr_dist, ltr_angle])
def test_ltr_zero_invariant_and_masked(loss, layers):
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]])
    assert loss(layers, [x.clone() for x in layers], mask).item() == pytest.approx(0.0, abs=1e-6)
    r = _rotation(16, 3)
    assert loss([1.7 * x @ r for x in layers], layers, mask).item() == pytest.approx(0.0, abs=1e-5)
    noisy = [x + 0.5 * torch.randn_like(x) for x in layers]
    base = loss(noisy, layers, mask).item()
    assert base > 1e-3
    garbage = [x.clone() for x in noisy]
    for x in garbage:
        x[1, 3:] = 100 * torch.randn(3, 16)
    assert loss(garbage, layers, mask).item() == pytest.approx(base, rel=1e-5)


def test_ltr_is_per_token_not_per_layer(layers):
    # rotating each *layer* differently keeps WR but changes LTR (relations across layers of one token)
    rotated = [x @ _rotation(16, i) for i, x in enumerate(layers)]
    assert layers_mean(wr_dist, rotated, layers).item() == pytest.approx(0.0, abs=1e-5)
    assert ltr_dist(rotated, layers).item() > 1e-3


def test_gradients_reach_student_only(hidden):
    h, mask = hidden
    s = (h + 0.1 * torch.randn_like(h)).requires_grad_()
    t = h.clone().requires_grad_()
    (wr_dist(s, t, mask) + wr_angle(s, t, mask) + ltr_angle([s, s * 2 + 1, s ** 2], [t, t, t], mask)).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert t.grad is None
    assert torch.isfinite(s.grad).all()


def test_projected_hidden_mse():
    hs = [torch.randn(2, 5, 8) for _ in range(3)]
    ht = [torch.randn(2, 5, 12) for _ in range(3)]
    proj = HiddenProjection(8, 12)
    loss = projected_hidden_mse(hs, ht, torch.ones(2, 5), proj)
    loss.backward()
    assert proj.proj.weight.grad is not None
    assert isinstance(HiddenProjection(8, 8).proj, torch.nn.Identity)
    assert projected_hidden_mse(hs, [x.clone() for x in hs]).item() == 0.0


def test_wr_angle_matches_the_direct_formula():
    """The Gram-matrix form equals cos∠(r_j − r_i, r_k − r_i) computed triple by triple."""
    g = torch.Generator().manual_seed(5)
    s, t = torch.randn(2, 7, 5, generator=g), torch.randn(2, 7, 6, generator=g)
    mask = torch.tensor([[1] * 7, [1] * 5 + [0] * 2])
    w = 2
    total, count = 0.0, 0
    for b in range(2):
        n = int(mask[b].sum())
        for i in range(n):
            for j in range(max(0, i - w), min(n, i + w + 1)):
                for k in range(max(0, i - w), min(n, i + w + 1)):
                    if i in (j, k):
                        continue
                    cs = torch.nn.functional.cosine_similarity(s[b, j] - s[b, i], s[b, k] - s[b, i], dim=0)
                    ct = torch.nn.functional.cosine_similarity(t[b, j] - t[b, i], t[b, k] - t[b, i], dim=0)
                    total += float((cs - ct) ** 2)
                    count += 1
    assert wr_angle(s, t, mask, window=w).item() == pytest.approx(total / count, rel=1e-4)
