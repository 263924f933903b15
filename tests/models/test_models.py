import pytest
import torch

from compactlm.api import quantize
from compactlm.errors import CompactLMError
from compactlm.models import get_spec, load_model, save_quantized
from compactlm.models.checkpoint import QUANT_STATE
from compactlm.models.specs import block_linears, get_blocks, iter_block_linears, linear_weight
from compactlm.quant import QuantLinear


def _logits(model, ids):
    with torch.no_grad():
        out = model(input_ids=ids)
    return out.logits


def test_spec_lists_every_block_linear_in_execution_order(any_tiny):
    model_type, model = any_tiny
    spec = get_spec(model)
    blocks = get_blocks(model)
    assert len(blocks) == 2
    linears = block_linears(blocks[0], spec)
    assert list(linears) == list(spec.linears)
    for module in linears.values():
        w = linear_weight(module)
        assert w.dim() == 2
    # No block linear is missing from the table: every Linear/Conv1D inside a block is listed.
    listed = {id(m) for _, m in iter_block_linears(model)}
    inside = {id(m) for m in blocks.modules() if type(m).__name__ in ("Linear", "Conv1D")}
    assert listed == inside


def test_conv1d_weight_is_presented_as_out_by_in():
    _, model = "gpt2", load_model("tiny-gpt2")[0]
    c_attn = get_blocks(model)[0].attn.c_attn
    assert linear_weight(c_attn).shape == (3 * 64, 64)


@pytest.mark.parametrize("scheme", ["w4a16", "w8a8", "w4a8-kv8", "w2a16-g32"])
def test_load_quantize_save_reload_gives_identical_outputs(any_tiny, scheme, tmp_path, token_batch):
    model_type, model = any_tiny
    report = quantize(model, "rtn", scheme, calib=token_batch)
    assert report["quantized_weights"] > 0
    assert all(isinstance(m, QuantLinear) for _, m in iter_block_linears(model))
    ref = _logits(model, token_batch)
    # Exact: fp32 unquantized tensors, reference (fake-quant) backend.
    save_quantized(model, None, tmp_path / "run", unquantized_dtype=None)
    reloaded, _ = load_model(str(tmp_path / "run"), attn_implementation="eager", backend="reference")
    assert all(isinstance(m, QuantLinear) for _, m in iter_block_linears(reloaded))
    assert torch.allclose(_logits(reloaded, token_batch), ref, atol=1e-5)
    # Default: bf16 unquantized tensors on disk, real kernels where the grid has one (bf16 inner
    # products). Static 8-bit activation grids amplify the bf16 rounding of the embeddings (up to ~5%
    # of the largest logit on these random models); weight-only schemes stay within 2% (Gemma scales its embeddings by sqrt(d)).
    save_quantized(model, None, tmp_path / "run-bf16")
    fast, _ = load_model(str(tmp_path / "run-bf16"), attn_implementation="eager")
    err = (_logits(fast, token_batch) - ref).abs().max() / ref.abs().max()
    assert err < (0.08 if "a8" in scheme else 0.02), float(err)
    # With dequantized=True the model/ folder alone is a plain HF checkpoint with the dequantized weights.
    save_quantized(model, None, tmp_path / "run-plain", unquantized_dtype=None, dequantized=True)
    plain, _ = load_model(str(tmp_path / "run-plain" / "model"), attn_implementation="eager")
    assert not any(isinstance(m, QuantLinear) for m in plain.modules())
    if scheme == "w4a16":  # no activation quantizers: identical function
        assert torch.allclose(_logits(plain, token_batch), ref, atol=1e-5)
    again, _ = load_model(str(tmp_path / "run-plain"), attn_implementation="eager", backend="reference")
    assert torch.allclose(_logits(again, token_batch), ref, atol=1e-5)


def test_rtn_error_shrinks_with_bits(decoder_tiny, token_batch):
    model_type, model = decoder_tiny
    ref = _logits(model, token_batch)
    errs = []
    for bits in (2, 4, 8):
        m, _ = load_model(f"tiny-{model_type}")
        quantize(m, "rtn", f"w{bits}a16")
        errs.append((_logits(m, token_batch) - ref).pow(2).mean().item())
    assert errs[0] > errs[1] > errs[2]


def test_unknown_model_name_is_a_clear_error():
    with pytest.raises(CompactLMError, match="--model: 'no-such-model' not found"):
        load_model("no-such-model")


def test_unsupported_architecture_lists_supported(tmp_path):
    import transformers as T

    T.MambaConfig(hidden_size=16, num_hidden_layers=1, vocab_size=32).save_pretrained(tmp_path)
    with pytest.raises(CompactLMError, match="not supported; supported model_type values: .*llama"):
        load_model(str(tmp_path))


def test_missing_and_corrupt_files_are_clear_errors(tmp_path, token_batch):
    with pytest.raises(CompactLMError, match="GGUF file .* not found"):
        load_model(str(tmp_path / "missing.gguf"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(CompactLMError, match="without config.json"):
        load_model(str(tmp_path / "empty"))
    model, _ = load_model("tiny-llama")
    quantize(model, "rtn", "w4a16")
    save_quantized(model, None, tmp_path / "run")
    (tmp_path / "run" / QUANT_STATE).write_bytes(b"not a safetensors file")
    with pytest.raises(CompactLMError, match="unreadable"):
        load_model(str(tmp_path / "run"))


def test_unknown_method_and_options_are_clear_errors():
    model, _ = load_model("tiny-llama")
    with pytest.raises(CompactLMError, match="--method: unknown method 'nope'; known: .*rtn"):
        quantize(model, "nope", "w4a16")
    with pytest.raises(CompactLMError, match="method 'rtn' has no option"):
        quantize(model, "rtn", "w4a16", rank=3)
    with pytest.raises(CompactLMError, match="group size 48 does not divide"):
        quantize(model, "rtn", "w4a16-g48")
    with pytest.raises(CompactLMError, match="static activations"):
        quantize(model, "rtn", "w8a8")
