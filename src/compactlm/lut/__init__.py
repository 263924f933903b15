"""NN-LUT (Yu et al., DAC 2022, arXiv 2112.02191): piecewise-linear tables for every non-linearity.

``fit_lut`` trains the one-hidden-layer ReLU network and converts it exactly into a table;
``apply_luts`` swaps GELU / SiLU / softmax / LayerNorm / RMSNorm of a model for table-based
versions and returns a handle whose ``remove()`` restores the original model; ``export`` writes
tables as JSON and as fixed-point integer tables.
"""

from compactlm.lut.fit import FitConfig, fit_lut
from compactlm.lut.functions import ALL_OPS, TARGETS
from compactlm.lut.table import LUT, table_error, uniform_lut

__all__ = ["ALL_OPS", "FitConfig", "LUT", "TARGETS", "fit_lut", "table_error", "uniform_lut"]
