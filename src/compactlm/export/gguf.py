"""``export_gguf``: a GGUF file for llama.cpp that keeps the integer codes our methods chose.

Every ``QuantLinear`` is written as Q4_0, Q4_1 or Q8_0 blocks built from its own codes, scales and
zero points (:mod:`compactlm.export.gguf_blocks`; never re-rounded from float). Embeddings, the
output head and other unquantized matrices are F16 or F32; norms and biases are always F32 (as
llama.cpp's converter writes them). Tensor names and the Q/K row order follow llama.cpp's
``convert_hf_to_gguf.py``: for ``llama`` the rows of ``q_proj``/``k_proj`` (codes, scales, zero
points and biases alike) are reordered from HF's rotate-half layout into llama.cpp's interleaved
one; ``qwen2`` (NEOX rope in llama.cpp) keeps HF's order.

See docs/gguf.md for the mappings, the fp16 rounding of block scales and what is verified.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from compactlm.errors import CompactLMError
from compactlm.export.gguf_blocks import (
    QTYPES, Grid, GridMismatch, decode, encode_exact, encode_lossy, ggml_type, llama_qk_row_order, max_abs_error,
)

ARCHS = ("llama", "qwen2")
UNQUANTIZED_TYPES = ("f16", "f32")
PERMUTE_QK = {"llama": True, "qwen2": False}


def _gguf():
    import gguf

    return gguf


def _err(msg: str) -> CompactLMError:
    return CompactLMError("gguf export: " + " ".join(str(msg).split()))


# ---- architecture and metadata --------------------------------------------------------------------
def _rope(config) -> tuple[float, str, dict]:
    """``(theta, rope_type, parameters)`` from a transformers 4.x or 5.x config."""
    params = dict(getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {})
    theta = params.get("rope_theta", getattr(config, "rope_theta", 10000.0))
    rtype = params.get("rope_type", params.get("type")) or "default"
    return float(theta), str(rtype), params


def check_architecture(config) -> str:
    """The GGUF architecture name for ``config``, or a one-line error saying why not."""
    arch = getattr(config, "model_type", None)
    if arch not in ARCHS:
        raise _err(f"architecture {arch!r} is not supported; supported: {', '.join(ARCHS)}")
    if getattr(config, "hidden_act", "silu") != "silu":
        raise _err(f"{arch} with hidden_act={config.hidden_act!r}: llama.cpp's {arch} graph uses SiLU")
    if getattr(config, "mlp_bias", False):
        raise _err(f"{arch} with mlp_bias=True is not supported (llama.cpp's {arch} FFN has no biases)")
    if getattr(config, "use_sliding_window", False):
        raise _err(f"{arch} with use_sliding_window=True is not supported")
    _, rtype, _ = _rope(config)
    if rtype not in ("default", "linear"):
        raise _err(f"{arch} with rope_type {rtype!r} is not supported (default and linear only)")
    return arch


def _head_dims(config) -> tuple[int, int, int]:
    n_head = config.num_attention_heads
    n_kv = getattr(config, "num_key_value_heads", None) or n_head
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // n_head
    return n_head, n_kv, head_dim


def _write_hparams(w, config, qtype: str, name: str | None) -> None:
    gguf = _gguf()
    n_head, n_kv, head_dim = _head_dims(config)
    theta, rtype, params = _rope(config)
    w.add_type(gguf.GGUFType.MODEL)
    w.add_name(name or Path(getattr(config, "_name_or_path", "") or "").name or f"compactlm-{config.model_type}")
    w.add_block_count(config.num_hidden_layers)
    w.add_context_length(config.max_position_embeddings)
    w.add_embedding_length(config.hidden_size)
    w.add_feed_forward_length(config.intermediate_size)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_rope_freq_base(theta)
    w.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    w.add_vocab_size(config.vocab_size)
    w.add_rope_dimension_count(head_dim)
    if head_dim != config.hidden_size // n_head:
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
    if rtype == "linear":
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(float(params["factor"]))
    w.add_file_type({"q4_0": gguf.LlamaFileType.MOSTLY_Q4_0, "q4_1": gguf.LlamaFileType.MOSTLY_Q4_1,
                     "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[qtype])
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)


# ---- tokenizer ---------------------------------------------------------------------------------


def detect_pre_tokenizer(backend: dict, arch: str) -> str:
    """llama.cpp's ``tokenizer.ggml.pre`` name for a HF byte-level BPE pre-tokenizer (by structure).

    ``ByteLevel`` alone is ``gpt-2``; ``Digits(individual)`` + ``ByteLevel`` is ``smollm``; a
    ``Split`` + ``ByteLevel`` is ``llama-bpe`` when
    its regex groups digits by 1-3 (Llama 3), ``qwen2`` for a qwen2 model splitting single digits. Anything else raises: pass
    ``tokenizer_pre`` explicitly (llama.cpp's names are in its ``llama-vocab.cpp``).
    """
    pre = backend.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    kinds = [s.get("type") for s in steps]
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        return "gpt-2"
    if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits"):
        return "smollm"
    if kinds == ["Split", "ByteLevel"]:
        regex = (steps[0].get("pattern") or {}).get("Regex") or ""
        if "\\p{N}{1,3}" in regex:
            return "llama-bpe"
        if arch == "qwen2" and "\\p{N}|" in regex:
            return "qwen2"
    raise _err(f"cannot tell llama.cpp's pre-tokenizer for {arch} from the HF pre_tokenizer {kinds}; "
               "pass tokenizer_pre= (--tokenizer-pre), e.g. gpt-2, smollm, qwen2, llama-bpe")


def _look_special(token: str) -> bool:
    return (token.startswith("<|") and token.endswith("|>")) or token in ("<pad>", "<mask>")


def _write_tokenizer(w, tokenizer, config, tokenizer_pre: str | None) -> dict:
    """gpt2-style BPE vocabulary, merges, special ids and chat template (as llama.cpp's converter)."""
    gguf = _gguf()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise _err(f"tokenizer {type(tokenizer).__name__} has no fast (tokenizers) backend; gpt2 BPE needs one")
    bj = json.loads(backend.to_str())
    model_type = (bj.get("model") or {}).get("type")
    if model_type != "BPE" or not bj.get("model", {}).get("merges"):
        raise _err(f"tokenizer model {model_type!r} is not a byte-level BPE; only gpt2-style BPE is written")
    arch = config.model_type
    pre = tokenizer_pre or detect_pre_tokenizer(bj, arch)
    vocab = tokenizer.get_vocab()
    n_vocab = config.vocab_size
    if vocab and max(vocab.values()) >= n_vocab:
        raise _err(f"tokenizer has ids up to {max(vocab.values())} but the model's vocab_size is {n_vocab}")
    reverse = {i: t for t, i in vocab.items()}
    added = tokenizer.get_added_vocab()
    decoder = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    tokens, types = [], []
    for i in range(n_vocab):
        if i not in reverse:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
            continue
        tok = reverse[i]
        if tok in added:
            special = getattr(decoder.get(i), "special", False)
            if special or _look_special(tok):
                types.append(gguf.TokenType.CONTROL)
            else:
                tok = tok.replace("\u2581", " ")
                types.append(gguf.TokenType.USER_DEFINED)
        else:
            types.append(gguf.TokenType.NORMAL)
        tokens.append(tok)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(types)
    with tempfile.TemporaryDirectory() as d:  # gguf's own reader of merges / special ids / template files
        tokenizer.save_pretrained(d)
        (Path(d) / "config.json").write_text(config.to_json_string())
        special = gguf.SpecialVocab(d, load_merges=True, n_vocab=len(tokens))
    template = getattr(tokenizer, "chat_template", None)
    if special.chat_template is None and isinstance(template, str):
        special.chat_template = template
    special.add_to_gguf(w, quiet=True)
    if "bos" not in special.add_special_token and isinstance(getattr(tokenizer, "add_bos_token", None), bool):
        w.add_add_bos_token(tokenizer.add_bos_token)
    return {"model": "gpt2", "pre": pre, "tokens": len(tokens), "merges": len(special.merges),
            "special_token_ids": dict(special.special_token_ids), "chat_template": special.chat_template is not None}


# ---- tensors -----------------------------------------------------------------------------------
def _qk_heads(hf_name: str, config) -> int | None:
    """Head count whose row order llama.cpp permutes for this tensor (``None``: not permuted)."""
    if not PERMUTE_QK[config.model_type]:
        return None
    n_head, n_kv, _ = _head_dims(config)
    module = hf_name.rsplit(".", 1)[0]
    if module.endswith("self_attn.q_proj"):
        return n_head
    if module.endswith("self_attn.k_proj"):
        return n_kv
    return None


def _float_array(t: torch.Tensor, ftype: str) -> np.ndarray:
    a = t.detach().cpu().float().numpy()
    if a.ndim <= 1 or ftype == "f32":
        return np.ascontiguousarray(a, dtype=np.float32)
    if np.abs(a).max(initial=0.0) > np.finfo(np.float16).max:
        raise _err("a tensor exceeds the fp16 range; pass unquantized_type='f32' (--unquantized-type f32)")
    return np.ascontiguousarray(a, dtype=np.float16)


def check_arguments(qtype: str, unquantized_type: str, out_path, overwrite: bool) -> None:
    """Refuse an unknown block type, unquantized type, or an existing output file (one line each)."""
    if qtype not in QTYPES:
        raise _err(f"--type: unknown GGUF type {qtype!r}; choose one of {', '.join(QTYPES)}")
    if unquantized_type not in UNQUANTIZED_TYPES:
        raise _err(f"--unquantized-type: expected f16 or f32, got {unquantized_type!r}")
    out = Path(out_path)
    if out.is_dir():
        raise _err(f"--out: {out} is a folder; give the .gguf file to write")
    if out.exists() and not overwrite:
        raise _err(f"--out: {out} exists; pass --overwrite to replace it")


def export_gguf(
    model: nn.Module,
    tokenizer,
    out_path: str | os.PathLike,
    qtype: str = "q4_0",
    lossy: bool = False,
    unquantized_type: str = "f16",
    tokenizer_pre: str | None = None,
    overwrite: bool = False,
    name: str | None = None,
) -> dict:
    """Write ``model`` as a llama.cpp GGUF file whose quantized tensors hold our own codes.

    Args:
        model: A llama / qwen2 causal LM whose quantized linears are ``QuantLinear``.
        tokenizer: HF fast tokenizer (gpt2-style byte-level BPE), or ``None`` (the file then has
            ``tokenizer.ggml.model = "none"``; llama.cpp needs a vocabulary to tokenize text).
        out_path: The ``.gguf`` file to write (atomically).
        qtype: ``"q4_0"``, ``"q4_1"`` or ``"q8_0"``: the block type of every quantized linear.
        lossy: Re-round grids that have no exact encoding in ``qtype`` from their dequantized weight
            (gguf's reference quantizer) instead of refusing; the report records the error added.
        unquantized_type: ``"f16"`` or ``"f32"`` for unquantized matrices (embeddings, output head).
        tokenizer_pre: llama.cpp pre-tokenizer name, overriding the detection from the tokenizer.
        overwrite: Replace an existing ``out_path``.
        name: ``general.name`` (default: the last part of the model's ``_name_or_path``).

    Returns:
        A report: per-tensor encodings and max abs weight errors against our grid (fp16 rounding
        of block scales for exact tensors, re-rounding for lossy ones), tokenizer summary, notes.

    Raises:
        CompactLMError: unsupported architecture, type or grid (naming the layer and the reason).
    """
    gguf = _gguf()
    from compactlm.quant.linear import QuantLinear

    check_arguments(qtype, unquantized_type, out_path, overwrite)
    config = model.config
    arch = check_architecture(config)
    out = Path(out_path)
    qlinears = {name: m for name, m in model.named_modules() if isinstance(m, QuantLinear)}
    if not qlinears:
        raise _err("the model has no QuantLinear layers; quantize it first (compactlm quantize)")
    tmap = gguf.get_tensor_name_map(gguf.MODEL_ARCH.QWEN2 if arch == "qwen2" else gguf.MODEL_ARCH.LLAMA,
                                    config.num_hidden_layers)

    def gguf_name(hf_name: str) -> str:
        new = tmap.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if new is None:
            raise _err(f"tensor {hf_name} has no llama.cpp {arch} name")
        return new

    report_tensors: dict[str, dict] = {}
    notes: list[str] = []
    if any(m.input_quantizer is not None for m in qlinears.values()):
        notes.append("input-activation quantizers are not exported: llama.cpp quantizes activations to its own "
                     "8-bit blocks at run time")
    if any(m.output_quantizer is not None for m in qlinears.values()):
        notes.append("k/v output quantizers are not exported (llama.cpp's KV cache type is a run-time option)")

    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=out.name + ".", suffix=".tmp", dir=out.parent)
    os.close(fd)
    try:
        w = gguf.GGUFWriter(tmp_name, arch=gguf.MODEL_ARCH_NAMES[
            gguf.MODEL_ARCH.QWEN2 if arch == "qwen2" else gguf.MODEL_ARCH.LLAMA])
        _write_hparams(w, config, qtype, name)
        tok_report = _write_tokenizer(w, tokenizer, config, tokenizer_pre) if tokenizer is not None else None
        if tokenizer is None:
            w.add_tokenizer_model("none")
            notes.append("no tokenizer: tokenizer.ggml.model is 'none'; llama.cpp needs a vocabulary to "
                         "tokenize text (pass the HF tokenizer)")

        for name, m in qlinears.items():
            hf = name + ".weight"
            grid = Grid.from_qweight(m.qweight)
            heads = _qk_heads(hf, config)
            order = None
            if heads is not None:
                order = llama_qk_row_order(grid.codes.shape[0], heads)
                grid = grid.rows_taken(order)
            reference = grid.dequantize()
            try:
                blocks, mode, reason = encode_exact(grid, qtype), "exact", None
            except GridMismatch as e:
                if not lossy:
                    raise _err(f"layer {name}: {e}; pass lossy=True (--lossy) to re-round it from the "
                               "dequantized weight") from None
                try:
                    blocks, mode, reason = encode_lossy(reference, qtype), "re-rounded", str(e)
                except GridMismatch as e2:
                    raise _err(f"layer {name}: {e2}") from None
            w.add_tensor(gguf_name(hf), blocks, raw_dtype=ggml_type(qtype))
            report_tensors[gguf_name(hf)] = {
                "source": name, "type": qtype.upper(), "mode": mode, "reason": reason,
                "grid": f"w{grid.bits} g{grid.group_size} {'sym' if grid.symmetric else 'asym'}",
                "qk_permuted": order is not None, "max_abs_error": max_abs_error(blocks, qtype, reference),
                "max_error_in_steps": max_abs_error(blocks, qtype, reference, step=grid.dequantize_step()),
            }
            if m.bias is not None:
                b = m.bias.detach().cpu().float().numpy()
                b = b[order] if order is not None else b
                w.add_tensor(gguf_name(name + ".bias"), np.ascontiguousarray(b, dtype=np.float32))
                report_tensors[gguf_name(name + ".bias")] = {"source": name + ".bias", "type": "F32"}

        qnames = {n + "." + s for n in qlinears for s in ("weight", "bias")}
        for pname, p in model.named_parameters():  # tied weights are listed once (llama.cpp reuses token_embd)
            if pname in qnames:
                continue
            arr = _float_array(p, unquantized_type)
            heads = _qk_heads(pname, config)
            if heads is not None:
                arr = np.ascontiguousarray(arr[llama_qk_row_order(arr.shape[0], heads)])
            new = gguf_name(pname)
            w.add_tensor(new, arr)
            report_tensors[new] = {"source": pname, "type": "F16" if arr.dtype == np.float16 else "F32"}
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        os.replace(tmp_name, out)
    finally:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)

    quant = [t for t in report_tensors.values() if "mode" in t]
    exact = [t["max_abs_error"] for t in quant if t["mode"] == "exact"]
    rerounded = {k: t for k, t in report_tensors.items() if t.get("mode") == "re-rounded"}
    return {
        "format": "gguf", "path": str(out), "architecture": arch, "type": qtype.upper(), "lossy": lossy,
        "unquantized_type": unquantized_type.upper(), "file_bytes": out.stat().st_size,
        "tensors": len(report_tensors), "quantized_tensors": len(quant), "exact_tensors": len(exact),
        "re_rounded_tensors": sorted(rerounded),
        "max_abs_weight_error_fp16_scales": max(exact, default=0.0),
        "max_error_in_steps_fp16_scales": max((t["max_error_in_steps"] for t in quant if t["mode"] == "exact"),
                                              default=0.0),
        "max_abs_weight_error_re_rounded": max((t["max_abs_error"] for t in rerounded.values()), default=0.0),
        "tokenizer": tok_report, "notes": notes, "tensor_report": report_tensors,
    }


def read_gguf_weight(path: str | os.PathLike, name: str) -> np.ndarray:
    """A tensor of a GGUF file dequantized by gguf's own reader, as ``[rows, cols]`` float32."""
    gguf = _gguf()
    reader = gguf.GGUFReader(str(path))
    for t in reader.tensors:
        if t.name == name:
            return np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32)
    raise KeyError(name)


__all__ = ["ARCHS", "QTYPES", "check_architecture", "decode", "detect_pre_tokenizer", "export_gguf",
           "read_gguf_weight"]
