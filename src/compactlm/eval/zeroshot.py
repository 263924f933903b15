"""Zero-shot multiple-choice accuracy by continuation log-likelihood, as lm-eval's HFLM computes it.

For each choice ``c`` of an example, with request ``(context, continuation)``:

``ll(c) = sum_{t in continuation tokens} log p(t | context, previous continuation tokens)``

``acc = [argmax_c ll(c) == gold]`` and ``acc_norm = [argmax_c ll(c) / len(choice_c) == gold]``
(``len`` in characters; Gao et al., lm-evaluation-harness). Tokenization follows HFLM
(lm-eval 0.4.x): trailing whitespace of the context moves to the continuation; the context and
``context + continuation`` are encoded with the tokenizer's default special tokens (so a BOS is
prepended exactly when the tokenizer adds one by default, and not if the text already starts with
it); the continuation tokens are ``whole[len(context_tokens):]``; an empty context becomes the BOS
(else EOS) token; inputs longer than the model's context are truncated from the left.

Requests are sorted by length (longest first), right-padded into batches, and only the
continuation positions go through the LM head (:func:`compactlm.eval.logits.position_logprobs`).
"""

from __future__ import annotations

import logging

import torch
from torch import nn
from tqdm.auto import tqdm

from compactlm.data.tasks import MCExample, load_task
from compactlm.errors import CompactLMError
from compactlm.eval.logits import model_device, position_logprobs

log = logging.getLogger(__name__)

_DEFAULT_MAX_LENGTH = 2048
_TOKENIZER_INFINITY = 1_000_000_000_000_000_019_884_624_838_656


def max_length(model: nn.Module, tokenizer) -> int:
    """Context length: config ``n_positions`` / ``max_position_embeddings`` / ``n_ctx``, else the
    tokenizer's ``model_max_length``, else 2048 (lm-eval's order)."""
    cfg = getattr(model, "config", None)
    cfg = getattr(cfg, "text_config", None) or cfg
    for attr in ("n_positions", "max_position_embeddings", "n_ctx"):
        value = getattr(cfg, attr, None)
        if value is not None:
            return int(value)
    mml = getattr(tokenizer, "model_max_length", None)
    if mml is not None and mml != _TOKENIZER_INFINITY:
        return int(mml)
    return _DEFAULT_MAX_LENGTH


def _prefix_id(tokenizer) -> int:
    return tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id


def _encode(tokenizer, text: str) -> list[int]:
    bos = tokenizer.bos_token if tokenizer.bos_token_id is not None else None
    if bos is not None and text.startswith(bos):
        return tokenizer.encode(text, add_special_tokens=False)
    return tokenizer.encode(text)


