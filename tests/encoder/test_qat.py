"""Encoder QAT: ternary / uniform quantizers, prepare → convert, a short KD-QAT run lowers the loss,
and SDQ's Quant-Noise schedule (tiny random BERT and XLM-R)."""

import copy

import pytest
import torch

from compactlm.encoder.qat import (
    VARIANTS,
    convert_encoder_qat,
    distill_loop,
    fake_quant_modules,
    kd_forward,
    kd_loss,
    prepare_encoder_qat,
    ptq_encoder,
    resolve_terms,
    set_noise_share,
)
from compactlm.encoder.quantizers import (
    FakeQuantEmbedding,
    FakeQuantLinear,
    fake_quant_weight,
    parse_encoder_scheme,
    to_quantized_weight,
)
from compactlm.encoder.sdq import SDQConfig, quant_noise_share, sdq_terms
from compactlm.errors import CompactLMError
from compactlm.models.tiny import tiny_model
from compactlm.quant.weight_quantizers import twn_ternarize
from compactlm.quant import QuantLinear


def _batch(n=16, t=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, 128, (n, t), generator=g)
    mask = torch.ones(n, t, dtype=torch.long)
    mask[::3, t - 4:] = 0  # some padded rows
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.randint(0, 2, (n,), generator=g)}


# ---- quantizers ----------------------------------------------------------------------------------
def test_ternary_codes_three_levels_per_tensor_and_per_row():
    w = torch.randn(16, 32)
    w[3] *= 10  # a row with a much larger range
    codes, alpha = twn_ternarize(w, "tensor")
    assert set(codes.unique().tolist()) == {-1.0, 0.0, 1.0}
    assert alpha.shape == (16, 1) and torch.all(alpha == alpha[0])
    # TWN: threshold 0.7·mean|W|, alpha = mean of the kept magnitudes
    delta = 0.7 * w.abs().mean()
    kept = w.abs() > delta
    torch.testing.assert_close(alpha[0, 0], w.abs()[kept].mean())
    assert torch.equal(codes != 0, kept)
    codes_r, alpha_r = twn_ternarize(w, "row")
    assert alpha_r.shape == (16, 1) and alpha_r[3, 0] > 5 * alpha_r[0, 0]
    for r in range(16):  # every row: codes on three levels, values {−α_r, 0, α_r}
        assert set((codes_r[r] * alpha_r[r]).unique().tolist()) <= {-alpha_r[r].item(), 0.0, alpha_r[r].item()}


def test_pre_clip_and_straight_through_gradient():
    scheme = parse_encoder_scheme("w2a8")
    w = torch.tensor([[0.1, -0.5, 3.0, -4.0]], requires_grad=True)
    fake_quant_weight(w, scheme, "tensor").sum().backward()
    # identity inside ±2.5, zero outside (clamp)
    assert w.grad.tolist() == [[1.0, 1.0, 0.0, 0.0]]


def test_quantized_weight_on_grid_for_each_scheme():
    w = torch.randn(8, 24)
    for name, bits in (("w2a8", 2), ("w4a8", 4), ("w8a8", 8)):
        scheme = parse_encoder_scheme(name)
        qw = to_quantized_weight(w, scheme, scheme.w_per)
        qw.validate()
        assert qw.bits == bits
        torch.testing.assert_close(qw.dequantize(), fake_quant_weight(w, scheme, scheme.w_per).detach())
    assert parse_encoder_scheme("w4a8").w_per == "row"
    with pytest.raises(CompactLMError, match="--scheme"):
        parse_encoder_scheme("w3a3")


