"""``compactlm qat``: quantization-aware training with distillation.

Generative LMs (TSLD and its baselines, :func:`compactlm.qat.run.run_qat`)::

    compactlm qat --model smollm2-135m --scheme w2a16 --loss tsld --data wiki --steps 100 \\
        --seq-len 128 --out runs/qat-tsld
    compactlm qat --recipe recipe.yaml --out runs/qat      # flags given beside a recipe override it
    accelerate launch --num_processes 2 -m compactlm.cli qat ...   # several processes (DDP)

With ``--task`` (a classification task), the run is an encoder QAT and is handed to
``compactlm.commands.encoder_qat`` (issue 5).
"""

from __future__ import annotations

import argparse
import json
import logging

from compactlm.commands import encoder_qat

log = logging.getLogger(__name__)

def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "qat",
        help="quantization-aware training with distillation (TSLD, logit KD, GT) into a run directory",
        description="Train a quantized student against its full-precision teacher; writes <out>/model, "
        "quantization.json, quant_state.safetensors, config.json and report.json (atomically); "
        "resumes from <out>.ckpt/ when rerun with the same settings.",
    )
    p.add_argument("--recipe", help="YAML recipe (keys as the flags below, with _ for -); flags override it")
    p.add_argument("--model", help="teacher and student init: embedded name, folder, hub id (default smollm2-135m)")
    p.add_argument("--scheme", help="quantization scheme, as in `compactlm quantize`: w2a16 (ternary TWN per channel), "
                   "w4a16, w4a16-g64, w4a8-kv8 ... (default w2a16; with --task w2a8-tensor-actsym)")
    p.add_argument("--quantizer", help="auto | twn | pact | lsq | minmax (default auto: twn at 2 bits, minmax above)")
    p.add_argument("--per", help="TWN granularity: channel | tensor (default channel; with --task tensor)")
    p.add_argument("--clip", type=float, help="symmetric pre-clip of the latent weights for twn / minmax "
                   "(default none; with --task 2.5, 0 for none)")
    p.add_argument("--train-embeddings", dest="freeze_embeddings", action="store_false", default=None,
                   help="also train the full-precision embeddings / lm_head (default: frozen at the teacher's)")
    p.add_argument("--loss", help="gt | kd | kd+gt | tsld | rkl | l2l, or term:weight,... (default tsld = tsld + gt)")
    p.add_argument("--temperature", type=float, help="KD temperature of kd/rkl (default 1)")
    p.add_argument("--tsld-tau", type=float, help="TSLD token-scale temperature (default 10)")
    p.add_argument("--data", help="training corpus: wiki, c4-sample, a .txt/.jsonl file (default wiki)")
    p.add_argument("--samples", type=int, help="training windows drawn from --data (default 256)")
    p.add_argument("--seq-len", type=int, help="tokens per window (default 128)")
    p.add_argument("--steps", type=int, help="optimizer steps (default 100)")
    p.add_argument("--batch-size", type=int, help="global windows per micro-batch (default 4)")
    p.add_argument("--grad-accum", type=int, help="micro-batches per step (default 1)")
    p.add_argument("--lr", type=float, help="peak AdamW learning rate (default 1e-4)")
    p.add_argument("--warmup", type=float, help="warm-up fraction of the steps (default 0.05)")
    p.add_argument("--schedule", help="linear | cosine | constant (default linear)")
    p.add_argument("--seed", type=int, help="data order and sampling seed (default 0)")
    p.add_argument("--checkpoint-every", type=int, help="steps between checkpoints (default 10; with --task 50)")
    p.add_argument("--out", required=True, help="run directory to create; rerun with the same --out to resume")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out and start over (drops its checkpoint)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    encoder_qat.add_encoder_arguments(p)  # --task and the encoder-only flags
    p.set_defaults(func=run)


_RECIPE_FLAGS = ("model", "scheme", "quantizer", "per", "clip", "freeze_embeddings", "loss", "temperature", "tsld_tau", "data",
                 "samples", "seq_len", "steps", "batch_size", "grad_accum", "lr", "warmup", "schedule", "seed",
                 "checkpoint_every")


def run(args: argparse.Namespace) -> int:
    if args.task:
        return int(encoder_qat.run_encoder_qat_command(args) or 0)
    from compactlm.commands.args import reject_unused

    reject_unused(args, encoder_qat.ENCODER_ONLY, "decoder QAT (no --task)", takes=("--task",))

    from compactlm.qat.recipe import QATRecipe
    from compactlm.qat.run import run_qat

    recipe = QATRecipe.from_yaml(args.recipe) if args.recipe else QATRecipe()
    recipe = recipe.replace(**{k: getattr(args, k, None) for k in _RECIPE_FLAGS})
    _, _, report = run_qat(recipe, out=args.out, overwrite=args.overwrite, progress=not args.no_progress)
    summary = {k: report[k] for k in ("scheme", "quantizer", "steps", "train_tokens", "seconds")}
    summary["final_loss"] = report["final_loss_mean_last10"]
    print(f"wrote {args.out}: {json.dumps(summary)}")
    return 0