def encode_request(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """``(context_ids, continuation_ids)`` of one request, tokenized as HFLM does."""
    if context == "":
        cont = tokenizer.encode(continuation, add_special_tokens=False)
        prefix = _prefix_id(tokenizer)
        return ([prefix], cont) if not cont or cont[0] != prefix else (cont[:1], cont[1:])
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = _encode(tokenizer, context + continuation)
    ctx = _encode(tokenizer, context)
    return ctx, whole[len(ctx):]


def loglikelihoods(
    model: nn.Module,
    tokenizer,
    requests: list[tuple[str, str]],
    batch_size: int = 16,
    desc: str = "loglikelihood",
) -> list[float]:
    """Summed log-probability of each continuation given its context.

    Args:
        model: Causal LM (device read from its parameters).
        tokenizer: Its tokenizer.
        requests: ``(context, continuation)`` pairs.
        batch_size: Sequences per forward pass.

    Returns:
        One float per request, in the order given.
    """
    if tokenizer is None:
        raise CompactLMError("tokenizer: this model has no tokenizer, so text cannot be scored")
    if batch_size < 1:
        raise CompactLMError(f"batch_size: {batch_size} must be positive")
    limit = max_length(model, tokenizer)
    encoded = []
    for ctx, cont in requests:
        c_ids, t_ids = encode_request(tokenizer, ctx, cont)
        if not t_ids:
            raise CompactLMError(f"request: continuation {cont!r} encodes to no tokens after context {ctx[-40:]!r}")
        inp = (c_ids + t_ids)[-(limit + 1):][:-1]
        encoded.append((inp, t_ids[-limit:]))
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i][0]))
    device = model_device(model)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    out = [0.0] * len(encoded)
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        for s in tqdm(range(0, len(order), batch_size), desc=desc, unit="batch", leave=False):
            idx = order[s:s + batch_size]
            T = max(len(encoded[i][0]) for i in idx)
            x = torch.full((len(idx), T), pad, dtype=torch.long)  # (B, T), right padded
            mask = torch.zeros((len(idx), T), dtype=torch.long)
            rows, pos, tgt = [], [], []
            for j, i in enumerate(idx):
                inp, cont = encoded[i]
                n = len(inp)
                x[j, :n] = torch.tensor(inp)
                mask[j, :n] = 1
                rows += [j] * len(cont)
                pos += range(n - len(cont), n)
                tgt += cont
            logp = position_logprobs(model, x.to(device), mask.to(device), torch.tensor(rows, device=device),
                                     torch.tensor(pos, device=device), torch.tensor(tgt, device=device))
            sums = torch.zeros(len(idx), dtype=torch.float64, device=device).index_add_(
                0, torch.tensor(rows, device=device), logp.double())
            for j, i in enumerate(idx):
                out[i] = float(sums[j])
    model.train(was_training)
    return out


def _argmax(values: list[float]) -> int:
    return max(range(len(values)), key=lambda k: (values[k], -k))  # first index among ties


def score_examples(examples: list[MCExample], lls: list[float]) -> dict:
    """``{"acc", "acc_norm", "n", "pred", "pred_norm"}`` from the flat log-likelihoods of all choices."""
    acc = acc_norm = 0
    preds, preds_norm, k = [], [], 0
    for ex in examples:
        ll = lls[k:k + len(ex.requests)]
        k += len(ex.requests)
        p = _argmax(ll)
        pn = _argmax([v / max(len(c), 1) for v, c in zip(ll, ex.choices)])
        acc += p == ex.gold
        acc_norm += pn == ex.gold
        preds.append(p)
        preds_norm.append(pn)
    n = len(examples)
    return {"acc": acc / n, "acc_norm": acc_norm / n, "n": n, "pred": preds, "pred_norm": preds_norm}


def zeroshot(
    model: nn.Module,
    tokenizer,
    tasks: str | list[str],
    limit: int | None = None,
    batch_size: int = 16,
) -> dict:
    """Zero-shot accuracy on multiple-choice tasks.

    Args:
        model: Causal LM.
        tokenizer: Its tokenizer.
        tasks: Task names (see :data:`compactlm.data.TASKS`), a list or a comma-separated string.
        limit: First ``limit`` examples per task (all if ``None``).
        batch_size: Sequences per forward pass.

    Returns:
        ``{"tasks": {name: {"acc", "acc_norm", "n"}}, "avg_acc", "avg_acc_norm"}``.
    """
    names = [t.strip() for t in tasks.split(",")] if isinstance(tasks, str) else list(tasks)
    names = [t for t in names if t]
    if not names:
        raise CompactLMError("tasks: no task given")
    results = {}
    for name in names:
        examples = load_task(name, limit=limit)
        requests = [r for ex in examples for r in ex.requests]
        lls = loglikelihoods(model, tokenizer, requests, batch_size=batch_size, desc=name)
        r = score_examples(examples, lls)
        results[name] = {"acc": r["acc"], "acc_norm": r["acc_norm"], "n": r["n"]}
        log.info("%s: acc %.4f acc_norm %.4f (n=%d)", name, r["acc"], r["acc_norm"], r["n"])
    return {
        "tasks": results,
        "avg_acc": sum(r["acc"] for r in results.values()) / len(results),
        "avg_acc_norm": sum(r["acc_norm"] for r in results.values()) / len(results),
    }
