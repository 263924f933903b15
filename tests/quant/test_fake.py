"""The one fake-quant linear: bit-equality with the numerics it replaced, Quant-Noise, kv8 during
training, conversion to ``QuantLinear``.

``data/fake_quant_golden.safetensors`` holds outputs and gradients of the three fake-quant code
paths as they were before issue 13 merged them (encoder ``FakeQuantLinear`` / ``FakeQuantEmbedding``
with ``EncoderScheme`` w2a8 / w4a8 / w8a8, Quant-Noise p = 1 and 0.5; decoder TWN / PACT+ / LSQ /
min/max quantizers), computed on the seeded inputs of :func:`_inputs`. The new code must reproduce
them bit for bit (``torch.equal``), so the encoder benchmark recipes and decoder QAT compute the same
forward and gradients as before.
"""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from compactlm.errors import CompactLMError
from compactlm.quant import QuantLinear, QuantScheme
from compactlm.quant.fake import (
    FakeQuantLinear,
    QATConfig,
    convert_fake_quant,
    fake_quant_embedding,
    fake_quant_linear,
    quant_noise,
    set_noise_share,
)
from compactlm.quant.weight_quantizers import LSQQuantizer, MinMaxQuantizer, PACTQuantizer, TWNQuantizer

GOLDEN = load_file(Path(__file__).parent / "data" / "fake_quant_golden.safetensors")

# the encoder settings of the benchmark, as one scheme + QAT config each (before: EncoderScheme)
ENCODER = {
    "w2a8": ("w2a8-tensor-actsym", dict(per="tensor", clip=2.5)),
    "w4a8": ("w4a8-sym-tensor-actsym", dict(clip=2.5)),
    "w8a8": ("w8a8-dynamic-actsym", dict(clip=None)),
}


def _inputs():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(16, 64, generator=g) * 1.5
    b = torch.randn(16, generator=g)
    x = torch.randn(2, 5, 64, generator=g)
    r = torch.randn(2, 5, 16, generator=g)
    emb = torch.randn(40, 64, generator=g) * 1.5
    ids = torch.randint(0, 40, (2, 7), generator=g)
    re = torch.randn(2, 7, 64, generator=g)
    rw = torch.randn(16, 64, generator=g)
    return w, b, x, r, emb, ids, re, rw


@pytest.mark.parametrize("name", list(ENCODER))
def test_encoder_fake_quant_bit_equal_to_before(name):
    w, b, x, r, emb, ids, re, _ = _inputs()
    scheme = QuantScheme.parse(ENCODER[name][0])
    for share in (1.0, 0.5):
        config = QATConfig(embeddings=True, noise_share=share, **ENCODER[name][1])
        weight, bias = nn.Parameter(w.clone()), nn.Parameter(b.clone())
        m = fake_quant_linear(weight, bias, scheme, config).train()
        torch.manual_seed(123)
        y = m(x)
        (y * r).sum().backward()
        key = f"enc_{name}_p{share}"
        assert torch.equal(y, GOLDEN[f"{key}_y"])
        assert torch.equal(weight.grad, GOLDEN[f"{key}_gw"]) and torch.equal(bias.grad, GOLDEN[f"{key}_gb"])
        e = nn.Embedding(40, 64)
        with torch.no_grad():
            e.weight.copy_(emb)
        fe = fake_quant_embedding(e, scheme, config).train()
        torch.manual_seed(321)
        ye = fe(ids)
        (ye * re).sum().backward()
        assert torch.equal(ye, GOLDEN[f"{key}_emb_y"]) and torch.equal(e.weight.grad, GOLDEN[f"{key}_emb_g"])
    m.eval()
    assert torch.equal(m(x), GOLDEN[f"enc_{name}_eval_y"])
    q = m.to_quant_linear()
    assert torch.equal(q(x), GOLDEN[f"enc_{name}_conv_y"])
    assert torch.equal(q.int_weight, GOLDEN[f"enc_{name}_conv_codes"])
    assert torch.equal(q.weight_scale, GOLDEN[f"enc_{name}_conv_scale"])
    assert torch.equal(fe.to_embedding().weight, GOLDEN[f"enc_{name}_emb_conv"])


DECODER = {
    "twn_channel": lambda w: TWNQuantizer("channel"),
    "twn_tensor_clip": lambda w: TWNQuantizer("tensor", 2.0),
    "pact2": lambda w: PACTQuantizer(w, 2),
    "pact4_g16": lambda w: PACTQuantizer(w, 4, 16),
    "lsq2": lambda w: LSQQuantizer(w, 2),
    "lsq4_g16": lambda w: LSQQuantizer(w, 4, 16),
    "minmax4_g16": lambda w: MinMaxQuantizer(4, 16),
    "minmax3": lambda w: MinMaxQuantizer(3),
    "minmax8_sym": lambda w: MinMaxQuantizer(8, None, True),
}


