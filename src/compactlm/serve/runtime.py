"""Device and dtype choice for inference, and putting a model into its deployed form."""

from __future__ import annotations

import torch
from torch import nn

from compactlm.devices import choose_device  # noqa: F401  (re-exported: compactlm.serve.choose_device)
from compactlm.errors import CompactLMError
from compactlm.quant.linear import QuantLinear, path_summary, set_backend
from compactlm.quant.primitives import weight_qparams
from compactlm.quant.qweight import QuantizedWeight

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


def choose_dtype(dtype: str | None, device: torch.device) -> torch.dtype:
    """``"auto"``: bfloat16 on CPU and CUDA (measured faster for prefill and decode on this project's
    AVX2 CPU, and the only dtype the CPU int4/int8 kernels vectorise; bench/results/serve.md)."""
    if dtype in (None, "", "auto"):
        return torch.bfloat16
    if dtype not in DTYPES:
        raise CompactLMError(f"--dtype: expected auto or one of {', '.join(DTYPES)}, got {dtype!r}")
    return DTYPES[dtype]


def quantize_head(model: nn.Module) -> bool:
    """Round the output head to 8-bit symmetric per-channel codes (RTN), as llama.cpp's quantizer
    does with its output tensor; a deploy-time choice that is measured, not part of any scheme.

    A tied head is untied (the input embedding keeps its float weights). Returns whether a head
    was replaced.
    """
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if not isinstance(head, nn.Linear):
        return False
    w = head.weight.detach().float()
    scale, zero = weight_qparams(w, 8, None, True)
    q = QuantLinear(QuantizedWeight.from_float(w, scale, zero, 8, None, True), head.bias).to(head.weight.device)
    if getattr(model.config, "tie_word_embeddings", False):
        model.config.tie_word_embeddings = False  # nothing may tie the head back to the embedding
    model.set_output_embeddings(q)
    return True


def prepare_for_inference(model: nn.Module, dtype: torch.dtype, device: torch.device, backend: str = "auto",
                          keep_codes: bool = False, dense_from_tokens: int | None = None,
                          decode_attention: bool = True, compile: bool = False, head_int8: bool = False) -> dict:
    """Cast, move and pack ``model`` for inference in place; returns the per-path layer summary.

    Args:
        decode_attention: On CPU, single-token attention through :mod:`compactlm.serve.attention`
            (grouped matmuls, fp32 softmax) instead of SDPA's flash kernel.
        head_int8: Replace the output head by an 8-bit copy (:func:`quantize_head`).
        compile: ``torch.compile`` the forward (dynamic shapes, so prefill and every decode length
            share graphs). Pays off for long generations: on this project's CPU the first call
            compiles for ~2 minutes, then a SmolLM2 W4A16 decode step takes ~24 ms instead of ~31.
    """
    from compactlm.serve.attention import use_decode_attention

    model.to(device=device, dtype=dtype).eval()
    if head_int8 and not quantize_head(model):
        raise CompactLMError("--head-int8: this model has no linear output head to quantize")
    set_backend(model, backend, keep_codes=keep_codes, dense_from_tokens=dense_from_tokens)
    if decode_attention and device.type == "cpu":
        use_decode_attention(model)
    if compile:
        model.forward = torch.compile(model.forward, dynamic=True)
    return path_summary(model)
