"""Real low-bit kernels against the dequantize reference, on tiny models of every architecture."""

import pytest
import torch

import compactlm
from compactlm.models import load_model, save_quantized
from compactlm.models.checkpoint import FORMAT_VERSION, QUANT_META
from compactlm.models.specs import iter_block_linears
from compactlm.models.tiny import TINY_TYPES, tiny_model
from compactlm.quant import QuantLinear, QuantizedWeight
from compactlm.quant.kernels import LayerGrid, select_kernel
from compactlm.quant.linear import path_summary, quant_linears, set_backend
from compactlm.quant.primitives import weight_qparams

# scheme -> the kernel its block linears must get (tiny widths 64/128 are multiples of 16 and 32)
KERNEL_OF = {"w4a16": "int4-cpu", "w4a16-g32": "int4-cpu", "w3a16-sym": "int4-cpu", "w2a16-g32": "int4-cpu",
             "w4a8": "int4-cpu", "w8a16": "int8-cpu", "w8a8": "int8-cpu"}
# Stated tolerance (largest logit difference over the largest logit): kernels take bfloat16
# activations (8-bit mantissa) and grouped bfloat16 scales, so logits move by a small fraction of
# their scale against the fp32 dense reference: <= 2% weight-only (measured <= 1.1%); with 8-bit
# activation grids a bf16-rounded input can cross a rounding boundary of the next quantizer, which
# compounds over layers: <= 6% (measured <= 4.5%, Gemma-3 W8A8).
REL_TOL = 0.02
REL_TOL_A8 = 0.06


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def _rel_err(a, b):
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("model_type", TINY_TYPES)
@pytest.mark.parametrize("scheme", list(KERNEL_OF))
def test_kernel_path_matches_reference(model_type, scheme, token_batch):
    model = tiny_model(model_type)
    compactlm.quantize(model, "rtn", scheme, calib=token_batch)
    ref = _logits(model, token_batch)
    paths = set_backend(model, "auto", dense_from_tokens=10**9)  # kernels for every call, even prefill
    assert set(paths.values()) == {KERNEL_OF[scheme]}
    assert all(q.weight_packed is None for q in quant_linears(model).values())  # the kernel holds the only copy
    assert _rel_err(_logits(model, token_batch), ref) < (REL_TOL_A8 if "a8" in scheme else REL_TOL)
    set_backend(model, "reference")  # codes read back out of the kernel packing, exactly
    assert torch.equal(_logits(model, token_batch), ref)


def test_grids_without_kernel_fall_back_and_say_why(token_batch):
    model = tiny_model("llama")
    compactlm.quantize(model, "rtn", "w4a16-g16", calib=token_batch)
    ref = _logits(model, token_batch)
    set_backend(model, "auto")
    summary = path_summary(model)
    assert list(summary) == ["dequant"] and "group size 16" in summary["dequant"]["examples"][0]
    assert torch.allclose(_logits(model, token_batch), ref, atol=1e-5)
    assert all(q._dequant_cache is None for q in quant_linears(model).values())  # no FP copy kept
    why = select_kernel(LayerGrid(4, 64, False, 40, 64), "cpu")[1]
    assert "multiple of 16" in why
    assert select_kernel(LayerGrid(4, 64, False, 64, 64), "cuda")[0] is None


def test_dense_prefill_with_kept_codes_and_kernel_decode_agree():
    w = torch.randn(64, 128)
    s, z = weight_qparams(w, 4, None, False)
    layer = QuantLinear(QuantizedWeight.from_float(w, s, z, 4, None, False))
    x = torch.randn(40, 128)
    ref = layer(x)
    layer.set_backend("auto", keep_codes=True, dense_from_tokens=32)
    assert layer.weight_packed is not None and layer.path == "int4-cpu"
    assert torch.allclose(layer(x), ref, atol=1e-5)  # 40 rows >= 32: dense GEMM on dequantized codes
    assert _rel_err(layer(x[:4]), ref[:4]) < REL_TOL  # 4 rows: the int4 kernel