@pytest.mark.parametrize("model_type", ["bert", "xlm-roberta"])
def test_prepare_convert_ternary_model(model_type):
    model = tiny_model(model_type)
    batch = _batch()
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    fp_logits = model(**inputs).logits
    prepare_encoder_qat(model, "w2a8")
    n_linear = sum(isinstance(m, FakeQuantLinear) for m in model.modules())
    assert n_linear == 6 * model.config.num_hidden_layers  # q k v o, intermediate, output
    assert isinstance(model.get_input_embeddings(), FakeQuantEmbedding)
    fq_logits = model(**inputs).logits
    assert not torch.allclose(fq_logits, fp_logits, atol=1e-3)  # ternary changes the function
    convert_encoder_qat(model)
    assert not fake_quant_modules(model)
    qlinears = [m for m in model.modules() if isinstance(m, QuantLinear)]
    assert len(qlinears) == n_linear
    for m in qlinears:
        assert m.bits == 2
        assert set(m.int_weight.unique().tolist()) == {-1, 0, 1}  # exactly three levels
        assert torch.unique(m.weight_scale).numel() == 1  # per tensor
    emb = model.get_input_embeddings().weight
    assert all(torch.unique(row).numel() <= 3 for row in emb)  # ternary per row
    # the converted (integer-grid) model computes what the fake-quantized one did
    torch.testing.assert_close(model(**inputs).logits, fq_logits, atol=1e-4, rtol=1e-4)


def test_ptq_w4a8_is_close_to_fp_and_w2a8_is_not():
    base = tiny_model("bert")
    inputs = {k: v for k, v in _batch().items() if k != "labels"}
    fp = base(**inputs).logits
    err4 = (ptq_encoder(copy.deepcopy(base), "w4a8")(**inputs).logits - fp).abs().mean()
    err2 = (ptq_encoder(copy.deepcopy(base), "w2a8")(**inputs).logits - fp).abs().mean()
    assert err4 < err2


# ---- loss variants and training ------------------------------------------------------------------
def test_kd_loss_zero_for_identical_models_and_variant_errors():
    model = tiny_model("bert")
    batch = {k: v for k, v in _batch().items() if k != "labels"}
    for variant in VARIANTS:
        terms = resolve_terms(variant)
        needs = {n for n, _ in terms}
        with torch.no_grad():
            t = kd_forward(model, batch, needs, detach=True)
            s = kd_forward(model, batch, needs)
        _, parts = kd_loss(terms, s, t, batch["attention_mask"])
        for name, value in parts.items():
            if name == "pred":  # soft CE = entropy of the teacher, not 0
                assert value > 0
            else:
                assert abs(value) < 1e-5, (variant, name, value)
    with pytest.raises(CompactLMError, match="--loss"):
        resolve_terms("attn-mapp")
    with pytest.raises(CompactLMError, match="--loss"):
        resolve_terms((("nope", 1.0),))


@pytest.mark.parametrize(
    "model_type,scheme,variant",
    [("bert", "w2a8", "attn-map"), ("bert", "w2a8", "score-mse"), ("xlm-roberta", "w2a8", "map-out"),
     ("xlm-roberta", "w4a8", "attn-out")],
)
def test_short_qat_lowers_the_loss(model_type, scheme, variant):
    # init range 0.2 (not 0.02): peaked attention maps, so every attention term has something to match
    teacher = tiny_model(model_type, initializer_range=0.2)
    student = prepare_encoder_qat(copy.deepcopy(teacher), scheme)
    history = distill_loop(
        student, teacher, _batch(n=8, t=10), resolve_terms(variant), steps=15, lr=5e-4, batch_size=8, warmup=0.0,
        seed=0, progress=False,
    )
    first, last = history[0]["loss"], sum(h["loss"] for h in history[-3:]) / 3
    assert last < 0.8 * first, (first, last)
    # the teacher is untouched
    ref = tiny_model(model_type, initializer_range=0.2)
    for p_t, (name, p) in zip(teacher.parameters(), ref.named_parameters()):
        assert torch.equal(p_t, p), name


