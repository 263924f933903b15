"""Tiny random models built from configs, one per supported architecture (tests, smoke runs).

No download: ``AutoConfig`` values shrunk to 2 layers and hidden size 64, weights drawn under a
seed. ``compactlm quantize --model tiny-llama`` works too, so the CLI can be tried offline.
"""

from __future__ import annotations

import torch
import transformers as T
from torch import nn

from compactlm.errors import CompactLMError

VOCAB = 128
_COMMON = dict(vocab_size=VOCAB, num_hidden_layers=2, num_attention_heads=4)

_CONFIGS = {
    "llama": lambda: T.LlamaConfig(hidden_size=64, intermediate_size=128, num_key_value_heads=2, **_COMMON),
    "qwen2": lambda: T.Qwen2Config(hidden_size=64, intermediate_size=128, num_key_value_heads=2, **_COMMON),
    "gemma3_text": lambda: T.Gemma3TextConfig(
        hidden_size=64, intermediate_size=128, num_key_value_heads=2, head_dim=16, sliding_window=16, **_COMMON
    ),
    "gpt2": lambda: T.GPT2Config(
        n_embd=64, n_layer=2, n_head=4, vocab_size=VOCAB, n_positions=256, bos_token_id=0, eos_token_id=0
    ),
    "opt": lambda: T.OPTConfig(
        hidden_size=64, ffn_dim=128, word_embed_proj_dim=64, max_position_embeddings=256,
        bos_token_id=0, eos_token_id=0, pad_token_id=1, **_COMMON,
    ),
    "bert": lambda: T.BertConfig(hidden_size=64, intermediate_size=128, max_position_embeddings=256, **_COMMON),
    "xlm-roberta": lambda: T.XLMRobertaConfig(
        hidden_size=64, intermediate_size=128, max_position_embeddings=256, pad_token_id=1, **_COMMON
    ),
}

DECODER_TYPES = ("llama", "qwen2", "gemma3_text", "gpt2", "opt")
ENCODER_TYPES = ("bert", "xlm-roberta")
TINY_TYPES = DECODER_TYPES + ENCODER_TYPES


def tiny_config(model_type: str, **overrides) -> T.PretrainedConfig:
    if model_type not in _CONFIGS:
        raise CompactLMError(f"tiny model: unknown model_type {model_type!r}; known: {', '.join(_CONFIGS)}")
    config = _CONFIGS[model_type]()
    for k, v in overrides.items():
        setattr(config, k, v)
    return config


def tiny_model(model_type: str, head: str = "auto", num_labels: int = 2, seed: int = 0, **overrides) -> nn.Module:
    """A randomly initialised 2-layer model of ``model_type`` in eval mode, FP32, eager attention.

    Args:
        head: ``"causal-lm"``, ``"sequence-classification"``, ``"base"``, or ``"auto"``
            (causal LM for decoders, sequence classification for encoders).
    """
    config = tiny_config(model_type, **overrides)
    config._attn_implementation = "eager"
    if head == "auto":
        head = "causal-lm" if model_type in DECODER_TYPES else "sequence-classification"
    auto = {
        "causal-lm": T.AutoModelForCausalLM,
        "sequence-classification": T.AutoModelForSequenceClassification,
        "base": T.AutoModel,
    }.get(head)
    if auto is None:
        raise CompactLMError(f"head: expected causal-lm, sequence-classification or base, got {head!r}")
    if head == "sequence-classification":
        config.num_labels = num_labels
    torch.manual_seed(seed)
    model = auto.from_config(config, dtype=torch.float32)
    return model.eval()
