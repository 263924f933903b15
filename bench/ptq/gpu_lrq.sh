#!/usr/bin/env bash
# LRQ at the authors' budget (issue 14): 5,000 iterations per block, the authors' Llama-2-7B W3A16
# recipe (hybrid rank rule: attention low rank / MLP full; 2-D clip search for s1; LRQ's lr 6e-4;
# batch 2; autocast, here bf16) on smollm2-135m, one H200. NOT RUN YET: sized, not measured.
#
# Sizing: 30 blocks x 5,000 steps = 150k steps; the ~8-minute window needs <= ~3 ms per step (a
# 135M block on 2x256 tokens is launch-bound on a GPU). The row is resumable per block
# (--work under $OUT, so a killed run's finished blocks come back and a rerun with the same command
# continues); the report's it_per_s says what a step cost, to size the next try.
# Usage (device machine, repository root):  bash bench/ptq/gpu_lrq.sh
set -euo pipefail
OUT="${OUT:-runs/gpu-lrq}"
ITERS="${ITERS:-5000}"
LIMIT="${LIMIT:-480}"  # seconds for the whole row, leaving time to copy results back
PY="${PY:-.venv/bin/python}"
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv || true
timeout "$LIMIT" "$PY" bench/ptq/lrq_sweep.py --rows lrq-authors-lp2d --device cuda --amp bf16 \
    --iters "$ITERS" --lr 6e-4 --zeroshot-limit 250 --results "$OUT/ptq-lrq-gpu.json" --work "$OUT/work" || echo "stopped (rc=$?); rerun to resume"
# the FlexRound peer at the same budget (authors' lr 2.5e-3), if there is time left on another call:
#   "$PY" bench/ptq/lrq_sweep.py --rows flexround --device cuda --amp bf16 --iters "$ITERS" --lr 2.5e-3 \
#       --results "$OUT/ptq-lrq-gpu.json" --work "$OUT/work"
ls -la "$OUT" || true
