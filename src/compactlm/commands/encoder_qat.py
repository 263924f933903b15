"""Encoder QAT / SDQ from the command line.

Two entry points:

* ``compactlm qat --model runs/teacher --task sarcasm --scheme w2a8 --loss attn-map ...``: the
  general ``qat`` command (decoders, TSLD) calls :func:`add_encoder_arguments` on its parser and
  delegates here with :func:`run_encoder_qat_command` when ``--task`` is given. ``--loss`` is one of
  ``score-mse``, ``attn-map``, ``attn-out``, ``map-out`` (:data:`compactlm.encoder.qat.VARIANTS`) or
  ``sdq``.
* ``compactlm sdq --model runs/teacher --task sarcasm``: SDQ (W8A8, Quant-Noise + logits / attention
  KL), the same as ``compactlm qat --task ... --loss sdq --scheme w8a8``.

Both take ``--recipe file.yaml`` (keys as the flags, ``_`` for ``-``; flags win), e.g.
``bench/encoder/recipes/w2a8-map-out.yaml``.

``--scheme`` is a :class:`~compactlm.quant.QuantScheme` string, the same vocabulary as ``compactlm
quantize``: the paper settings are ``w2a8-tensor-actsym`` (the encoder QAT default: ternary weights,
8-bit symmetric dynamic per-tensor activations), ``w4a8-sym-tensor-actsym`` and
``w8a8-dynamic-actsym`` (the SDQ default). The weight quantizer comes from ``--quantizer`` /
``--per`` / ``--clip`` (defaults: the paper's, :data:`compactlm.encoder.qat.ENCODER_QAT`: TWN per
tensor, pre-clip 2.5, per-row ternary embeddings; SDQ: no pre-clip; ``--clip 0``: none).

Both write a quantized run directory (``<out>/model``, ``quantization.json``, ``quant_state.safetensors``
— reloadable with ``load_model(out)`` — plus ``report.json`` with validation / test accuracy, the
canonical scheme name and the QAT config), atomically. While training, checkpoints go to
``<out>.ckpt/``: rerunning the same command resumes there; ``--overwrite`` starts over.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import shutil

log = logging.getLogger(__name__)

ENCODER_DEFAULTS = {"steps": None, "lr": 2e-5, "batch_size": 32}


def add_encoder_arguments(p: argparse.ArgumentParser) -> None:
    """Add the encoder-only flags (all default ``None``) to a ``qat``-style parser.

    The parser is expected to define ``--model --scheme --loss --steps --seq-len --out --seed --lr
    --batch-size`` itself; these are read from the parsed namespace, never redefined here.
    """
    from compactlm.data.classification import TASKS

    g = p.add_argument_group("encoder QAT / SDQ (with --task)")
    g.add_argument("--task", default=None, choices=sorted(TASKS),
                   help="classification task: switches to encoder QAT of a fine-tuned teacher (see `compactlm finetune`)")
    g.add_argument("--train-limit", type=int, default=None, help="encoder: seeded subset of the train split (default: all)")
    g.add_argument("--eval-limit", type=int, default=None, help="encoder: seeded subset of validation/test (default: all)")
    g.add_argument("--beta", type=float, default=None, help="SDQ: weight of the attention KL (default 1)")
    g.add_argument("--p-start", type=float, default=None, help="SDQ: Quant-Noise share at the first step (default 0.1)")
    g.add_argument("--ramp", type=float, default=None, help="SDQ: fraction of steps until all blocks are quantized (default 0.8)")


DECODER_ONLY = ("freeze_embeddings", "temperature", "tsld_tau", "data", "samples", "grad_accum", "schedule")
"""Flags of the decoder ``qat`` parser that encoder QAT does not use (an error when typed with ``--task``)."""
ENCODER_ONLY = ("train_limit", "eval_limit", "beta", "p_start", "ramp")
"""Flags :func:`add_encoder_arguments` adds that only encoder QAT / SDQ use."""

RECIPE_KEYS = ("model", "task", "scheme", "quantizer", "per", "clip", "loss", "steps", "seq_len", "lr", "batch_size",
               "warmup", "seed", "train_limit", "eval_limit", "checkpoint_every", "beta", "p_start", "ramp")


def apply_recipe(args: argparse.Namespace, path: str) -> None:
    """Fill the flags left unset (``None``) from a recipe (:func:`compactlm.recipes.load_recipe`;
    keys as the flags, ``_`` for ``-``). Flags given on the command line win over the recipe."""
    from compactlm.recipes import load_recipe

    for key, value in load_recipe(path, known=RECIPE_KEYS).items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)


def _arg(args: argparse.Namespace, name: str, default=None):
    value = getattr(args, name, None)
    return default if value is None else value


def build_config(args: argparse.Namespace):
    """The :class:`EncoderQATConfig` / :class:`SDQConfig` an argument namespace asks for."""
    from compactlm.encoder.qat import VARIANTS, EncoderQATConfig
    from compactlm.encoder.sdq import SDQConfig
    from compactlm.errors import CompactLMError

    loss = _arg(args, "loss")
    if loss not in (*VARIANTS, "sdq"):
        raise CompactLMError(f"--loss: with --task, choose one of {', '.join((*VARIANTS, 'sdq'))}; got {loss!r}")
    cls = SDQConfig if loss == "sdq" else EncoderQATConfig
    defaults = {f.name: f.default for f in dataclasses.fields(cls)}
    clip = _arg(args, "clip", defaults["clip"])
    common = dict(
        scheme=_arg(args, "scheme", defaults["scheme"]),
        quantizer=_arg(args, "quantizer", defaults["quantizer"]),
        per=_arg(args, "per", defaults["per"]),
        clip=None if clip is not None and float(clip) == 0 else clip,
        checkpoint_every=_arg(args, "checkpoint_every", defaults["checkpoint_every"]),
        task=args.task,
        steps=_arg(args, "steps"),
        lr=_arg(args, "lr", ENCODER_DEFAULTS["lr"]),
        batch_size=_arg(args, "batch_size", ENCODER_DEFAULTS["batch_size"]),
        warmup=_arg(args, "warmup", 0.1),
        max_length=_arg(args, "seq_len"),
        train_limit=_arg(args, "train_limit"),
        eval_limit=_arg(args, "eval_limit"),
        seed=_arg(args, "seed", 0),
    )
    if loss == "sdq":
        return SDQConfig(beta=_arg(args, "beta", 1.0), p_start=_arg(args, "p_start", 0.1),
                         ramp=_arg(args, "ramp", 0.8), **common)
    return EncoderQATConfig(loss=loss, **common)


def run_encoder_qat_command(args: argparse.Namespace) -> int:
    """Run encoder QAT or SDQ for a parsed ``qat`` / ``sdq`` namespace; writes the run directory."""
    import torch

    from compactlm.data.classification import get_task
    from compactlm.encoder.qat import run_encoder_qat
    from compactlm.encoder.sdq import SDQConfig, run_sdq
    from compactlm.errors import CompactLMError
    from compactlm.io import atomic_dir, write_json
    from compactlm.models import load_model, save_quantized
    from compactlm.train import resume_dir

    from compactlm.commands.args import reject_unused

    reject_unused(args, DECODER_ONLY, "encoder QAT (--task)")
    if getattr(args, "recipe", None):
        apply_recipe(args, args.recipe)
    if not getattr(args, "out", None):
        raise CompactLMError("--out: give the run directory to write")
    if not getattr(args, "model", None):
        raise CompactLMError("--model: give the fine-tuned teacher (a `compactlm finetune` run directory)")
    if os.environ.get("COMPACTLM_THREADS"):
        torch.set_num_threads(int(os.environ["COMPACTLM_THREADS"]))
    config = build_config(args)
    from compactlm.devices import choose_device

    device = choose_device(getattr(args, "device", None))
    task = get_task(config.task)
    progress = not getattr(args, "no_progress", False)
    overwrite = bool(getattr(args, "overwrite", False))
    ckpt = resume_dir(args.out, overwrite)
    with atomic_dir(args.out, overwrite=overwrite) as tmp:
        teacher, tokenizer = load_model(args.model, head="sequence-classification", num_labels=task.num_labels,
                                        device=device)
        if isinstance(config, SDQConfig):
            student, report = run_sdq(teacher, tokenizer, config, progress=progress, checkpoint_dir=ckpt)
        else:
            student, report = run_encoder_qat(teacher, tokenizer, config, progress=progress, checkpoint_dir=ckpt)
        extra = {"method": report.get("method", "encoder-qat"), "teacher": str(args.model),
                 **{k: v for k, v in dataclasses.asdict(config).items()}, "scheme": report["scheme"],
                 "qat_config": report["qat_config"]}
        save_quantized(student, tokenizer, tmp, extra_config=extra)
        write_json(tmp / "report.json", {"model": str(args.model), **report})
    shutil.rmtree(ckpt, ignore_errors=True)
    print(f"{config.task} {report['scheme']} {config.loss}: validation acc {report['val_acc']:.4f}, "
          f"test acc {report['test_acc']:.4f} -> {args.out}")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    """``compactlm sdq``: SDQ of a fine-tuned encoder (W8A8 by default)."""
    p = sub.add_parser(
        "sdq",
        help="SDQ: self-distilled 8-bit QAT of a fine-tuned encoder (Quant-Noise + logits/attention KL)",
        description="Self-distilled quantization (O'Neill & Dutta 2023) of a `compactlm finetune` run; writes a "
        "quantized run directory with report.json.",
    )
    p.add_argument("--recipe", default=None, help="YAML recipe (keys as the flags, _ for -); flags override it")
    p.add_argument("--model", default=None, help="fine-tuned teacher: a `compactlm finetune` run directory")
    p.add_argument("--scheme", default=None,
                   help="quantization scheme (default w8a8-dynamic-actsym: 8-bit symmetric weights per row and "
                   "dynamic per-tensor activations)")
    p.add_argument("--quantizer", default=None, help="auto | twn | pact | lsq | minmax (default auto)")
    p.add_argument("--per", default=None, help="TWN granularity at 2 bits: tensor (default) | channel")
    p.add_argument("--clip", type=float, default=None, help="symmetric pre-clip of the latent weights (default: none)")
    p.add_argument("--checkpoint-every", type=int, default=None, help="steps between checkpoints (default 50)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps (default: 3 epochs over the train data)")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate (default 2e-5)")
    p.add_argument("--batch-size", type=int, default=None, help="examples per step (default 32)")
    p.add_argument("--seq-len", type=int, default=None, help="tokens per example (default: the task's)")
    p.add_argument("--seed", type=int, default=None, help="seed of data order and subsets (default 0)")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--out", required=True, help="run directory to create")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out and its checkpoint")
    add_encoder_arguments(p)
    p.set_defaults(func=_run_sdq, loss="sdq")


def _run_sdq(args: argparse.Namespace) -> int:
    from compactlm.errors import CompactLMError

    if args.recipe:
        apply_recipe(args, args.recipe)
    if args.task is None:
        raise CompactLMError("--task: SDQ needs the classification task the teacher was fine-tuned on")
    args.loss = "sdq"
    return run_encoder_qat_command(args)
