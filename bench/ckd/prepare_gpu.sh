#!/usr/bin/env bash
# Prepare what bench/ckd/gpu.sh needs on a bare, offline GPU machine (run HERE, once):
#   .gpu-carry/cache/...   the sarcasm rows (the one file of the evals wheel the task reads), ~7 MB
#   .gpu-carry/teacher     the fine-tuned teacher in float16 (~45 MB; gpu.sh loads it back as float32)
# Then, with the device tool: run(command="bash bench/ckd/gpu.sh", carry=[".gpu-carry"], timeout_s=600).
set -euo pipefail
cd "$(dirname "$0")/../.."
TEACHER=${TEACHER:-runs/encoder/teacher-sarcasm}
grep -qx '/.gpu-carry/' .git/info/exclude 2>/dev/null || echo '/.gpu-carry/' >> .git/info/exclude
rm -rf .gpu-carry && mkdir -p .gpu-carry/cache/pkgs/evals-3.0.1.post1/evals/registry/data/sarcasm
SRC=$(.venv/bin/python -c "from compactlm.cache import wheel_file; print(wheel_file('evals', '3.0.1.post1', 'evals/registry/data/sarcasm/samples.jsonl'))")
cp "$SRC" .gpu-carry/cache/pkgs/evals-3.0.1.post1/evals/registry/data/sarcasm/samples.jsonl
.venv/bin/python - "$TEACHER" <<'PY'
import sys, torch
from compactlm.models import load_model
model, tok = load_model(sys.argv[1], head="sequence-classification")
model.to(torch.float16).save_pretrained(".gpu-carry/teacher/model")
tok.save_pretrained(".gpu-carry/teacher/model")
PY
du -sh .gpu-carry
