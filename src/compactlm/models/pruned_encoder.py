"""BERT / XLM-R with fewer attention heads than ``hidden_size / head size``: head-pruned students.

Transformers' BERT derives the head size from ``hidden_size / num_attention_heads``, so a student
that keeps 6 of 12 heads of size 32 (hidden size 384) cannot be written as a plain ``BertConfig``.
These classes add one config field, ``attention_head_size``, and build every self-attention with
``num_attention_heads × attention_head_size`` query/key/value outputs; everything else is the
parent class. Depth- and FFN-pruned students need none of this (plain configs with smaller
``num_hidden_layers`` / ``intermediate_size``).

The file imports only ``torch`` and ``transformers``: :func:`compactlm.models.prune.save_pruned`
copies it next to the weights, so plain transformers loads a pruned student with
``AutoModelForSequenceClassification.from_pretrained(path, trust_remote_code=True)``; with compactlm
imported the types are registered (:func:`register`) and no remote code is needed.
"""

from __future__ import annotations

import copy

from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForSequenceClassification,
    BertConfig,
    BertForSequenceClassification,
    BertModel,
    XLMRobertaConfig,
    XLMRobertaForSequenceClassification,
    XLMRobertaModel,
)


class PrunedBertConfig(BertConfig):
    """:class:`BertConfig` plus ``attention_head_size`` (``None``: ``hidden_size / num_attention_heads``)."""

    model_type = "compactlm-pruned-bert"

    def __init__(self, attention_head_size: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.attention_head_size = attention_head_size


class PrunedXLMRobertaConfig(XLMRobertaConfig):
    """:class:`XLMRobertaConfig` plus ``attention_head_size``."""

    model_type = "compactlm-pruned-xlm-roberta"

    def __init__(self, attention_head_size: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.attention_head_size = attention_head_size


def _build(model: nn.Module, parent_init, config, *args, **kwargs) -> None:
    """Run the parent ``__init__`` with a head count it accepts, then narrow every self-attention."""
    heads = config.num_attention_heads
    size = config.attention_head_size or config.hidden_size // heads
    full = copy.deepcopy(config)
    full.num_attention_heads = max(1, config.hidden_size // size)
    full.attention_head_size = None
    parent_init(full, *args, **kwargs)
    config._attn_implementation = full._attn_implementation  # as the parent resolved it
    for m in model.modules():  # every module keeps a reference to the real config
        if getattr(m, "config", None) is full:
            m.config = config
    hidden = config.hidden_size
    for layer in model.base_model.encoder.layer:
        att = layer.attention.self
        att.query, att.key, att.value = (nn.Linear(hidden, heads * size) for _ in range(3))
        att.num_attention_heads, att.attention_head_size, att.all_head_size = heads, size, heads * size
        att.scaling = size**-0.5
        layer.attention.output.dense = nn.Linear(heads * size, hidden)
    model.post_init()


class PrunedBertModel(BertModel):
    config_class = PrunedBertConfig

    def __init__(self, config, *args, **kwargs):
        _build(self, super().__init__, config, *args, **kwargs)


class PrunedBertForSequenceClassification(BertForSequenceClassification):
    config_class = PrunedBertConfig

    def __init__(self, config, *args, **kwargs):
        _build(self, super().__init__, config, *args, **kwargs)


class PrunedXLMRobertaModel(XLMRobertaModel):
    config_class = PrunedXLMRobertaConfig

    def __init__(self, config, *args, **kwargs):
        _build(self, super().__init__, config, *args, **kwargs)


class PrunedXLMRobertaForSequenceClassification(XLMRobertaForSequenceClassification):
    config_class = PrunedXLMRobertaConfig

    def __init__(self, config, *args, **kwargs):
        _build(self, super().__init__, config, *args, **kwargs)


PRUNED = {
    # parent model_type -> (config class, {head: model class})
    "bert": (PrunedBertConfig, {"base": PrunedBertModel, "sequence-classification": PrunedBertForSequenceClassification}),
    "xlm-roberta": (PrunedXLMRobertaConfig, {"base": PrunedXLMRobertaModel,
                                             "sequence-classification": PrunedXLMRobertaForSequenceClassification}),
}
AUTO = {"base": "AutoModel", "sequence-classification": "AutoModelForSequenceClassification"}


def auto_map(config_cls: type) -> dict[str, str]:
    """``config.auto_map`` of a saved pruned model (this file copied beside the weights as ``pruned_encoder.py``)."""
    models = next(m for c, m in PRUNED.values() if c is config_cls)
    out = {"AutoConfig": f"pruned_encoder.{config_cls.__name__}"}
    out.update({AUTO[head]: f"pruned_encoder.{cls.__name__}" for head, cls in models.items()})
    return out


def register() -> None:
    """Register the pruned types with the Auto classes (idempotent; compactlm does it on import)."""
    for config_cls, models in PRUNED.values():
        try:
            AutoConfig.register(config_cls.model_type, config_cls)
        except ValueError:
            continue  # already registered
        AutoModel.register(config_cls, models["base"])
        AutoModelForSequenceClassification.register(config_cls, models["sequence-classification"])
