"""Block-input capture: run transformer blocks standalone without rebuilding masks or rotary tables.

Block-wise methods (reconstruction PTQ, layer-wise distillation) need to call block ``i`` on
cached hidden states. Instead of re-deriving the causal / sliding-window masks, position ids and
rotary embeddings by hand (private, version-dependent HF helpers), we let the model build them
and record what it passes: a forward pre-hook *with kwargs* on every block stores the positional
and keyword arguments of that block's call, and a pre-hook on block 0 stores its input hidden
states and stops the forward. Arguments are recorded per block, so architectures whose layers
differ (Gemma-3: sliding vs full attention masks and local vs global rotary tables per layer)
are replayed exactly as the model would run them.

Masks carry the batch dimension, so the call arguments are captured once per batch size used.
Calibration inputs are assumed unpadded (fixed-length token samples), so the arguments depend
only on the batch shape, not on the token values.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from compactlm.models.specs import get_blocks


class _Stop(Exception):
    """Raised inside a pre-hook to end a forward pass early."""


def _detach(obj):
    """Detached copies of tensors inside nested tuples / lists / dicts; HF caches become ``None``."""
    if torch.is_tensor(obj):
        return obj.detach()
    if isinstance(obj, tuple):
        return tuple(_detach(o) for o in obj)
    if isinstance(obj, list):
        return [_detach(o) for o in obj]
    if isinstance(obj, dict):
        return {k: _detach(v) for k, v in obj.items()}
    if type(obj).__name__.endswith("Cache"):  # a KV cache must not be updated by replayed calls
        return None
    return obj


@dataclass
class BlockCall:
    """Arguments one block receives besides its hidden states.

    Attributes:
        args: Positional arguments after the hidden states.
        kwargs: Keyword arguments (attention mask, position ids / embeddings, ...).
        hidden_kw: Name of the keyword carrying the hidden states if the model passes them by
            keyword, else ``None`` (first positional argument).
    """

    args: tuple
    kwargs: dict
    hidden_kw: str | None = None

    def __call__(self, block: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        """Run ``block`` on ``hidden`` ``(B, T, C)``; returns the output hidden states ``(B, T, C)``."""
        if self.hidden_kw is None:
            out = block(hidden, *self.args, **self.kwargs)
        else:
            out = block(*self.args, **{**self.kwargs, self.hidden_kw: hidden})
        return block_output(out)


def block_output(out) -> torch.Tensor:
    """The hidden states of a block's output, whether it returns a tensor or a tuple."""
    if isinstance(out, (tuple, list)):
        return out[0]
    if hasattr(out, "last_hidden_state"):
        return out.last_hidden_state
    return out


def _split_hidden(args: tuple, kwargs: dict) -> tuple[torch.Tensor, BlockCall]:
    if args:
        return args[0], BlockCall(_detach(args[1:]), _detach(kwargs), None)
    for key in ("hidden_states", "hidden_state", "x"):
        if key in kwargs:
            rest = {k: v for k, v in kwargs.items() if k != key}
            return kwargs[key], BlockCall((), _detach(rest), key)
    raise RuntimeError("block called without hidden states")  # unreachable for HF blocks


def _model_kwargs(model: nn.Module) -> dict:
    return {"use_cache": False} if getattr(model.config, "use_cache", None) is not None else {}


@torch.no_grad()
def capture_block_calls(model: nn.Module, input_ids: torch.Tensor) -> list[BlockCall]:
    """Record the call arguments of every block for a batch shaped like ``input_ids`` ``(B, T)``.

    Runs the model up to the last block (one forward of ``B`` samples).
    """
    blocks = get_blocks(model)
    calls: list[BlockCall | None] = [None] * len(blocks)

    def make_hook(i: int):
        def hook(module, args, kwargs):
            calls[i] = _split_hidden(args, kwargs)[1]
            if i == len(blocks) - 1:
                raise _Stop
        return hook

    handles = [b.register_forward_pre_hook(make_hook(i), with_kwargs=True) for i, b in enumerate(blocks)]
    try:
        model(input_ids=input_ids.to(_device(model)), **_model_kwargs(model))
    except _Stop:
        pass
    finally:
        for h in handles:
            h.remove()
    return calls  # type: ignore[return-value]


@torch.no_grad()
def capture_first_block_input(model: nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    """Hidden states entering block 0 for ``input_ids`` ``(B, T)``: ``(B, T, C)`` (embeddings only)."""
    blocks = get_blocks(model)
    box: list[torch.Tensor] = []

    def hook(module, args, kwargs):
        box.append(_split_hidden(args, kwargs)[0].detach())
        raise _Stop

    handle = blocks[0].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        model(input_ids=input_ids.to(_device(model)), **_model_kwargs(model))
    except _Stop:
        pass
    finally:
        handle.remove()
    return box[0]


class BlockRunner:
    """Runs any block of ``model`` standalone on cached hidden states.

    Call arguments are captured lazily, once per batch size, from a forward on the first
    ``B`` rows of ``example_ids``.

    Args:
        model: The HF model whose blocks are run.
        example_ids: ``(N, T)`` token ids with the sequence length the hidden states have.
    """

    def __init__(self, model: nn.Module, example_ids: torch.Tensor):
        self.model = model
        self.example_ids = example_ids
        self._calls: dict[int, list[BlockCall]] = {}

    def calls(self, batch: int) -> list[BlockCall]:
        if batch not in self._calls:
            if batch > len(self.example_ids):
                raise ValueError(f"batch {batch} exceeds the {len(self.example_ids)} example rows")
            self._calls[batch] = capture_block_calls(self.model, self.example_ids[:batch])
        return self._calls[batch]

    def __call__(self, index: int, block: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        """Output ``(B, T, C)`` of ``block`` (playing block ``index``) on ``hidden`` ``(B, T, C)``."""
        return self.calls(hidden.shape[0])[index](block, hidden)


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device
