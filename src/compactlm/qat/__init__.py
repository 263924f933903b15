"""Quantization-aware training (QAT) of generative LMs with distillation (TSLD and baselines).

* :mod:`compactlm.quant.weight_quantizers` — TWN ternary (per channel / row / tensor, optional
  pre-clip), PACT+ learned clip, LSQ learned step, min/max ``b``-bit per channel or group; all bake
  to a ``QuantizedWeight``; :mod:`compactlm.quant.fake` — the one fake-quant linear and
  :class:`QATConfig`;
* :mod:`.prepare` — :func:`prepare_qat` / :func:`convert_qat` on every block linear;
* :mod:`.recipe` and :mod:`.run` — loss-term recipes and :func:`run_qat` (the ``compactlm qat`` command).

The package is also the API verb: ``compactlm.qat(model, scheme, data=..., ...)`` calls
:func:`compactlm.api.qat` (:mod:`compactlm.verbs`).
"""

from compactlm.qat.prepare import QATConfig, convert_qat, prepare_qat, qat_linears
from compactlm.qat.recipe import QATRecipe
from compactlm.qat.run import run_qat
from compactlm.quant.fake import FakeQuantLinear
from compactlm.quant.weight_quantizers import (
    LSQQuantizer,
    MinMaxQuantizer,
    PACTQuantizer,
    TWNQuantizer,
    make_weight_quantizer,
    twn_ternarize,
)

__all__ = [
    "QATConfig", "FakeQuantLinear", "convert_qat", "prepare_qat", "qat_linears", "LSQQuantizer", "MinMaxQuantizer",
    "PACTQuantizer", "TWNQuantizer", "make_weight_quantizer", "twn_ternarize", "QATRecipe", "run_qat",
]

from compactlm.verbs import make_callable  # noqa: E402

make_callable(__name__, "qat")

