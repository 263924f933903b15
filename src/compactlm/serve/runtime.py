"""Device and dtype choice for inference, and putting a model into its deployed form."""

from __future__ import annotations

import torch
from torch import nn

from compactlm.errors import CompactLMError
from compactlm.quant.linear import path_summary, set_backend

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


def choose_device(device: str | None = None) -> torch.device:
    """``None``/``"auto"``: CUDA when present, else CPU; otherwise the named device, checked."""
    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise CompactLMError(f"--device: {device!r} is not a torch device (e.g. cpu, cuda, cuda:1)") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise CompactLMError(f"--device: {device!r} asked for, but this machine has no CUDA device")
    return dev


def choose_dtype(dtype: str | None, device: torch.device) -> torch.dtype:
    """``"auto"``: bfloat16 on CPU and CUDA (measured faster for prefill and decode on this project's
    AVX2 CPU, and the only dtype the CPU int4/int8 kernels vectorise; bench/results/serve.md)."""
    if dtype in (None, "", "auto"):
        return torch.bfloat16
    if dtype not in DTYPES:
        raise CompactLMError(f"--dtype: expected auto or one of {', '.join(DTYPES)}, got {dtype!r}")
    return DTYPES[dtype]


def prepare_for_inference(model: nn.Module, dtype: torch.dtype, device: torch.device, backend: str = "auto",
                          keep_codes: bool = False, dense_from_tokens: int | None = None,
                          decode_attention: bool = True) -> dict:
    """Cast, move and pack ``model`` for inference in place; returns the per-path layer summary.

    Args:
        decode_attention: On CPU, single-token attention through :mod:`compactlm.serve.attention`
            (grouped matmuls, fp32 softmax) instead of SDPA's flash kernel.
    """
    from compactlm.serve.attention import use_decode_attention

    model.to(device=device, dtype=dtype).eval()
    set_backend(model, backend, keep_codes=keep_codes, dense_from_tokens=dense_from_tokens)
    if decode_attention and device.type == "cpu":
        use_decode_attention(model)
    return path_summary(model)
