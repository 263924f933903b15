"""The real-inference path: decode attention, generation, head quantization, the speed command."""

import json

import pytest
import torch

import compactlm
from compactlm.data.char_tokenizer import char_tokenizer
from compactlm.errors import CompactLMError
from compactlm.models import load_model, save_quantized
from compactlm.models.tiny import DECODER_TYPES, tiny_model
from compactlm.quant import QuantLinear
from compactlm.serve import generate_text, prepare_for_inference
from compactlm.serve.attention import NAME, use_decode_attention
from compactlm.serve.runtime import choose_device, choose_dtype, quantize_head


@pytest.mark.parametrize("model_type", DECODER_TYPES)
def test_decode_attention_matches_sdpa(model_type):
    """Same greedy tokens and near-identical scores, sliding windows (Gemma-3) and GQA included."""
    model = tiny_model(model_type).eval()
    model.set_attn_implementation("sdpa")
    ids = torch.randint(2, 128, (1, 40), generator=torch.Generator().manual_seed(1))
    kwargs = dict(max_new_tokens=20, do_sample=False, pad_token_id=0, output_scores=True, return_dict_in_generate=True)
    with torch.no_grad():
        ref = model.generate(ids, **kwargs)
        assert use_decode_attention(model) and model.config._attn_implementation == NAME
        new = model.generate(ids, **kwargs)
    assert torch.equal(ref.sequences, new.sequences)
    assert max(float((a - b).abs().max()) for a, b in zip(ref.scores, new.scores)) < 1e-4


def test_generate_text_greedy_and_sampled():
    model, tok = tiny_model("llama").eval(), char_tokenizer()
    a = generate_text(model, tok, "hello", max_new_tokens=8)
    b = generate_text(model, tok, "hello", max_new_tokens=8)
    assert a["token_ids"] == b["token_ids"] and a["new_tokens"] == 8 and a["prompt_tokens"] == 5
    s1 = generate_text(model, tok, "hello", max_new_tokens=8, temperature=1.0, seed=3)
    s2 = generate_text(model, tok, "hello", max_new_tokens=8, temperature=1.0, seed=3)
    s3 = generate_text(model, tok, "hello", max_new_tokens=8, temperature=1.0, seed=4)
    assert s1["token_ids"] == s2["token_ids"] != s3["token_ids"]
    for kwargs, flag in (({"temperature": -1}, "--temperature"), ({"top_p": 0.0}, "--top-p"),
                         ({"max_new_tokens": 0}, "--max-new-tokens")):
        with pytest.raises(CompactLMError, match=flag):
            generate_text(model, tok, "x", **kwargs)


def test_quantize_head_is_an_int8_kernel_close_to_the_float_head(token_batch):
    model = tiny_model("gpt2").eval()  # tied head
    with torch.no_grad():
        ref = model(token_batch).logits
    embedding = model.get_input_embeddings().weight.clone()
    prepare_for_inference(model, torch.float32, torch.device("cpu"), head_int8=True)
    head = model.get_output_embeddings()
    assert isinstance(head, QuantLinear) and head.bits == 8 and head.path == "int8-cpu"
    assert torch.equal(model.get_input_embeddings().weight, embedding)  # the embedding keeps float weights
    with torch.no_grad():
        out = model(token_batch).logits
    assert float((out - ref).abs().max() / ref.abs().max()) < 0.02


def test_device_and_dtype_choice():
    assert choose_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert choose_dtype("auto", torch.device("cpu")) == torch.bfloat16
    with pytest.raises(CompactLMError, match="--dtype"):
        choose_dtype("int3", torch.device("cpu"))
    with pytest.raises(CompactLMError, match="--device"):
        choose_device("tpu:0")
    if not torch.cuda.is_available():
        with pytest.raises(CompactLMError, match="no CUDA"):
            choose_device("cuda")


def test_speed_command_on_a_quantized_run(tmp_path, token_batch, run_cli):
    model = tiny_model("llama")
    compactlm.quantize(model, "rtn", "w4a16-g32", calib=token_batch)
    save_quantized(model, None, tmp_path / "run")
    out = tmp_path / "speed.json"
    code, stdout, err = run_cli(["speed", "--model", str(tmp_path / "run"), "--threads", "1", "--reps", "2",
                                 "--prompt-tokens", "16", "--new-tokens", "4", "--no-progress", "--out", str(out)])
    assert code == 0, err
    result = json.loads(out.read_text())
    assert result["paths"] == {"int4-cpu": 14} and "int4-cpu: 14" in stdout
    assert result["decode_tok_s"] > 0 and result["prefill_tok_s_min"] <= result["prefill_tok_s"] <= result["prefill_tok_s_max"]
    assert result["disk_mb"] > 0 and result["threads"] == 1 and result["reps"] == 2


def test_inference_commands_give_one_line_errors(tmp_path, run_cli):
    code, _, err = run_cli(["speed", "--model", "tiny-bert", "--reps", "1", "--no-progress"])
    assert code == 2 and "causal LMs" in err and "Traceback" not in err
    code, _, err = run_cli(["speed", "--model", "tiny-llama", "--dtype", "int3"])
    assert code == 2 and "--dtype" in err
    code, _, err = run_cli(["generate", "--model", "tiny-llama", "hi"])
    assert code == 2 and "no tokenizer" in err
    code, _, err = run_cli(["speed", "--model", "tiny-llama", "--threads", "0"])
    assert code == 2 and "--threads" in err


def test_eval_backend_flag_reaches_the_run(tmp_path, token_batch, run_cli):
    model = tiny_model("llama")
    compactlm.quantize(model, "rtn", "w4a16", calib=token_batch)
    save_quantized(model, char_tokenizer(), tmp_path / "run", unquantized_dtype=None)
    (tmp_path / "c.txt").write_text("the quick brown fox jumps over the lazy dog. " * 40)
    ppl = {}
    for backend in ("reference", "auto"):
        out = tmp_path / f"{backend}.json"
        code, _, err = run_cli(["eval", "--model", str(tmp_path / "run"), "--ppl", str(tmp_path / "c.txt"),
                                "--max-tokens", "512", "--seq-len", "128", "--backend", backend, "--out", str(out)])
        assert code == 0, err
        ppl[backend] = json.loads(out.read_text())["perplexity"]["ppl"]
    assert ppl["reference"] != ppl["auto"] and abs(ppl["auto"] / ppl["reference"] - 1) < 0.02
