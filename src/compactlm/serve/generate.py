"""Prompt -> text with a KV cache (transformers ``generate``), greedy or sampled, chat template aware."""

from __future__ import annotations

import torch
from torch import nn

from compactlm.errors import CompactLMError


def encode_prompt(tokenizer, prompt: str, chat: bool = True) -> torch.Tensor:
    """``[1, T]`` token ids of ``prompt``, wrapped in the tokenizer's chat template when it has one."""
    if chat and getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                            return_tensors="pt", return_dict=True)["input_ids"]
    else:
        ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    return ids


def generate_text(
    model: nn.Module,
    tokenizer,
    prompt: str,
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int = 0,
    chat: bool = True,
    streamer=None,
) -> dict:
    """Generate a continuation of ``prompt``.

    Args:
        temperature: 0 for greedy decoding, else the sampling temperature.
        top_p: Nucleus sampling mass (with ``temperature > 0``).
        chat: Use the tokenizer's chat template when it has one.
        streamer: A transformers streamer that prints tokens as they come.

    Returns:
        ``{"text", "prompt_tokens", "new_tokens"}``.
    """
    if max_new_tokens < 1:
        raise CompactLMError("--max-new-tokens: expected a positive number of tokens")
    if temperature < 0:
        raise CompactLMError("--temperature: expected 0 (greedy) or a positive temperature")
    if not 0 < top_p <= 1:
        raise CompactLMError("--top-p: expected a probability in (0, 1]")
    if tokenizer is None:
        raise CompactLMError("--model: this model has no tokenizer, so it cannot generate text")
    device = next(model.parameters()).device
    ids = encode_prompt(tokenizer, prompt, chat).to(device)
    torch.manual_seed(seed)
    sampling = temperature > 0
    kwargs = dict(max_new_tokens=max_new_tokens, do_sample=sampling,
                  pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id)
    if sampling:
        kwargs.update(temperature=temperature, top_p=top_p, top_k=0)
    else:
        kwargs.update(temperature=None, top_p=None, top_k=None)
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), streamer=streamer, **kwargs)
    new = out[0, ids.shape[1]:]
    return {"text": tokenizer.decode(new, skip_special_tokens=True), "prompt_tokens": int(ids.shape[1]),
            "new_tokens": int(new.numel()), "token_ids": new.tolist()}
