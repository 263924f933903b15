"""``run_qat``: QAT with distillation of a generative LM end to end (the ``compactlm qat`` command).

Teacher = the full-precision model; student = a copy prepared with :func:`~compactlm.qat.prepare_qat`;
trained by :class:`~compactlm.train.Trainer` on :class:`~compactlm.distill.lm.LMDistillLoss`;
baked with :func:`~compactlm.qat.convert_qat`; written like ``compactlm quantize`` writes a run:
``<out>/model`` + ``quantization.json`` + ``quant_state.safetensors`` (so ``load_model(out)`` and
``compactlm export`` work), ``config.json`` (the recipe), ``report.json`` (loss history, time).

The directory appears atomically at the end; while training, checkpoints go to ``<out>.ckpt/`` and
a rerun with the same recipe resumes from there (deleted once the run directory is written).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import shutil
import time
from pathlib import Path

import torch

from compactlm.distill.lm import LMDistillLoss, parse_terms
from compactlm.train import Trainer, resume_dir
from compactlm.qat.prepare import convert_qat, fake_quant_state, prepare_qat
from compactlm.qat.recipe import QATRecipe
from compactlm.quant.scheme import QuantScheme

log = logging.getLogger(__name__)


def training_tokens(tokenizer, recipe: QATRecipe, vocab_size: int) -> torch.Tensor:
    """``(samples, seq_len)`` training windows (random ids for tokenizer-less tiny models)."""
    if tokenizer is None:
        g = torch.Generator().manual_seed(recipe.seed)
        return torch.randint(2, vocab_size, (recipe.samples, recipe.seq_len), generator=g)
    from compactlm.data import token_samples

    return token_samples(tokenizer, recipe.data, n=recipe.samples, seq_len=recipe.seq_len, seed=recipe.seed)


def train_qat(student, teacher, data: torch.Tensor, recipe: QATRecipe, checkpoint_dir=None, accelerator=None,
              progress: bool = True) -> Trainer:
    """Prepare ``student`` for QAT in place and train it against the frozen ``teacher``; returns the trainer.

    The student keeps its fake-quant layers (convert with :func:`~compactlm.qat.convert_qat`).
    ``data`` is ``(N, T)`` token ids. With ``recipe.freeze_embeddings`` the input embeddings and
    ``lm_head`` stay at their values. The teacher is put in eval mode with its gradients off. Shared by :func:`run_qat` and :func:`compactlm.qat`.
    """
    scheme = QuantScheme.parse(recipe.scheme)
    prepare_qat(student.requires_grad_(True), scheme, recipe.qat_config())
    if recipe.freeze_embeddings:
        for emb in (student.get_input_embeddings(), student.get_output_embeddings()):
            if emb is not None:
                emb.requires_grad_(False)
    objective = LMDistillLoss(teacher, parse_terms(recipe.loss), recipe.temperature, recipe.tsld_tau)
    trainer = Trainer(student, objective, data, recipe.train_config(), checkpoint_dir=checkpoint_dir,
                      accelerator=accelerator, progress=progress, extra_modules=(teacher,),
                      job=recipe.job_settings(), desc=f"qat {scheme.name}")
    trainer.train()
    return trainer


def run_qat(
    recipe: QATRecipe | None = None,
    out: str | Path | None = None,
    overwrite: bool = False,
    progress: bool = True,
    accelerator=None,
    teacher=None,
    tokenizer=None,
    **overrides,
):
    """Quantization-aware training with distillation.

    Args:
        recipe: A :class:`QATRecipe` (default one if ``None``); ``overrides`` replace its fields.
        out: Run directory to write (``None``: keep the model in memory only, no checkpoints).
        overwrite: Replace an existing ``out``.
        progress: tqdm bar with per-term losses.
        accelerator: An ``accelerate.Accelerator`` (created if ``None``).
        teacher, tokenizer: An already loaded FP model (else ``recipe.model`` is loaded).

    Returns:
        ``(student, tokenizer, report)``: the converted student (``QuantLinear`` modules) and a
        report dict with the loss history and timings.

    Example:
        >>> from compactlm.qat import run_qat
        >>> model, tok, report = run_qat(model="smollm2-135m", scheme="w2a16", loss="tsld", steps=100,
        ...                              out="runs/qat-tsld")
    """
    from compactlm.io import atomic_dir, write_json
    from compactlm.models import load_model, save_quantized

    recipe = (recipe or QATRecipe()).replace(**overrides)
    scheme = QuantScheme.parse(recipe.scheme)
    ckpt = None if out is None else resume_dir(out, overwrite)
    torch.manual_seed(recipe.seed)
    if teacher is None:
        teacher, tokenizer = load_model(recipe.model)
    data = training_tokens(tokenizer, recipe, teacher.config.vocab_size)
    t0 = time.perf_counter()
    trainer = train_qat(copy.deepcopy(teacher), teacher, data, recipe, checkpoint_dir=ckpt,
                        accelerator=accelerator, progress=progress)
    history = trainer.history
    student = trainer.unwrapped.eval()
    quantizers = fake_quant_state(student)
    convert_qat(student)
    tail = history[-min(10, len(history)):]
    report = {
        "method": "qat",
        "scheme": scheme.name,
        "model": recipe.model,
        "loss_terms": [list(t) for t in parse_terms(recipe.loss)],
        "quantizer": recipe.qat_config().resolve(scheme),
        "qat_config": dataclasses.asdict(recipe.qat_config()),
        "steps": recipe.steps,
        "tokens_per_step": recipe.batch_size * recipe.grad_accum * recipe.seq_len,
        "train_tokens": recipe.steps * recipe.batch_size * recipe.grad_accum * recipe.seq_len,
        "processes": trainer.accelerator.num_processes,
        "resumed_at_step": trainer.resumed_at,
        "seconds": round(trainer.seconds, 2),
        "seconds_this_run": round(time.perf_counter() - t0, 2),
        "final_loss_mean_last10": {k: sum(h[k] for h in tail) / len(tail) for k in tail[0] if k not in ("step", "lr")},
        "history": history,
        "quantized_layers": len(quantizers),
    }
    if out is not None and trainer.accelerator.is_main_process:
        with atomic_dir(out, overwrite=overwrite) as tmp:
            save_quantized(student, tokenizer, tmp, extra_config={"method": "qat", "scheme": scheme.name})
            write_json(tmp / "config.json", {"command": "qat", "recipe": recipe.to_dict(), "scheme_fields": scheme.to_dict(),
                                             "qat_config": report["qat_config"]})
            write_json(tmp / "report.json", report)
        shutil.rmtree(ckpt, ignore_errors=True)
    if out is not None:
        trainer.accelerator.wait_for_everyone()
    return student, tokenizer, report
