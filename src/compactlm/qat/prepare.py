"""Put fake-quant layers on a generative LM for QAT, and bake them onto the integer grid.

``prepare_qat(model, scheme, config)`` replaces every block linear (the ``ArchSpec`` table of
:mod:`compactlm.models.specs`, ``Conv1D`` included) by the one training-time
:class:`~compactlm.quant.fake.FakeQuantLinear`: the latent full-precision weight ``W``
``[C_out, C_in]`` is trained, the forward uses ``Ŵ = Q(W)``
(:mod:`compactlm.quant.weight_quantizers`), the input activations are fake-quantized when the scheme
asks for it (dynamic ranges only: static ranges need a calibration pass that QAT would
invalidate), and the k/v projections carry the scheme's ``-kv<bits>`` output quantizer already
during training. Embeddings and ``lm_head`` stay full precision (W2A16 of TSLD).

``convert_qat(model)`` replaces each fake-quant layer by a :class:`~compactlm.quant.QuantLinear`
on the :class:`~compactlm.quant.QuantizedWeight` of its quantizer, so
:func:`compactlm.models.save_quantized` and ``compactlm export`` work unchanged.

Default quantizer per scheme (:class:`~compactlm.quant.fake.QATConfig`): ternary TWN per channel at
2 bits, min/max per channel (or per ``-g<N>`` group) on the scheme's grid at 3–8 bits;
``quantizer="pact"`` / ``"lsq"`` choose a learned clip / step.
"""

from __future__ import annotations

from torch import nn

from compactlm.errors import CompactLMError
from compactlm.models.specs import get_spec, iter_block_linears, linear_bias, linear_weight, set_module
from compactlm.quant.fake import FakeQuantLinear, QATConfig, convert_fake_quant, fake_quant_linear
from compactlm.quant.linear import QuantLinear
from compactlm.quant.scheme import QuantScheme


def prepare_qat(
    model: nn.Module, scheme: "str | QuantScheme | dict", config: QATConfig | None = None, **options
) -> nn.Module:
    """Replace every block linear of ``model`` by a :class:`~compactlm.quant.fake.FakeQuantLinear`, in place.

    Args:
        model: An HF model whose ``model_type`` has an ``ArchSpec``.
        scheme: Scheme string (``"w2a16"``, ``"w4a16-g128"``, ``"w4a8-kv8"``...), dict or QuantScheme.
        config: :class:`~compactlm.quant.fake.QATConfig`, or its fields as keyword ``options``.

    Returns:
        ``model`` (modified in place; embeddings and ``lm_head`` untouched).

    Raises:
        CompactLMError: static activation ranges, a quantizer that does not fit the scheme, or
            ``embeddings=True`` (decoders keep embeddings and ``lm_head`` full precision).
    """
    scheme = QuantScheme.parse(scheme)
    config = config or QATConfig(**options)
    if config.embeddings:
        raise CompactLMError("--embeddings: decoder QAT keeps the embeddings and lm_head in full precision")
    spec = get_spec(model)
    replaced = 0
    for name, module in list(iter_block_linears(model)):
        if isinstance(module, (FakeQuantLinear, QuantLinear)):
            raise CompactLMError(f"--model: {name} is already quantized; start QAT from a full-precision model")
        w = linear_weight(module)
        weight = module.weight if w is module.weight else w  # Conv1D: a transposed copy becomes the latent
        is_kv = any(name.endswith("." + k) for k in spec.kv_proj)
        set_module(model, name, fake_quant_linear(weight, linear_bias(module), scheme, config, is_kv=is_kv))
        replaced += 1
    if replaced == 0:
        raise CompactLMError("--model: no quantizable block linears found")
    return model


def qat_linears(model: nn.Module) -> dict[str, FakeQuantLinear]:
    """``{name: module}`` of every :class:`~compactlm.quant.fake.FakeQuantLinear` in ``model``."""
    return {n: m for n, m in model.named_modules() if isinstance(m, FakeQuantLinear)}


def convert_qat(model: nn.Module) -> nn.Module:
    """Bake every fake-quant layer onto its integer grid (a ``QuantLinear``), in place."""
    if not qat_linears(model):
        raise CompactLMError("convert_qat: the model has no QAT layers (call prepare_qat first)")
    return convert_fake_quant(model)


def fake_quant_state(model: nn.Module) -> dict[str, str]:
    """``{layer: quantizer description}`` for reports."""
    return {n: m.weight_quantizer.describe() for n, m in qat_linears(model).items()}


__all__ = ["QATConfig", "prepare_qat", "convert_qat", "qat_linears", "fake_quant_state"]
