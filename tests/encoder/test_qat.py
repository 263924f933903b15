"""Encoder QAT: ternary / uniform quantizers, prepare → convert, a short KD-QAT run lowers the loss,
and SDQ's Quant-Noise schedule (tiny random BERT and XLM-R)."""

import copy
import dataclasses

import pytest
import torch

from compactlm.encoder.qat import (
    ENCODER_QAT,
    VARIANTS,
    EncoderQATConfig,
    convert_encoder_qat,
    fake_quant_modules,
    kd_forward,
    kd_loss,
    kd_qat,
    prepare_encoder_qat,
    ptq_encoder,
    resolve_terms,
    set_noise_share,
)
from compactlm.encoder.sdq import SDQConfig, quant_noise_share, sdq_terms
from compactlm.errors import CompactLMError
from compactlm.models.tiny import tiny_model
from compactlm.quant import QuantLinear, QuantScheme
from compactlm.quant.fake import FakeQuantEmbedding, FakeQuantLinear, quant_noise
from compactlm.quant.weight_quantizers import twn_ternarize
from compactlm.train import TrainConfig

W2A8, W4A8, W8A8 = "w2a8-tensor-actsym", "w4a8-sym-tensor-actsym", "w8a8-dynamic-actsym"


def _quantizer(w, scheme, per=None, clip=2.5):
    return dataclasses.replace(ENCODER_QAT, clip=clip).weight_quantizer(w, QuantScheme.parse(scheme), per=per)


def _train(steps, lr, batch_size):
    return TrainConfig(steps=steps, lr=lr, batch_size=batch_size, warmup=0.0, max_grad_norm=0.0)


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
    w = torch.tensor([[0.1, -0.5, 3.0, -4.0]], requires_grad=True)
    q = _quantizer(w, W2A8)
    quant_noise(q, w, 1.0, 8).sum().backward()
    # identity inside ±2.5, zero outside (clamp)
    assert w.grad.tolist() == [[1.0, 1.0, 0.0, 0.0]]


def test_quantized_weight_on_grid_for_each_scheme():
    w = torch.randn(8, 24) * 2
    for name, bits, clip in ((W2A8, 2, 2.5), (W4A8, 4, 2.5), (W8A8, 8, None)):
        q = _quantizer(w, name, clip=clip)
        qw = q.to_qweight(w)
        qw.validate()
        assert qw.bits == bits and qw.symmetric
        torch.testing.assert_close(qw.dequantize(), quant_noise(q, w, 1.0, 8).detach())
        if bits == 2:  # ternary per tensor: one α
            assert torch.unique(qw.scale).numel() == 1
        else:  # uniform symmetric per row: s = max|W_c| / (2^(b-1) - 1)
            w_c = w if clip is None else w.clamp(-clip, clip)
            torch.testing.assert_close(qw.scale, w_c.abs().amax(1, keepdim=True) / (2 ** (bits - 1) - 1))
    with pytest.raises(CompactLMError, match="--scheme"):
        EncoderQATConfig(scheme="w4a99")


@pytest.mark.parametrize("model_type", ["bert", "xlm-roberta"])
def test_prepare_convert_ternary_model(model_type):
    model = tiny_model(model_type)
    batch = _batch()
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    fp_logits = model(**inputs).logits
    prepare_encoder_qat(model, W2A8)
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
    err4 = (ptq_encoder(copy.deepcopy(base), W4A8)(**inputs).logits - fp).abs().mean()
    err2 = (ptq_encoder(copy.deepcopy(base), W2A8)(**inputs).logits - fp).abs().mean()
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
    [("bert", W2A8, "attn-map"), ("bert", W2A8, "score-mse"), ("xlm-roberta", W2A8, "map-out"),
     ("xlm-roberta", W4A8, "attn-out")],
)
def test_short_qat_lowers_the_loss(model_type, scheme, variant):
    # init range 0.2 (not 0.02): peaked attention maps, so every attention term has something to match
    teacher = tiny_model(model_type, initializer_range=0.2)
    student = prepare_encoder_qat(copy.deepcopy(teacher), scheme)
    history = kd_qat(student, teacher, _batch(n=8, t=10), resolve_terms(variant), _train(15, 5e-4, 8),
                     progress=False).history
    first, last = history[0]["loss"], sum(h["loss"] for h in history[-3:]) / 3
    assert last < 0.8 * first, (first, last)
    # the teacher is untouched
    ref = tiny_model(model_type, initializer_range=0.2)
    for p_t, (name, p) in zip(teacher.parameters(), ref.named_parameters()):
        assert torch.equal(p_t, p), name


@pytest.mark.parametrize("fail", [False, True])
def test_kd_qat_restores_the_callers_attention_implementation(fail):
    teacher = tiny_model("bert")
    teacher.set_attn_implementation("sdpa")
    teacher.train()
    student = prepare_encoder_qat(copy.deepcopy(teacher), W2A8)
    on_step = None
    if fail:
        def on_step(model, step, total):  # an interrupted run restores too
            if step == 1:
                raise KeyboardInterrupt
    interrupted = False
    try:
        kd_qat(student, teacher, _batch(n=8, t=10), resolve_terms("attn-map"), _train(2, 1e-4, 8),
               on_step=on_step, progress=False)
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
    torch.manual_seed(0)
    w = torch.randn(64, 64)
    q = _quantizer(w, W8A8, clip=None)
    full = quant_noise(q, w, 1.0, 8)
    assert torch.equal(quant_noise(q, w, 0.0, 8), w)  # p = 0: full precision (no clip at W8)
    noisy = quant_noise(q, w, 0.5, 8)
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
    student = prepare_encoder_qat(copy.deepcopy(teacher), config.scheme, config.qat_config())
    seen = []

    def on_step(model, step, total):
        share = quant_noise_share(step, total, config.p_start, config.ramp)
        set_noise_share(model, share)
        seen.append(share)

    teacher_out = teacher(**{k: v for k, v in _batch().items() if k != "labels"}).logits
    history = kd_qat(student, teacher, _batch(), sdq_terms(config), _train(20, 1e-3, 16), on_step=on_step,
                     progress=False).history
    assert seen[0] == pytest.approx(0.1) and seen[-1] == 1.0
    assert {"logits_kl", "attn_map"} <= set(history[0])
    assert all(h["loss"] >= 0 for h in history)
    convert_encoder_qat(student)
    qlinears = [m for m in student.modules() if isinstance(m, QuantLinear)]
    assert qlinears and all(m.bits == 8 for m in qlinears)
    out = student(**{k: v for k, v in _batch().items() if k != "labels"}).logits
    assert (out - teacher_out).abs().max() < 0.05  # 8-bit student stays close to the teacher


def test_loss_curve_averages_equal_stretches():
    from compactlm.encoder.qat import loss_curve

    history = [{"loss": float(i)} for i in range(20)]
    assert loss_curve(history, points=4) == [2.0, 7.0, 12.0, 17.0]
    assert loss_curve(history[:3], points=10) == [0.0, 1.0, 2.0]
    assert loss_curve([]) == []
