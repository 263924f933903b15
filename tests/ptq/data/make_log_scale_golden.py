"""Writes log_scale_rounding_golden.safetensors: FlexRound / LRQ quantizer outputs from the
implementation before they became WeightQuantizers (commit c2d817d: the quantizer held W,
``forward()`` / ``bake()``): forward Ŵ, the gradient of every parameter, the baked grid.

Run against a checkout of that commit, e.g.
``git archive c2d817d src | tar -x -C /tmp/old && PYTHONPATH=/tmp/old/src python make_log_scale_golden.py out.safetensors``.
"""
import sys, torch
from compactlm.ptq.flexround import FlexRoundQuantizer
from compactlm.ptq.lrq import LRQQuantizer
from compactlm.quant.scheme import parse_scheme

CASES = [("flexround", "w4a16", "minmax"), ("flexround", "w3a16-g16", "lp"),
         ("lrq", "w4a16-sym", "minmax"), ("lrq", "w2a16-g16", "lp")]
out = {}
for method, scheme, clip in CASES:
    g = torch.Generator().manual_seed(7)
    w = torch.randn(16, 32, generator=g)
    s = parse_scheme(scheme)
    q = FlexRoundQuantizer(w, s, clip) if method == "flexround" else LRQQuantizer(w, s, rank=3, clip=clip, generator=g)
    with torch.no_grad():
        for name, p in q.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.3 if name in ("L", "log_S2") else 0.05))
    params = {n: p.detach().clone() for n, p in q.named_parameters()}
    w_hat = q()  # old interface: the weight is a buffer of the quantizer
    upstream = torch.randn(w_hat.shape, generator=g)
    (w_hat * upstream).sum().backward()
    baked = q.bake()
    out[f"{method}/{scheme}/{clip}"] = {
        "w": w, "upstream": upstream, "w_hat": w_hat.detach(),
        **{f"param.{n}": v for n, v in params.items()},
        **{f"grad.{n}": p.grad.clone() for n, p in q.named_parameters()},
        "int_weight": baked.int_weight, "scale": baked.scale, "zero_point": baked.zero_point,
    }
from safetensors.torch import save_file
save_file({f"{c}|{k}": v.contiguous() for c, d in out.items() for k, v in d.items()}, sys.argv[1])
print({k: sorted(v) for k, v in out.items()})
