"""NN-LUT (Yu et al., DAC 2022, arXiv 2112.02191): piecewise-linear tables for every non-linearity.

``fit_lut`` trains the one-hidden-layer ReLU network and converts it exactly into a table;
``apply_luts`` swaps GELU / SiLU / softmax / LayerNorm / RMSNorm of a model for table-based
versions and returns a handle whose ``remove()`` restores the original model; ``calibrate_luts``
re-fits the tables on real activations; ``save_luts`` / ``load_luts`` / ``to_fixed_point`` write
and read tables as JSON and as fixed-point integer tables.
"""

from compactlm.lut.apply import LUTHandle, apply_luts, calibrate_luts
from compactlm.lut.export import FixedPointLUT, load_luts, save_luts, to_fixed_point
from compactlm.lut.fit import FitConfig, fit_lut
from compactlm.lut.functions import ALL_OPS, TARGETS
from compactlm.lut.table import LUT, table_error, uniform_lut

__all__ = [
    "ALL_OPS", "FitConfig", "FixedPointLUT", "LUT", "LUTHandle", "TARGETS", "apply_luts", "calibrate_luts",
    "fit_lut", "load_luts", "save_luts", "table_error", "to_fixed_point", "uniform_lut",
]