@pytest.mark.parametrize("name", list(DECODER))
def test_decoder_weight_quantizers_bit_equal_to_before(name):
    w, *_, rw = _inputs()
    wl = w.clone().requires_grad_()
    q = DECODER[name](w)
    w_hat = q(wl)
    (w_hat * rw).sum().backward()
    assert torch.equal(w_hat, GOLDEN[f"dec_{name}_what"]) and torch.equal(wl.grad, GOLDEN[f"dec_{name}_gw"])
    for pn, p in q.named_parameters():
        assert torch.equal(p.grad, GOLDEN[f"dec_{name}_g_{pn}"]), pn
    qw = q.to_qweight(w)
    for part in ("codes", "scale", "zp"):
        value = {"codes": qw.int_weight, "scale": qw.scale, "zp": qw.zero_point}[part]
        assert torch.equal(value, GOLDEN[f"dec_{name}_{part}"]), part


def test_kv8_output_quantizer_trains_and_converts_to_the_same_function():
    g = torch.Generator().manual_seed(1)
    w, b, x = torch.randn(16, 32, generator=g), torch.randn(16, generator=g), torch.randn(3, 7, 32, generator=g)
    scheme = QuantScheme.parse("w4a8-kv8")
    kv = fake_quant_linear(w, b, scheme, QATConfig(), is_kv=True)
    plain = fake_quant_linear(w, b, scheme, QATConfig(), is_kv=False)
    assert kv.output_quantizer is not None and kv.output_quantizer.bits == 8 and plain.output_quantizer is None
    y_kv, y_plain = kv(x), plain(x)
    # the kv8 grid is what training sees: each token's output lies on 2^8 levels, and differs from no-kv8
    assert not torch.equal(y_kv, y_plain)
    for row in y_kv.reshape(-1, 16):
        step = (row.max() - row.min()) / 255
        codes = (row - row.min()) / step
        torch.testing.assert_close(codes, codes.round(), atol=1e-3, rtol=0)
    y_kv.sum().backward()
    assert kv.weight.grad is not None and kv.weight.grad.abs().sum() > 0
    deployed = kv.to_quant_linear()
    assert isinstance(deployed, QuantLinear) and deployed.output_quantizer is not None
    assert torch.equal(deployed(x), kv(x).detach())


def test_convert_fake_quant_replaces_every_module_and_keeps_the_function():
    model = nn.Sequential(nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 8))
    scheme = QuantScheme.parse("w2a8-tensor-actsym")
    for i in (0, 2):
        lin = model[i]
        model[i] = fake_quant_linear(lin.weight, lin.bias, scheme, QATConfig(per="tensor"))
    x = torch.randn(4, 32)
    before = model(x).detach()
    convert_fake_quant(model)
    assert all(isinstance(model[i], QuantLinear) for i in (0, 2))
    assert set(model[0].int_weight.unique().tolist()) <= {-1, 0, 1}
    assert torch.equal(model(x), before)
    with pytest.raises(CompactLMError, match="no fake-quant"):
        convert_fake_quant(model)


def test_quant_noise_share_quantizes_whole_blocks_and_only_in_training():
    torch.manual_seed(0)
    w = torch.randn(64, 64)
    layer = fake_quant_linear(w, None, QuantScheme.parse("w8a16"), QATConfig(noise_share=0.5, noise_block=8))
    full = layer.weight_quantizer(layer.weight).detach()
    noisy = quant_noise(layer.weight_quantizer, layer.weight, 0.5, 8).detach()
    chosen = (noisy == full) & (noisy != w)
    blocks = chosen.view(64, 8, 8).any(-1)
    assert 0.35 < blocks.float().mean() < 0.65
    mask = blocks[..., None].expand(64, 8, 8).reshape(64, 64)
    torch.testing.assert_close(noisy[mask], full[mask], rtol=0, atol=1e-6)
    assert torch.equal(noisy[~mask], w[~mask])
    layer.eval()
    torch.testing.assert_close(layer.quantized_weight(), full, rtol=0, atol=1e-6)  # eval: every block
    set_noise_share(nn.Sequential(layer), None)
    assert layer.noise_share is None and torch.equal(layer.quantized_weight(), full)


def test_config_errors_name_the_option():
    with pytest.raises(CompactLMError, match="--quantizer"):
        QATConfig(quantizer="flexround")
    with pytest.raises(CompactLMError, match="--per"):
        QATConfig(per="group")
    with pytest.raises(CompactLMError, match="--clip"):
        QATConfig(clip=-1.0)
    with pytest.raises(CompactLMError, match="--clip"):
        fake_quant_linear(torch.randn(4, 8), None, QuantScheme.parse("w2a16"), QATConfig(quantizer="lsq", clip=2.0))
    with pytest.raises(CompactLMError, match="static"):
        fake_quant_linear(torch.randn(4, 8), None, QuantScheme.parse("w8a8"), QATConfig())
    assert isinstance(fake_quant_linear(torch.randn(4, 8), None, QuantScheme.parse("w8a8-dynamic"), QATConfig()),
                      FakeQuantLinear)
