"""Post-training quantization methods (rtn, smoothquant, flexround, lrq) and the block-wise
reconstruction engine; :mod:`compactlm.registry` lists them by name."""
