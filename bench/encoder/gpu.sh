#!/usr/bin/env bash
# The encoder W2A8 KD-QAT grid at a full budget on one GPU (prepared, not yet run: no GPU was lent).
#   here:   bash bench/ckd/prepare_gpu.sh          (the sarcasm rows + the fp16 teacher in .gpu-carry/)
#   device: run(command="bash bench/encoder/gpu.sh", carry=[".gpu-carry"], timeout_s=600)
# Grid: FP + RTN rows, then the 4 loss variants (score-mse, attn-map, attn-out, map-out) at W2A8 x seeds
# 0,1,2, each one epoch of the 12,800-example train subset (800 steps x batch 16, LR 1e-4, 32 tokens),
# scored on the full 2,000-example test split. Rows go to $OUT/encoder-gpu.json (+ .md/.png); copy them
# into bench/results/ (the records carry the device). Resumable: a rerun finishes what is missing.
set -uo pipefail
cd "$(dirname "$0")/../.."
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 COMPACTLM_CACHE=$PWD/.gpu-carry/cache HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
OUT=${OUT:-/tmp/encoder-out}; mkdir -p "$OUT"
PY=${PYTHON:-python3}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
timeout 560 "$PY" bench/encoder/run.py --teacher .gpu-carry/teacher --device cuda --steps 800 --batch-size 16 \
    --lr 1e-4 --max-length 32 --eval-limit 2000 --seeds 0,1,2 --only fp,rtn:w2a8,qat:w2a8 \
    --results "$OUT/encoder-gpu.json" 2>&1 | tee "$OUT/log.txt"
ls -la "$OUT"
