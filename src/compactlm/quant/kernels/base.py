"""What a kernel sees of a layer, and what it must provide."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class LayerGrid:
    """Static description of one quantized linear's weight grid."""

    bits: int
    group_size: int
    symmetric: bool
    out_features: int
    in_features: int

    @property
    def per_channel(self) -> bool:
        return self.group_size == self.in_features


class Kernel:
    """A layer's weight repacked for one real low-bit matmul.

    Subclasses set :attr:`name`, implement :meth:`unsupported` (``None`` when the grid is served,
    else a short reason), build their packing in ``__init__`` from the deployed grid, and compute
    ``x @ Ŵᵀ`` in :meth:`matmul`. :meth:`codes` gives the layer's codes back exactly, so a layer
    whose kernel holds the only copy can still be saved, exported or moved.
    """

    name = "kernel"

    @classmethod
    def unsupported(cls, grid: LayerGrid, device_type: str) -> str | None:
        raise NotImplementedError

    def __init__(self, grid: LayerGrid, codes: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor):
        """Args: ``codes`` ``[C_out, C_in]`` signed (symmetric) / unsigned integer codes;
        ``scale`` ``[C_out, n_groups]`` float; ``zero_point`` ``[C_out, n_groups]`` integers."""
        self.grid = grid

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` ``[M, C_in]`` -> ``[M, C_out]`` in ``x.dtype``."""
        raise NotImplementedError

    def codes(self) -> torch.Tensor:
        """The ``[C_out, C_in]`` integer codes this kernel was built from (exact)."""
        raise NotImplementedError

    def dense_weight(self, dtype: torch.dtype) -> torch.Tensor | None:
        """The dequantized ``[C_out, C_in]`` weight if this packing yields it cheaply, else ``None``."""
        return None

    def nbytes(self) -> int:
        """Bytes of memory this kernel's tensors hold."""
        return sum(t.numel() * t.element_size() for t in vars(self).values() if isinstance(t, torch.Tensor))
