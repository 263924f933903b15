#!/usr/bin/env bash
# The real CKD / DynaBERT grid on one GPU (~8 minutes on an H200; prepared, not yet run).
#   here:   bash bench/ckd/prepare_gpu.sh
#   device: run(command="bash bench/ckd/gpu.sh", carry=[".gpu-carry"], timeout_s=600)
# Rows go to $OUT/ckd.json (+ ckd.md, ckd.png); merge them into bench/results/ with
#   .venv/bin/python bench/ckd/merge.py <files_at>/ckd.json
# Grid: students l3 and w50 x 6 variants x seeds 0,1,2 (half an epoch of the 12,800-example train
# subset: 200 steps, batch 32, LR 1e-4, 32 tokens), full validation (1,000) and test (2,000) sets;
# then DynaBERT and DynaBERT+CKD (ckd loss), 100 steps per stage, all 12 sub-networks, seeds 0,1,2.
# The order puts the distillation grid first; the runner is resumable, so a rerun finishes the rest.
set -uo pipefail
cd "$(dirname "$0")/../.."
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 COMPACTLM_CACHE=$PWD/.gpu-carry/cache HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
OUT=${OUT:-/tmp/ckd-out}; mkdir -p "$OUT"
PY=${PYTHON:-python3}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
"$PY" -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__, torch.cuda.is_available())"
timeout 560 "$PY" bench/ckd/run.py --teacher .gpu-carry/teacher --device cuda --seeds 0,1,2 \
    --students l3,w50 --variants none,kd,kd-hidden,ckd,wr,ltr --steps 200 --batch-size 32 --lr 1e-4 --seq-len 32 \
    --train-limit 12800 --dynabert dynabert,ckd --dyna-steps 100 --runs /tmp/ckd-runs --results "$OUT/ckd.json" \
    2>&1 | grep -v "not sharded" | tee "$OUT/log.txt"
ls -la "$OUT"
