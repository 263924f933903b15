"""Architecture knowledge as data: one :class:`ArchSpec` per Hugging Face ``model_type``.

This is the only module that knows how a supported architecture is laid out. Everything else
asks it: which module list holds the transformer blocks, which linears a block runs and in which
order (grouped by the input they share), which norm feeds which linears (SmoothQuant / AWQ
folding), where attention, its output and the MLP activation live (distillation hooks, NN-LUT).

Paths are relative to ``model.base_model`` (blocks, final norm) or to one block (everything else),
so the same spec serves ``*ForCausalLM``, ``*ForSequenceClassification`` and bare backbones.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

from torch import nn

from compactlm.errors import CompactLMError


LINEAR_ROLES = ("attention", "mlp")


@dataclass(frozen=True)
class ArchSpec:
    """Layout of one architecture family.

    Attributes:
        model_types: HF ``config.model_type`` values this spec covers.
        kind: ``"decoder"`` (causal LM) or ``"encoder"`` (BERT-like).
        blocks: Path of the block ``ModuleList`` under ``model.base_model``.
        linear_groups: Linear layers of a block in execution order; each inner tuple shares one input.
        norm_linears: ``(norm, linears)`` pairs where the norm's output is the linears' input, for
            folding per-channel scales (SmoothQuant, AWQ). Empty for post-norm encoders.
        final_norm: Path of the final norm under ``model.base_model`` (``None`` if absent).
        attention: Self-attention module inside a block.
        attention_output: Module whose output is the attention sub-layer output after residual and
            norm (post-norm encoders), else the attention module itself.
        mlp_act: Activation module of the MLP inside a block.
        norm_type: ``"layernorm"``, ``"rmsnorm"`` or ``"rmsnorm_plus1"`` (Gemma: scale is ``1 + w``).
        kv_proj: Names of the key and value projections (for 8-bit k/v outputs).
        conv1d: Linears are GPT-2 ``Conv1D`` (weight stored ``[C_in, C_out]``).
        block_norms: Every norm module inside a block (NN-LUT replaces them all).
        embedding_norm: Norm after the embeddings under ``model.base_model`` (BERT), if any.
        group_roles: Sub-layer of each entry of ``linear_groups`` (``"attention"`` or ``"mlp"``),
            same length; read through :meth:`linear_role` (LRQ's rank rule by layer role).
    """

    model_types: tuple[str, ...]
    kind: str
    blocks: str
    linear_groups: tuple[tuple[str, ...], ...]
    norm_linears: tuple[tuple[str, tuple[str, ...]], ...] = ()
    final_norm: str | None = None
    attention: str = "self_attn"
    attention_output: str = "self_attn"
    mlp_act: str = "mlp.act_fn"
    norm_type: str = "rmsnorm"
    kv_proj: tuple[str, ...] = ()
    conv1d: bool = False
    block_norms: tuple[str, ...] = ()
    embedding_norm: str | None = None
    extra: dict = field(default_factory=dict)
    group_roles: tuple[str, ...] = ("attention", "attention", "mlp", "mlp")

    def __post_init__(self) -> None:
        if len(self.group_roles) != len(self.linear_groups) or not set(self.group_roles) <= set(LINEAR_ROLES):
            raise ValueError(f"ArchSpec {self.model_types}: group_roles must give one of {LINEAR_ROLES} per linear group")

    def linear_role(self, name: str) -> str:
        """``"attention"`` or ``"mlp"``: the sub-layer the block linear ``name`` belongs to."""
        for group, role in zip(self.linear_groups, self.group_roles):
            if name in group:
                return role
        raise CompactLMError(f"linear {name!r} is not a block linear of {self.model_types[0]}; known: {', '.join(self.linears)}")

    @property
    def linears(self) -> tuple[str, ...]:
        """All quantizable linears of a block, in execution order."""
        return tuple(name for group in self.linear_groups for name in group)


_LLAMA_LIKE = dict(
    kind="decoder",
    blocks="layers",
    linear_groups=(
        ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
        ("self_attn.o_proj",),
        ("mlp.gate_proj", "mlp.up_proj"),
        ("mlp.down_proj",),
    ),
    final_norm="norm",
    kv_proj=("self_attn.k_proj", "self_attn.v_proj"),
)
_LLAMA_NORMS = ("input_layernorm", "post_attention_layernorm")

SPECS: tuple[ArchSpec, ...] = (
    ArchSpec(
        model_types=("llama", "mistral"),
        norm_linears=(
            ("input_layernorm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),
            ("post_attention_layernorm", ("mlp.gate_proj", "mlp.up_proj")),
        ),
        block_norms=_LLAMA_NORMS,
        **_LLAMA_LIKE,
    ),
    ArchSpec(
        model_types=("qwen2",),
        norm_linears=(
            ("input_layernorm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),
            ("post_attention_layernorm", ("mlp.gate_proj", "mlp.up_proj")),
        ),
        block_norms=_LLAMA_NORMS,
        **_LLAMA_LIKE,
    ),
    ArchSpec(
        model_types=("gemma3_text", "gemma3"),
        norm_linears=(
            ("input_layernorm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),
            ("pre_feedforward_layernorm", ("mlp.gate_proj", "mlp.up_proj")),
        ),
        norm_type="rmsnorm_plus1",
        block_norms=(
            "input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm",
            "post_feedforward_layernorm", "self_attn.q_norm", "self_attn.k_norm",
        ),
        **_LLAMA_LIKE,
    ),
    ArchSpec(
        model_types=("gpt2",),
        kind="decoder",
        blocks="h",
        linear_groups=(("attn.c_attn",), ("attn.c_proj",), ("mlp.c_fc",), ("mlp.c_proj",)),
        norm_linears=(("ln_1", ("attn.c_attn",)), ("ln_2", ("mlp.c_fc",))),
        final_norm="ln_f",
        attention="attn",
        attention_output="attn",
        mlp_act="mlp.act",
        norm_type="layernorm",
        conv1d=True,
        block_norms=("ln_1", "ln_2"),
    ),
    ArchSpec(
        model_types=("opt",),
        kind="decoder",
        blocks="decoder.layers",
        linear_groups=(
            ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
            ("self_attn.out_proj",),
            ("fc1",),
            ("fc2",),
        ),
        norm_linears=(
            ("self_attn_layer_norm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),
            ("final_layer_norm", ("fc1",)),
        ),
        final_norm="decoder.final_layer_norm",
        mlp_act="activation_fn",
        norm_type="layernorm",
        kv_proj=("self_attn.k_proj", "self_attn.v_proj"),
        block_norms=("self_attn_layer_norm", "final_layer_norm"),
    ),
    ArchSpec(
        model_types=("bert", "xlm-roberta", "roberta", "compactlm-pruned-bert", "compactlm-pruned-xlm-roberta"),
        kind="encoder",
        blocks="encoder.layer",
        linear_groups=(
            ("attention.self.query", "attention.self.key", "attention.self.value"),
            ("attention.output.dense",),
            ("intermediate.dense",),
            ("output.dense",),
        ),
        final_norm=None,
        attention="attention.self",
        attention_output="attention.output",
        mlp_act="intermediate.intermediate_act_fn",
        norm_type="layernorm",
        kv_proj=("attention.self.key", "attention.self.value"),
        block_norms=("attention.output.LayerNorm", "output.LayerNorm"),
        embedding_norm="embeddings.LayerNorm",
        # width pruning (compactlm.models.prune): the attention module, the linears whose output rows
        # are grouped by head, the one whose input columns are; the FFN's (in, out) linears
        extra={"heads": ("attention.self", ("attention.self.query", "attention.self.key", "attention.self.value"),
                         "attention.output.dense"),
               "ffn": ("intermediate.dense", "output.dense")},
    ),
)

_BY_TYPE = {t: spec for spec in SPECS for t in spec.model_types}


def supported_model_types() -> list[str]:
    return sorted(_BY_TYPE)


def get_spec(model_or_type: "nn.Module | str") -> ArchSpec:
    """The spec of a model (or of a ``model_type`` string).

    Raises:
        CompactLMError: the architecture is not supported; the message lists the supported ones.
    """
    if isinstance(model_or_type, str):
        model_type = model_or_type
    else:
        config = getattr(model_or_type, "config", None)
        model_type = getattr(config, "model_type", None)
    spec = _BY_TYPE.get(model_type)
    if spec is None:
        raise CompactLMError(
            f"model: architecture {model_type!r} is not supported; supported model_type values: "
            f"{', '.join(supported_model_types())}"
        )
    return spec


def get_module(root: nn.Module, path: str) -> nn.Module:
    """``root.<path>`` for a dotted path (``""`` is ``root`` itself)."""
    return root.get_submodule(path) if path else root


def set_module(root: nn.Module, path: str, module: nn.Module) -> None:
    """Replace the submodule at a dotted ``path``."""
    parent_path, _, name = path.rpartition(".")
    setattr(get_module(root, parent_path), name, module)


def base_model(model: nn.Module) -> nn.Module:
    """The backbone under a task head (``model.base_model`` for HF models)."""
    return getattr(model, "base_model", model)


def get_blocks(model: nn.Module) -> nn.ModuleList:
    """The transformer blocks, in order."""
    spec = get_spec(model)
    return get_module(base_model(model), spec.blocks)


def blocks_path(model: nn.Module) -> str:
    """Dotted path of the block list from the model root (for naming modules in checkpoints)."""
    blocks = get_blocks(model)
    for name, module in model.named_modules():
        if module is blocks:
            return name
    raise CompactLMError("model: could not locate the block list")  # unreachable for HF models


def block_linears(block: nn.Module, spec: ArchSpec) -> dict[str, nn.Module]:
    """``{name: module}`` for the block's quantizable linears, in execution order."""
    return {name: get_module(block, name) for name in spec.linears}


def iter_block_linears(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """``(full_name, module)`` for every quantizable linear of every block, block by block."""
    spec = get_spec(model)
    prefix = blocks_path(model)
    for i, block in enumerate(get_blocks(model)):
        for name, module in block_linears(block, spec).items():
            yield f"{prefix}.{i}.{name}", module


def linear_weight(module: nn.Module) -> "torch.Tensor":  # noqa: F821
    """Weight as ``[C_out, C_in]`` whatever the layer type (``Conv1D`` stores it transposed)."""
    if type(module).__name__ == "Conv1D":
        return module.weight.t()
    return module.weight


def linear_bias(module: nn.Module):
    return getattr(module, "bias", None)


from compactlm.models import pruned_encoder as _pruned_encoder  # noqa: E402  (registers the head-pruned types)

_pruned_encoder.register()
