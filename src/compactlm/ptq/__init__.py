"""Post-training quantization methods. Importing this package registers them all."""

from compactlm.ptq import rtn  # noqa: F401  (registers "rtn")
from compactlm.ptq import smoothquant  # noqa: F401  (registers "smoothquant")
