"""``QuantLinear``: the deployed linear layer, whose weight lives on an integer grid.

It is what every method leaves in the model: packed integer codes (:mod:`compactlm.quant.packing`),
per-group fp32 scale and integer zero point, an optional input-activation quantizer (W8A8 / W4A8)
and an optional output quantizer (8-bit k/v). The integers are the single source of truth for
evaluation, kernels and export alike.

How ``x @ Ŵᵀ`` is computed is the layer's *backend*:

* ``"reference"`` (what quantization leaves in memory): ``Ŵ`` is dequantized once, cached in the
  input's dtype and rebuilt whenever a grid buffer changes; the exact fake-quant semantics that
  reconstruction, QAT and evaluation are defined on.
* ``"auto"`` (what a loaded run directory gets): a real low-bit kernel for the layer's grid and
  device (:func:`compactlm.quant.kernels.select_kernel`), packed once; by default the kernel's
  packing is then the only copy of the codes (``keep_codes=False``), read back exactly when the
  layer is saved, exported or moved. A grid no kernel serves is dequantized on every call, with no
  cached copy. With ``keep_codes=True`` calls of at least ``dense_from_tokens`` rows (prefill)
  dequantize into the input's dtype and use a dense GEMM, which is faster at large M.
* ``"dequant"``: dequantize on every call (no cache, no kernel).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from compactlm.errors import CompactLMError
from compactlm.quant.activation import ActQuantizer, act_quantizer_for, kv_quantizer_for
from compactlm.quant.kernels import Kernel, LayerGrid, select_kernel
from compactlm.quant.packing import pack_codes, unpack_codes, zero_point_storage
from compactlm.quant.qweight import QuantizedWeight, code_dtype

BACKENDS = ("reference", "auto", "dequant")
DENSE_FROM_TOKENS = 32  # rows from which a call with kept codes uses a dense GEMM (bench/serve measured)


class QuantLinear(nn.Module):
    """``y = Q_out(Q_in(x) @ Ŵᵀ + b)`` with ``Ŵ = (q - zero_point) · scale``.

    Args:
        qweight: The weight grid ``[C_out, C_in]``.
        bias: ``[C_out]`` or ``None``.
        input_quantizer: Fake-quantizer of the input, or ``None``.
        output_quantizer: Fake-quantizer of the output (k/v cache bits), or ``None``.
    """

    def __init__(
        self,
        qweight: QuantizedWeight,
        bias: torch.Tensor | None = None,
        input_quantizer: ActQuantizer | None = None,
        output_quantizer: ActQuantizer | None = None,
    ):
        super().__init__()
        self.out_features, self.in_features = qweight.shape
        self.bits = qweight.bits
        self.group_size = qweight.group_size
        self.symmetric = qweight.symmetric
        self.register_buffer("weight_packed", pack_codes(qweight.int_weight, self.bits, self.symmetric))
        self.register_buffer("weight_scale", qweight.scale.detach().float().clone())
        self.register_buffer("weight_zero_point", zero_point_storage(qweight.zero_point))
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)
        self.input_quantizer = input_quantizer
        self.output_quantizer = output_quantizer
        self.backend = "reference"
        self.keep_codes = False
        self.dense_from_tokens = DENSE_FROM_TOKENS
        self._kernel: Kernel | None = None
        self._no_kernel_reason = ""
        self._dequant_cache: tuple[tuple, torch.Tensor] | None = None

    @classmethod
    def from_packed(cls, packed: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, bits: int,
                    group_size: int, symmetric: bool, in_features: int, bias: torch.Tensor | None = None) -> "QuantLinear":
        """A layer from its stored (packed) grid, checked against the declared shapes."""
        codes = unpack_codes(packed, bits, symmetric, in_features)
        qw = QuantizedWeight(codes, scale.float(), zero_point.to(torch.int32), bits, group_size, symmetric)
        qw.validate()
        return cls(qw, bias)

    def extra_repr(self) -> str:
        g = "channel" if self.group_size == self.in_features else f"g{self.group_size}"
        return (
            f"in={self.in_features}, out={self.out_features}, w{self.bits} {g}, "
            f"{'sym' if self.symmetric else 'asym'}, bias={self.bias is not None}, path={self.path}"
        )

    # ---- the grid -----------------------------------------------------------------------------
    @property
    def grid(self) -> LayerGrid:
        return LayerGrid(self.bits, self.group_size, self.symmetric, self.out_features, self.in_features)

    @property
    def int_weight(self) -> torch.Tensor:
        """``[C_out, C_in]`` integer codes (unpacked; int8 when symmetric, uint8 otherwise)."""
        if self.weight_packed is None:
            return self._kernel.codes().to(code_dtype(self.symmetric))
        return unpack_codes(self.weight_packed, self.bits, self.symmetric, self.in_features)

    @int_weight.setter
    def int_weight(self, codes: torch.Tensor) -> None:
        self._drop_kernel(keep=False)
        self.weight_packed = pack_codes(codes, self.bits, self.symmetric).to(self.weight_scale.device)

    def packed_codes(self) -> torch.Tensor:
        """The codes in the portable packed layout, without keeping a second copy beside a kernel's."""
        if self.weight_packed is not None:
            return self.weight_packed
        return pack_codes(self._kernel.codes(), self.bits, self.symmetric)

    def kernel_nbytes(self) -> int:
        """Bytes held by this layer's kernel packing (0 without a kernel)."""
        return 0 if self._kernel is None else self._kernel.nbytes()

    @property
    def qweight(self) -> QuantizedWeight:
        return QuantizedWeight(
            self.int_weight, self.weight_scale, self.weight_zero_point.to(torch.int32),
            self.bits, self.group_size, self.symmetric,
        )

    @property
    def weight(self) -> torch.Tensor:
        """Dequantized ``[C_out, C_in]`` weight (read-only view of the grid)."""
        dtype = self.bias.dtype if self.bias is not None else self.weight_scale.dtype
        return self._dequantize(dtype)

    def _dequantize(self, dtype: torch.dtype) -> torch.Tensor:
        n_groups = self.in_features // self.group_size
        codes = self.int_weight.to(torch.float32).view(self.out_features, n_groups, self.group_size)
        w = (codes - self.weight_zero_point.float()[..., None]) * self.weight_scale.float()[..., None]
        return w.view(self.out_features, self.in_features).to(dtype)

    def dequantized_weight(self, dtype: torch.dtype) -> torch.Tensor:
        """``Ŵ`` in ``dtype``, rebuilt only when the grid buffers changed (identity or version)."""
        self._materialize_codes()
        bufs = (self.weight_packed, self.weight_scale, self.weight_zero_point)
        key = (dtype, *((id(b), b.data_ptr(), b.device, b._version) for b in bufs))
        if self._dequant_cache is None or self._dequant_cache[0] != key:
            with torch.no_grad():
                self._dequant_cache = (key, self._dequantize(dtype))
        return self._dequant_cache[1]

    # ---- backends -----------------------------------------------------------------------------
    def set_backend(self, backend: str = "auto", keep_codes: bool = False, dense_from_tokens: int | None = None,
                    prepare: bool = True) -> str:
        """Choose how the matmul runs (module docstring); returns :attr:`path`.

        Args:
            backend: ``"reference"``, ``"auto"`` or ``"dequant"``.
            keep_codes: Keep the packed codes beside a kernel's packing (more memory, dense prefill).
            dense_from_tokens: Rows from which a call with kept codes uses a dense GEMM.
            prepare: Pack for the kernel now instead of on the first call.
        """
        if backend not in BACKENDS:
            raise CompactLMError(f"backend: expected one of {', '.join(BACKENDS)}, got {backend!r}")
        self._drop_kernel(keep=True)
        self._dequant_cache = None
        self.backend, self.keep_codes = backend, keep_codes
        if dense_from_tokens is not None:
            self.dense_from_tokens = dense_from_tokens
        if backend == "auto" and prepare:
            self._prepare_kernel()
        return self.path

    @property
    def path(self) -> str:
        """How the matmul runs now: ``reference``, ``dequant``, a kernel name, or ``auto`` (not prepared yet)."""
        if self.backend != "auto":
            return self.backend
        if self._kernel is not None:
            return self._kernel.name
        return "dequant" if self._no_kernel_reason else "auto"

    @property
    def no_kernel_reason(self) -> str:
        """Why no kernel serves this layer (empty when one does or none was looked for)."""
        return self._no_kernel_reason

    def _prepare_kernel(self) -> None:
        device = self.weight_scale.device
        cls, why = select_kernel(self.grid, device.type)
        self._no_kernel_reason = why
        if cls is None:
            return
        with torch.no_grad():
            self._kernel = cls(self.grid, self.int_weight, self.weight_scale, self.weight_zero_point)
        if not self.keep_codes:
            self.weight_packed = None  # the kernel's packing is the only copy now

    def _materialize_codes(self) -> None:
        if self.weight_packed is None:
            self.weight_packed = self.packed_codes()

    def _drop_kernel(self, keep: bool) -> None:
        if keep:
            self._materialize_codes()
        self._kernel = None
        self._no_kernel_reason = ""

    def _apply(self, fn, recurse: bool = True):
        # Kernel packings are device-specific: read the codes back, move, repack lazily. Scales stay fp32.
        self._drop_kernel(keep=True)
        self._dequant_cache = None
        scale = self.weight_scale
        out = super()._apply(fn, recurse)
        if self.weight_scale.dtype != torch.float32:
            self.weight_scale = scale.to(self.weight_scale.device)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_quantizer is not None:
            x = self.input_quantizer(x)
        bias = None if self.bias is None else self.bias.to(x.dtype)
        y = self._linear(x, bias)
        if self.output_quantizer is not None:
            y = self.output_quantizer(y)
        return y

    def _linear(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if self.backend == "reference":
            return F.linear(x, self.dequantized_weight(x.dtype), bias)
        if self.backend == "auto" and self._kernel is None and not self._no_kernel_reason:
            self._prepare_kernel()
        k = self._kernel
        if k is None:
            return F.linear(x, self._dequantize(x.dtype), bias)
        x2 = x.reshape(-1, self.in_features)
        if x2.shape[0] >= self.dense_from_tokens:
            w = k.dense_weight(x.dtype)
            if w is None and self.weight_packed is not None:
                w = self._dequantize(x.dtype)
            if w is not None:
                return F.linear(x, w, bias)
        y = k.matmul(x2).reshape(*x.shape[:-1], self.out_features)
        return y if bias is None else y + bias


def make_quant_linear(original: nn.Module, qweight: QuantizedWeight, scheme, is_kv: bool = False) -> QuantLinear:
    """A ``QuantLinear`` carrying ``original``'s bias and the scheme's activation quantizers.

    Args:
        original: The layer replaced (``nn.Linear``, HF ``Conv1D``, a fake-quant linear): its bias
            and device are kept.
        qweight: The weight grid ``[C_out, C_in]``.
        scheme: A :class:`~compactlm.quant.scheme.QuantScheme` (input quantizer; k/v output bits).
        is_kv: ``original`` is a k or v projection (gets the ``-kv<bits>`` output quantizer).
    """
    out_q = kv_quantizer_for(scheme) if is_kv else None
    module = QuantLinear(qweight, getattr(original, "bias", None), act_quantizer_for(scheme), out_q)
    weight = getattr(original, "weight", None)
    if isinstance(weight, torch.Tensor):
        module.to(weight.device)
    return module


def quant_linears(model: nn.Module) -> dict[str, QuantLinear]:
    """Every :class:`QuantLinear` of ``model`` by module name."""
    return {name: m for name, m in model.named_modules() if isinstance(m, QuantLinear)}


def set_backend(model: nn.Module, backend: str = "auto", keep_codes: bool = False,
                dense_from_tokens: int | None = None) -> dict[str, str]:
    """Set the backend of every ``QuantLinear`` in ``model`` (kernels packed now); returns name -> path."""
    return {name: q.set_backend(backend, keep_codes, dense_from_tokens) for name, q in quant_linears(model).items()}


def path_summary(model: nn.Module) -> dict[str, dict]:
    """Per path (``int4-cpu``, ``dequant``...): how many layers take it and, for dequant, why."""
    summary: dict[str, dict] = {}
    for name, q in quant_linears(model).items():
        entry = summary.setdefault(q.path, {"layers": 0, "examples": []})
        entry["layers"] += 1
        if q.no_kernel_reason and len(entry["examples"]) < 3:
            entry["examples"].append(f"{name}: {q.no_kernel_reason}")
    return summary