def test_moving_a_kernel_layer_keeps_its_codes_and_fp32_scales():
    w = torch.randn(32, 64)
    s, z = weight_qparams(w, 3, 32, True)
    qw = QuantizedWeight.from_float(w, s, z, 3, 32, True)
    layer = QuantLinear(qw)
    layer.set_backend("auto")
    layer.to(torch.bfloat16)
    assert layer.weight_scale.dtype == torch.float32
    assert torch.equal(layer.int_weight, qw.int_weight)
    assert layer.path == "auto" and layer(torch.randn(2, 64, dtype=torch.bfloat16)).dtype == torch.bfloat16
    assert layer.path == "int4-cpu"  # repacked lazily on the first call


@pytest.mark.parametrize("model_type", ["llama", "gpt2", "opt"])
def test_save_load_generate_gives_identical_tokens(model_type, token_batch, tmp_path):
    model = tiny_model(model_type)
    compactlm.quantize(model, "rtn", "w4a16-g32", calib=token_batch)
    set_backend(model, "auto")
    prompt = token_batch[:1, :8]
    kwargs = dict(max_new_tokens=12, do_sample=False, pad_token_id=0)
    before = model.generate(prompt, **kwargs)
    save_quantized(model, None, tmp_path / "run", unquantized_dtype=None)
    loaded, _ = load_model(str(tmp_path / "run"))
    assert set(path_summary(loaded)) == {"int4-cpu"}
    assert torch.equal(loaded.generate(prompt, **kwargs), before)


def test_run_dir_holds_packed_codes_and_no_quantized_float_weights(token_batch, tmp_path):
    from safetensors import safe_open

    model = tiny_model("llama")
    compactlm.quantize(model, "rtn", "w4a16", calib=token_batch)
    save_quantized(model, None, tmp_path / "run")
    names = {n for n, _ in iter_block_linears(model)}
    with safe_open(str(tmp_path / "run" / "model" / "model.safetensors"), "pt") as f:
        keys = list(f.keys())
        assert all(f.get_tensor(k).dtype in (torch.bfloat16,) for k in keys)
    assert not any(k.startswith(tuple(names)) for k in keys)
    assert compactlm.io.read_json(tmp_path / "run" / QUANT_META)["format_version"] == FORMAT_VERSION


@pytest.mark.parametrize("model_type", ["llama", "qwen2"])  # qwen2: q/k/v biases lived in model/ in format 1
def test_format_1_run_dir_still_loads(model_type, token_batch, tmp_path):
    """The old layout: full dequantized model/ checkpoint, unpacked int_weight codes."""
    from safetensors.torch import save_file

    from compactlm.models.checkpoint import QUANT_STATE, _act_meta, _float_module
    from compactlm.models.specs import set_module

    model = tiny_model(model_type)
    for m in model.modules():  # random models start with zero biases, which a lost bias would not show
        if isinstance(m, torch.nn.Linear) and m.bias is not None:
            torch.nn.init.normal_(m.bias)
    compactlm.quantize(model, "rtn", "w4a8", calib=token_batch)
    ref = _logits(model, token_batch)
    qls = quant_linears(model)
    state, modules = {}, {}
    for name, q in qls.items():
        qw = q.qweight
        state.update({f"{name}.int_weight": qw.int_weight, f"{name}.scale": qw.scale, f"{name}.zero_point": qw.zero_point})
        modules[name] = {"bits": q.bits, "group_size": q.group_size, "symmetric": q.symmetric,
                         "in_features": q.in_features, "out_features": q.out_features,
                         "input": _act_meta(q.input_quantizer), "output": None}
    for name, q in qls.items():
        set_module(model, name, _float_module(q, False))
    run = tmp_path / "old"
    model.save_pretrained(run / "model")
    save_file(state, str(run / QUANT_STATE))
    compactlm.io.write_json(run / QUANT_META, {"format_version": 1, "modules": modules})
    loaded, _ = load_model(str(run), backend="reference")
    assert torch.allclose(_logits(loaded, token_batch), ref, atol=1e-5)
