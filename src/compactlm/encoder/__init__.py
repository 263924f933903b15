"""Encoder compression: task fine-tuning (the FP teacher), sub-2-bit QAT with attention-map /
attention-output distillation (Kim et al., EMNLP 2022) and SDQ self-distilled 8-bit QAT with
Quant-Noise (O'Neill & Dutta, 2023). See ``docs/encoder.md``."""
