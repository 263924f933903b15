"""Post-training quantization methods. Importing this package registers them all."""

from compactlm.ptq import rtn  # noqa: F401  (registers "rtn")
from compactlm.ptq import smoothquant  # noqa: F401  (registers "smoothquant")
from compactlm.ptq import flexround, lrq  # noqa: F401  (register "flexround", "lrq")
