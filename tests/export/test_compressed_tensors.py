"""Export to compressed-tensors, reload with transformers, import back into QuantLinear."""

import json
import logging

import pytest
import torch

from compactlm.api import quantize
from compactlm.cli import main
from compactlm.errors import CompactLMError
from compactlm.export import (
    export_compressed_tensors,
    export_model,
    load_compressed_tensors,
    transformers_reload_error,
)
from compactlm.export.compressed_tensors.verify import has_asymmetric_packed_weights
from compactlm.models import load_model, save_quantized
from compactlm.models.checkpoint import quant_linears
from compactlm.models.tiny import tiny_model

# Largest |logit difference| accepted between our fake-quant model and transformers' reload of the
# export (measured: <= 3e-7 on the tiny models, float32 rounding only).
TOL = 1e-5


def _quantized(scheme, token_batch, model_type="llama"):
    model = tiny_model(model_type)
    quantize(model, "rtn", scheme, calib=token_batch)
    return model


@pytest.mark.parametrize("scheme,fmt,loader", [
    ("w4a16", "pack-quantized", "dequantize"),   # asymmetric packed zero points: see transformers_reload_error
    ("w8a8", "int-quantized", "compressed"),     # int8 + static per-tensor asymmetric input scale/zero point
    ("w4a8-sym", "pack-quantized", "compressed"),  # packed int4 + per-token dynamic int8 activations
])
def test_export_reload_logits_match(scheme, fmt, loader, token_batch, tmp_path):
    model = _quantized(scheme, token_batch)
    with torch.no_grad():
        before = model(input_ids=token_batch).logits
    report = export_compressed_tensors(model, None, tmp_path)
    assert report["compression_format"] == fmt and report["vllm_servable"]
    qc = json.loads((tmp_path / "config.json").read_text())["quantization_config"]
    assert qc["quant_method"] == "compressed-tensors" and qc["format"] == fmt
    with torch.no_grad():  # the model is restored unchanged after the export
        torch.testing.assert_close(model(input_ids=token_batch).logits, before, rtol=0, atol=0)
    err = transformers_reload_error(model, tmp_path, token_batch)
    assert err["loader"] == loader
    assert err["max_abs_logit_diff"] < TOL


def test_reload_check_falls_back_only_on_the_known_failure(token_batch, tmp_path, monkeypatch):
    """Another reload failure (here: out of memory) is an error, not a silent dequantize fallback."""
    import transformers as T

    model = _quantized("w8a8", token_batch)
    export_compressed_tensors(model, None, tmp_path)
    real = T.AutoModelForCausalLM.from_pretrained

    def flaky(path, **kw):
        if "quantization_config" not in kw:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(path, **kw)

    monkeypatch.setattr(T.AutoModelForCausalLM, "from_pretrained", flaky)
    with pytest.raises(CompactLMError, match=r"--verify: transformers cannot reload .*compressed loader.*out of memory"):
        transformers_reload_error(model, tmp_path, token_batch)


def test_asymmetric_packed_detection():
    group = {"format": None, "weights": {"num_bits": 4, "symmetric": False}}
    assert has_asymmetric_packed_weights({"format": "pack-quantized", "config_groups": {"g": group}})
    assert not has_asymmetric_packed_weights({"format": "int-quantized", "config_groups": {"g": group}})
    sym = {"format": "pack-quantized", "weights": {"num_bits": 4, "symmetric": True}}
    assert not has_asymmetric_packed_weights({"format": "pack-quantized", "config_groups": {"g": sym}})


@pytest.mark.parametrize("scheme", ["w4a16", "w8a8", "w2a16-g16", "w3a16", "w4a8"])
def test_import_reproduces_codes_exactly(scheme, token_batch, tmp_path):
    model = _quantized(scheme, token_batch)
    export_compressed_tensors(model, None, tmp_path)
    back = load_compressed_tensors(tmp_path)
    ours, theirs = quant_linears(model), quant_linears(back)
    assert ours.keys() == theirs.keys() and len(ours) == 14
    for name, q in ours.items():
        r = theirs[name]
        assert (r.bits, r.group_size, r.symmetric) == (q.bits, q.group_size, q.symmetric)
        assert torch.equal(r.int_weight, q.int_weight), name
        assert torch.equal(r.weight_zero_point, q.weight_zero_point), name
        torch.testing.assert_close(r.weight_scale, q.weight_scale, rtol=0, atol=0)
        if q.input_quantizer is not None:
            a, b = q.input_quantizer, r.input_quantizer
            assert (b.bits, b.granularity, b.static, b.symmetric) == (a.bits, a.granularity, a.static, a.symmetric)
            if a.static:
                assert float(b.scale) == float(a.scale) and float(b.zero_point) == float(a.zero_point)
    with torch.no_grad():
        torch.testing.assert_close(back(input_ids=token_batch).logits, model(input_ids=token_batch).logits,
                                   rtol=0, atol=TOL)


def test_unrepresentable_falls_back_to_dequantized(token_batch, tmp_path, caplog):
    model = _quantized("w4a8-kv8", token_batch)
    with caplog.at_level(logging.WARNING):
        report = export_model(model, None, tmp_path / "out")
    assert report["format"] == "dequantized" and "kv8" in report["reason"]
    assert "dequantized HF checkpoint" in caplog.text
    config = json.loads((tmp_path / "out" / "model" / "config.json").read_text())
    assert "quantization_config" not in config and config["compactlm_quantization"]["modules"]
    restored, _ = load_model(str(tmp_path / "out"))
    ours, theirs = quant_linears(model), quant_linears(restored)
    assert ours.keys() == theirs.keys()
    for name, q in ours.items():
        assert torch.equal(theirs[name].int_weight, q.int_weight)
        assert (theirs[name].output_quantizer is None) == (q.output_quantizer is None)
    gpt2 = _quantized("w4a16", token_batch, "gpt2")
    assert export_model(gpt2, None, tmp_path / "gpt2")["format"] == "dequantized"


def test_bad_requests(token_batch, tmp_path):
    with pytest.raises(CompactLMError, match="--format"):
        export_model(_quantized("w4a16", token_batch), None, tmp_path / "x", format="gguf")
    with pytest.raises(CompactLMError, match="no quantized linear"):
        export_compressed_tensors(tiny_model("llama"), None, tmp_path / "y")
    with pytest.raises(CompactLMError, match="not a compressed-tensors checkpoint"):
        load_compressed_tensors(tmp_path)


def test_cli_export(token_batch, tmp_path, capsys):
    run = tmp_path / "run"
    save_quantized(_quantized("w4a16", token_batch), None, run)
    assert main(["export", "--model", str(run), "--out", str(tmp_path / "ct"), "--verify"]) == 0
    report = json.loads((tmp_path / "ct" / "compactlm_export.json").read_text())
    assert report["verify"]["max_abs_logit_diff"] < TOL
    with pytest.raises(SystemExit) as e:
        main(["export", "--model", str(run), "--out", str(tmp_path / "z"), "--format", "onnx"])
    assert e.value.code == 2 and "--format" in capsys.readouterr().err
