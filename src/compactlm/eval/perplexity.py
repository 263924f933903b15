"""Perplexity over strided windows of a token stream.

``PPL = exp( (1/N) * sum_i -log p(x_i | x_{<i} within its window) )``

The stream is cut into windows of ``seq_len`` tokens starting every ``stride`` tokens
(``stride = seq_len``: non-overlapping windows, as in the GPTQ evaluation; the first token of each
window is context only). With overlap (``stride < seq_len``) only the tokens not scored by the
previous window are scored, each with up to ``seq_len - 1`` tokens of context (the Hugging Face
"perplexity of fixed-length models" recipe).
"""

from __future__ import annotations

import logging
import math

import torch
from torch import nn
from tqdm.auto import tqdm

from compactlm.data.tokens import eval_tokens
from compactlm.errors import CompactLMError
from compactlm.eval.logits import model_device, position_logprobs

log = logging.getLogger(__name__)


def windows(n_tokens: int, seq_len: int, stride: int) -> list[tuple[int, int, int]]:
    """``(begin, end, n_scored)`` per window: the last ``n_scored`` targets of ``[begin, end)`` are scored.

    Every token after the first is scored exactly once when ``stride == seq_len``; with overlap
    each window scores the tokens past the previous window's end.
    """
    out, prev_end = [], 0
    L = min(seq_len, n_tokens)
    for begin in range(0, max(n_tokens - L, 0) + 1, stride):
        end = begin + L
        n_scored = min(end - prev_end, L - 1)
        if n_scored > 0:
            out.append((begin, end, n_scored))
        prev_end = end
    return out


def perplexity(
    model: nn.Module,
    tokenizer,
    source: str | torch.Tensor = "wiki-eval",
    seq_len: int = 512,
    max_tokens: int = 40960,
    stride: int | None = None,
    batch_size: int = 4,
) -> dict:
    """Perplexity of a causal LM on a corpus.

    Args:
        model: Causal LM; runs on the device of its parameters.
        tokenizer: Its tokenizer (unused when ``source`` is a tensor).
        source: Corpus name / file (see :func:`compactlm.data.load_texts`) or pre-tokenized ids
            ``[N]`` or ``[1, N]``.
        seq_len: Window length in tokens.
        max_tokens: Tokens read from the start of the corpus.
        stride: Window step; ``None`` = ``seq_len`` (non-overlapping).
        batch_size: Windows per forward pass.

    Returns:
        ``{"ppl", "nll" (mean per scored token), "tokens" (scored), "seq_len", "stride", "windows"}``.
    """
    if seq_len < 2:
        raise CompactLMError(f"seq_len: {seq_len} is too small; at least 2 tokens are needed")
    stride = seq_len if stride is None else stride
    if not 1 <= stride <= seq_len:
        raise CompactLMError(f"stride: {stride} must be between 1 and seq_len={seq_len}")
    if batch_size < 1:
        raise CompactLMError(f"batch_size: {batch_size} must be positive")
    if isinstance(source, torch.Tensor):
        ids = source.reshape(-1)[:max_tokens].long()
    else:
        ids = eval_tokens(tokenizer, source, max_tokens).reshape(-1)
    if ids.numel() < 2:
        raise CompactLMError("source: fewer than 2 tokens to evaluate")
    spans = windows(ids.numel(), seq_len, stride)
    device = model_device(model)
    total_nll, total = 0.0, 0
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        for i in tqdm(range(0, len(spans), batch_size), desc="perplexity", unit="batch", leave=False):
            batch = spans[i:i + batch_size]
            x = torch.stack([ids[b:e] for b, e, _ in batch]).to(device)  # (B, L)
            L = x.shape[1]
            rows = torch.cat([torch.full((n,), j) for j, (_, _, n) in enumerate(batch)]).to(device)
            pos = torch.cat([torch.arange(L - 1 - n, L - 1) for _, _, n in batch]).to(device)
            logp = position_logprobs(model, x, None, rows, pos, x[rows, pos + 1])
            total_nll -= logp.double().sum().item()
            total += logp.numel()
    model.train(was_training)
    nll = total_nll / total
    return {"ppl": math.exp(nll), "nll": nll, "tokens": total, "seq_len": min(seq_len, ids.numel()),
            "stride": stride, "windows": len(spans)}
