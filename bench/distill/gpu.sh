#!/usr/bin/env bash
# The distillation grid of issue 15 at a GPU budget, in one command (~8 minutes on one H200: an
# estimate, this script has not been run yet). Rows are resumable: if the time budget stops it,
# rerunning continues where it stopped; finished rows land in bench/results/distill.{json,md,png}
# under the tag gpu-h200, beside the cpu-tiny rows.
#
#   bash bench/distill/gpu.sh                 # BUDGET_S=540 by default
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
timeout "${BUDGET_S:-540}" "$PY" bench/distill/run.py --tag gpu-h200 --device cuda \
  --data olmo-gen --unseen-tasks drop,trivia_qa,gsm8k \
  --samples 1024 --seq-len 256 --max-new-tokens 32 \
  --student-layers 15 --sft-steps 100 --sft-lr 1e-4 --steps 60 --lr 5e-5 --batch-size 8 \
  --eval-samples 24 --eval-seeds 0,1,2,3,4 --ppl-tokens 20480 \
  --rows teacher,sft-init,sft,kd,rkl,seqkd,gkd,distillm,promptkd,promptkd-w4,kd-w4 \
  || echo "stopped (time budget or a failed row); rerun the same command to resume"
"$PY" bench/distill/run.py --report
