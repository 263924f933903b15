"""Speed and memory of a model at batch 1: prefill and decode tokens/s, time to first token,
resident memory, bytes in memory and on disk.

Each repetition prefills a ``prompt_tokens`` prompt (one forward, KV cache on, logits of the last
position only) and then decodes ``new_tokens`` greedy tokens one forward at a time through the
cache; the medians and the spread over repetitions are reported. Token ids are drawn under a seed:
speed does not depend on the text, and decoding never stops early.
"""

from __future__ import annotations

import inspect
import os
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from compactlm.errors import CompactLMError


def resident_mb() -> float:
    """Resident set size of this process in MB."""
    import psutil

    return psutil.Process(os.getpid()).memory_info().rss / 2**20


def model_bytes(model: nn.Module) -> int:
    """Bytes the model's tensors hold: parameters, buffers and kernel packings (tied tensors once)."""
    from compactlm.quant.linear import quant_linears

    seen, total = set(), 0
    for t in list(model.parameters()) + [b for b in model.buffers() if b is not None]:
        key = t.data_ptr()
        if key in seen or t.device.type == "meta":
            continue
        seen.add(key)
        total += t.numel() * t.element_size()
    return total + sum(q.kernel_nbytes() for q in quant_linears(model).values())


def path_bytes(path: str | os.PathLike | None) -> int | None:
    """Bytes of the files under ``path`` (a folder or file), or ``None`` when there is no such path."""
    if path is None:
        return None
    p = Path(path)
    if p.is_file():
        return p.stat().st_size
    if p.is_dir():
        return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
    return None


def _spread(xs: list[float]) -> dict:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs)}


def _forward_kwargs(model: nn.Module) -> tuple[dict, str]:
    """Prefill keyword arguments, and the name of the KV-cache argument (``cache`` from transformers 5.24)."""
    params = inspect.signature(model.forward).parameters
    return ({"logits_to_keep": 1} if "logits_to_keep" in params else {}), ("cache" if "cache" in params else "past_key_values")


def _cache_of(out):
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


@torch.no_grad()
def measure_speed(
    model: nn.Module,
    prompt_tokens: int = 512,
    new_tokens: int = 64,
    reps: int = 5,
    warmup: int = 1,
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """Time prefill and decode of ``model`` at batch 1 (module docstring).

    Returns:
        Flat numbers: ``prefill_tok_s`` / ``decode_tok_s`` / ``ttft_ms`` medians with ``*_min`` and
        ``*_max`` over ``reps``, and the settings.
    """
    from tqdm.auto import tqdm

    if prompt_tokens < 1 or new_tokens < 1 or reps < 1 or warmup < 0:
        raise CompactLMError("speed: --prompt-tokens, --new-tokens and --reps must be positive (--warmup >= 0)")
    config = getattr(model, "config", None)
    vocab = getattr(config, "vocab_size", None)
    if vocab is None or not hasattr(model, "generate"):
        raise CompactLMError("--model: speed is measured on causal LMs (a model with a vocabulary and generate)")
    device = next(model.parameters()).device
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(10, vocab, (1, prompt_tokens), generator=g).to(device)
    extra, cache_arg = _forward_kwargs(model)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    prefill, decode, ttft = [], [], []
    warmup_seconds = 0.0
    for rep in tqdm(range(warmup + reps), desc="speed", unit="rep", disable=not progress):
        sync()
        t0 = time.perf_counter()
        out = model(input_ids=ids, use_cache=True, **extra)
        nxt = out.logits[:, -1:].argmax(-1)
        sync()
        t1 = time.perf_counter()
        cache = _cache_of(out)
        for _ in range(new_tokens):
            out = model(input_ids=nxt, use_cache=True, **{cache_arg: cache})
            cache = _cache_of(out)
            nxt = out.logits[:, -1:].argmax(-1)
        sync()
        t2 = time.perf_counter()
        if rep < warmup:
            warmup_seconds += t2 - t0
        else:
            prefill.append(prompt_tokens / (t1 - t0))
            ttft.append((t1 - t0) * 1e3)
            decode.append(new_tokens / (t2 - t1))
    result = {"prompt_tokens": prompt_tokens, "new_tokens": new_tokens, "reps": reps, "warmup": warmup,
              "warmup_seconds": round(warmup_seconds, 2), "threads": torch.get_num_threads(), "device": str(device)}
    for name, xs in (("prefill_tok_s", prefill), ("decode_tok_s", decode), ("ttft_ms", ttft)):
        s = _spread(xs)
        result[name] = round(s["median"], 3)
        result[f"{name}_min"] = round(s["min"], 3)
        result[f"{name}_max"] = round(s["max"], 3)
    return result