@pytest.mark.parametrize("fail", [False, True])
def test_distill_loop_restores_the_callers_attention_implementation(fail):
    teacher = tiny_model("bert")
    teacher.set_attn_implementation("sdpa")
    teacher.train()
    student = prepare_encoder_qat(copy.deepcopy(teacher), "w2a8")
    on_step = None
    if fail:
        def on_step(model, step, total):  # an interrupted run restores too
            if step == 1:
                raise KeyboardInterrupt
    interrupted = False
    try:
        distill_loop(student, teacher, _batch(n=8, t=10), resolve_terms("attn-map"), steps=2, lr=1e-4,
                     batch_size=8, warmup=0.0, seed=0, on_step=on_step, progress=False)
    except KeyboardInterrupt:
        interrupted = True
    assert interrupted == fail
    assert teacher.config._attn_implementation == "sdpa"
    assert student.config._attn_implementation == "sdpa"
    assert teacher.training


# ---- SDQ -----------------------------------------------------------------------------------------
def test_quant_noise_schedule():
    total = 100
    shares = [quant_noise_share(s, total, p_start=0.2, ramp=0.5) for s in range(total)]
    assert shares[0] == pytest.approx(0.2)
    assert all(a <= b for a, b in zip(shares, shares[1:]))  # rises
    assert shares[25] == pytest.approx(0.6)
    assert all(s == 1.0 for s in shares[50:])  # fully quantized for the second half
    with pytest.raises(CompactLMError, match="--p-start"):
        quant_noise_share(0, 10, p_start=1.5)
    with pytest.raises(CompactLMError, match="--ramp"):
        quant_noise_share(0, 10, ramp=0.0)


def test_quant_noise_quantizes_a_random_share_of_blocks():
    scheme = parse_encoder_scheme("w8a8")
    torch.manual_seed(0)
    w = torch.randn(64, 64)
    full = fake_quant_weight(w, scheme, "row", 1.0)
    assert torch.equal(fake_quant_weight(w, scheme, "row", 0.0), w)  # p = 0: full precision (no clip at W8)
    noisy = fake_quant_weight(w, scheme, "row", 0.5, block=8)
    quantized = (noisy == full) & (noisy != w)
    blocks = quantized.view(64, 8, 8).any(-1).float()  # (rows, blocks) that got quantized
    assert 0.35 < blocks.mean() < 0.65
    # whole blocks: inside a chosen block every entry is the quantized value
    chosen = blocks.bool()[..., None].expand(64, 8, 8).reshape(64, 64)
    assert torch.equal(noisy[chosen], full[chosen]) and torch.equal(noisy[~chosen], w[~chosen])


@pytest.mark.parametrize("model_type", ["xlm-roberta", "bert"])
def test_sdq_short_run_on_tiny_encoder(model_type):
    teacher = tiny_model(model_type)
    config = SDQConfig(p_start=0.1, ramp=0.5)
    student = prepare_encoder_qat(copy.deepcopy(teacher), config.scheme)
    seen = []

    def on_step(model, step, total):
        share = quant_noise_share(step, total, config.p_start, config.ramp)
        set_noise_share(model, share)
        seen.append(share)

    teacher_out = teacher(**{k: v for k, v in _batch().items() if k != "labels"}).logits
    history = distill_loop(
        student, teacher, _batch(), sdq_terms(config), steps=20, lr=1e-3, batch_size=16, warmup=0.0, seed=0,
        on_step=on_step, progress=False,
    )
    assert seen[0] == pytest.approx(0.1) and seen[-1] == 1.0
    assert {"logits_kl", "attn_map"} <= set(history[0])
    assert all(h["loss"] >= 0 for h in history)
    convert_encoder_qat(student)
    qlinears = [m for m in student.modules() if isinstance(m, QuantLinear)]
    assert qlinears and all(m.bits == 8 for m in qlinears)
    out = student(**{k: v for k, v in _batch().items() if k != "labels"}).logits
    assert (out - teacher_out).abs().max() < 0.05  # 8-bit student stays close to the teacher
