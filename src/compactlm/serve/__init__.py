"""The real-inference path users call: text generation and speed/memory measurement.

:func:`prepare_for_inference` puts a loaded model in its deployed form (dtype, device, kernel
backends), :func:`generate_text` answers a prompt, :func:`measure_speed` times prefill and decode.
"""

from compactlm.serve.generate import generate_text
from compactlm.serve.runtime import choose_device, choose_dtype, prepare_for_inference
from compactlm.serve.speed import measure_speed, model_bytes, path_bytes, resident_mb

__all__ = ["generate_text", "choose_device", "choose_dtype", "prepare_for_inference", "measure_speed",
           "model_bytes", "path_bytes", "resident_mb"]
