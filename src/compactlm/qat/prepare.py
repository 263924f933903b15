"""Put fake-quant weight quantizers on a model for QAT, and bake them onto the integer grid.

``prepare_qat(model, scheme)`` replaces every block linear (the ``ArchSpec`` table of
:mod:`compactlm.models.specs`, ``Conv1D`` included) by a :class:`QATLinear`: the latent full-precision
weight ``W`` ``[C_out, C_in]`` is trained, the forward uses ``Ŵ = Q(W)`` (:mod:`.quantizers`), and
the input activations are fake-quantized when the scheme asks for it (dynamic ranges only: static
ranges need a calibration pass that QAT would invalidate). Embeddings and ``lm_head`` stay full
precision (W2A16 of TSLD, METHODS.md §2.1).

``convert_qat(model)`` replaces each :class:`QATLinear` by a :class:`~compactlm.quant.QuantLinear`
on the :class:`~compactlm.quant.QuantizedWeight` of its quantizer, so
:func:`compactlm.models.save_quantized` and ``compactlm export`` work unchanged.

Default quantizer per scheme: ternary TWN per channel at 2 bits, asymmetric min/max per channel
(or per ``-g<N>`` group) at 3–8 bits; ``quantizer="pact"`` / ``"lsq"`` choose a learned clip / step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from compactlm.errors import CompactLMError
from compactlm.models.specs import get_spec, iter_block_linears, linear_bias, linear_weight, set_module
from compactlm.ptq.common import make_quant_linear
from compactlm.qat.quantizers import QUANTIZERS, WeightQuantizer, make_weight_quantizer
from compactlm.quant.activation import act_quantizer_for
from compactlm.quant.linear import QuantLinear
from compactlm.quant.scheme import QuantScheme


@dataclass(frozen=True)
class QATConfig:
    """How :func:`prepare_qat` quantizes weights beyond what the scheme says.

    Attributes:
        quantizer: ``"auto"`` (TWN at 2 bits, min/max otherwise), ``"twn"``, ``"pact"``, ``"lsq"``, ``"minmax"``.
        per: TWN granularity, ``"channel"`` or ``"tensor"``.
        clip: TWN symmetric pre-clip (``None``: none).
    """

    quantizer: str = "auto"
    per: str = "channel"
    clip: float | None = None

    def resolve(self, scheme: QuantScheme) -> str:
        if self.quantizer == "auto":
            return "twn" if scheme.w_bits == 2 and scheme.w_group_size is None else "minmax"
        if self.quantizer not in QUANTIZERS:
            raise CompactLMError(f"--quantizer: expected auto or one of {', '.join(QUANTIZERS)}, got {self.quantizer!r}")
        return self.quantizer


class QATLinear(nn.Module):
    """``y = Q_a(x) · Q_w(W)ᵀ + b`` with a trainable latent ``W`` ``[C_out, C_in]``.

    Args:
        original: ``nn.Linear`` or HF ``Conv1D`` (its weight is transposed into ``[C_out, C_in]``).
        scheme: The target scheme (activation quantizer and k/v bits at conversion).
        weight_quantizer: A :class:`~compactlm.qat.quantizers.WeightQuantizer`.
        is_kv: The layer is a k/v projection (gets the scheme's k/v output quantizer at conversion).
    """

    def __init__(self, original: nn.Module, scheme: QuantScheme, weight_quantizer: WeightQuantizer, is_kv: bool = False):
        super().__init__()
        w = linear_weight(original)
        self.weight = original.weight if w is original.weight else nn.Parameter(w.detach().contiguous())
        bias = linear_bias(original)
        self.bias = bias
        self.scheme = scheme
        self.is_kv = is_kv
        self.weight_quantizer = weight_quantizer
        self.input_quantizer = act_quantizer_for(scheme)
        self.out_features, self.in_features = self.weight.shape

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, {self.scheme.name}"

    def quantized_weight(self) -> torch.Tensor:
        """``Ŵ`` ``[C_out, C_in]`` with the STE gradient to the latent weight."""
        return self.weight_quantizer(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_quantizer is not None:
            x = self.input_quantizer(x)
        return F.linear(x, self.quantized_weight().to(x.dtype), self.bias)

    def to_quant_linear(self) -> QuantLinear:
        """The deployed layer on the integer grid of the current latent weight."""
        qweight = self.weight_quantizer.to_qweight(self.weight.detach())
        return make_quant_linear(self, qweight, self.scheme, is_kv=self.is_kv)


def prepare_qat(
    model: nn.Module, scheme: "str | QuantScheme | dict", config: QATConfig | None = None, **options
) -> nn.Module:
    """Replace every block linear of ``model`` by a :class:`QATLinear`, in place.

    Args:
        model: An HF model whose ``model_type`` has an ``ArchSpec``.
        scheme: Scheme string (``"w2a16"``, ``"w4a16-g128"``, ``"w2a8-tensor"``...), dict or QuantScheme.
        config: :class:`QATConfig`, or its fields as keyword ``options``.

    Returns:
        ``model`` (modified in place; embeddings and ``lm_head`` untouched).

    Raises:
        CompactLMError: static activation ranges or a quantizer that does not fit the scheme.
    """
    scheme = QuantScheme.parse(scheme)
    config = config or QATConfig(**options)
    if scheme.a_static:
        raise CompactLMError(
            f"--scheme: QAT needs dynamic activation ranges; {scheme.name} is static (add -dynamic)"
        )
    kind = config.resolve(scheme)
    spec = get_spec(model)
    replaced = 0
    for name, module in list(iter_block_linears(model)):
        if isinstance(module, (QATLinear, QuantLinear)):
            raise CompactLMError(f"--model: {name} is already quantized; start QAT from a full-precision model")
        w = linear_weight(module)
        quantizer = make_weight_quantizer(kind, w, scheme.w_bits, scheme.w_group_size, scheme.w_symmetric,
                                          per=config.per, clip=config.clip).to(w.device)
        is_kv = any(name.endswith("." + k) for k in spec.kv_proj)
        set_module(model, name, QATLinear(module, scheme, quantizer, is_kv=is_kv))
        replaced += 1
    if replaced == 0:
        raise CompactLMError("--model: no quantizable block linears found")
    return model


def qat_linears(model: nn.Module) -> dict[str, QATLinear]:
    """``{name: module}`` of every :class:`QATLinear` in ``model``."""
    return {n: m for n, m in model.named_modules() if isinstance(m, QATLinear)}


@torch.no_grad()
def convert_qat(model: nn.Module) -> nn.Module:
    """Bake every :class:`QATLinear` onto its integer grid (a ``QuantLinear``), in place."""
    layers = qat_linears(model)
    if not layers:
        raise CompactLMError("convert_qat: the model has no QAT layers (call prepare_qat first)")
    for name, layer in layers.items():
        set_module(model, name, layer.to_quant_linear())
    return model


def fake_quant_state(model: nn.Module) -> dict[str, str]:
    """``{layer: quantizer description}`` for reports."""
    return {n: m.weight_quantizer.extra_repr() for n, m in qat_linears(model).items()}


__all__ = ["QATConfig", "QATLinear", "prepare_qat", "convert_qat", "qat_linears", "fake_quant_state"]
