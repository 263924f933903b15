"""Writes engine_golden.safetensors: the grids and block losses of end-to-end FlexRound / LRQ
reconstruction runs on a tiny llama with the engine as it was before held-out splits, rank rules
and the speed work of issue 14 (commit 97ca054). With ``holdout=0`` the engine must reproduce them
bit for bit (tests/ptq/test_holdout.py).

Run against a checkout of that commit, e.g.
``git archive 97ca054 src | tar -x -C /tmp/old && PYTHONPATH=/tmp/old/src python make_engine_golden.py out.safetensors``.
"""
import sys

import torch
from safetensors.torch import save_file

from compactlm.api import quantize
from compactlm.models.tiny import tiny_model
from compactlm.quant.linear import QuantLinear

torch.set_num_threads(1)
CASES = [("flexround", "w3a16", dict(iters=6, lr=1e-2, seed=1)),
         ("lrq", "w4a16", dict(iters=6, lr=1e-2, seed=2, batch_size=3)),
         ("lrq", "w8a8", dict(iters=3, lr=1e-2, seed=0))]
calib = torch.randint(2, 128, (8, 24), generator=torch.Generator().manual_seed(5))
out = {"calib": calib}
for method, scheme, opts in CASES:
    model = tiny_model("llama")
    report = quantize(model, method, scheme, calib=calib, **opts)
    case = f"{method}/{scheme}"
    for n, m in model.named_modules():
        if isinstance(m, QuantLinear):
            out[f"{case}|{n}.int_weight"] = m.int_weight
            out[f"{case}|{n}.scale"] = m.weight_scale
            out[f"{case}|{n}.zero_point"] = m.weight_zero_point
    out[f"{case}|loss_after"] = torch.tensor([b["loss_after"] for b in report["blocks"]], dtype=torch.float64)
save_file({k: v.contiguous() for k, v in out.items()}, sys.argv[1])
print(sorted({k.split("|")[0] for k in out}))
