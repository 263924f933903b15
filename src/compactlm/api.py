"""Python API: thin orchestration over the registry, models, data and evaluation.

One shape for every verb (torchao-like): it takes a model object and configuration, changes the
model in place, returns a JSON-able report, and writes nothing — saving is explicit
(:func:`compactlm.save_quantized`).

    >>> import compactlm
    >>> model, tok = compactlm.load_model("smollm2-135m")
    >>> calib = compactlm.data.token_samples(tok, "wiki", n=32, seq_len=512, seed=0)
    >>> report = compactlm.quantize(model, "rtn", "w4a16", calib=calib, clip="lp")
    >>> report = compactlm.qat(model2, "w2a16", data=calib, loss="tsld", steps=100)
    >>> report = compactlm.distill(student, teacher, tok, loss="promptkd", steps=100)
    >>> handle = compactlm.apply_luts(model3)          # handle.report(), handle.remove()
"""

from __future__ import annotations

import dataclasses
import resource
import time
from typing import Any

import torch
from torch import nn

from compactlm.errors import CompactLMError
from compactlm.models.specs import get_spec, iter_block_linears, linear_weight
from compactlm.quant.primitives import group_size_for
from compactlm.quant.scheme import QuantScheme
from compactlm.registry import get_method


def peak_memory_mb() -> float:
    """Peak resident memory of this process (CPU) or peak CUDA allocation, in MiB."""
    if torch.cuda.is_available() and torch.cuda.max_memory_allocated() > 0:
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _check_scheme_fits(model: nn.Module, scheme: QuantScheme) -> None:
    """Fail before any work if the scheme's group size does not divide a linear's input width."""
    for name, module in iter_block_linears(model):
        try:
            group_size_for(linear_weight(module).shape[1], scheme.w_group_size)
        except CompactLMError as e:
            raise CompactLMError(f"--scheme {scheme.name}: {e} (layer {name})") from None


def quantize(
    model: nn.Module,
    method: str = "rtn",
    scheme: "str | QuantScheme" = "w4a16",
    calib: torch.Tensor | None = None,
    **options: Any,
) -> dict:
    """Quantize ``model`` in place with a registered method.

    Args:
        model: A supported HF model (see ``compactlm models``).
        method: Registered method name (``compactlm methods``).
        scheme: Preset or scheme string (``"w4a16"``, ``"w2a16-g64"``, ``"w8a8"``...).
        calib: ``(N, T)`` token ids for methods that need calibration data.
        **options: Fields of the method's options dataclass (e.g. ``iters=200`` for LRQ).

    Returns:
        The method's report plus ``method``, ``scheme``, ``options``, ``seconds``, ``peak_mem_mb``.
    """
    get_spec(model)  # fails early, listing the supported architectures
    m = get_method(method)
    scheme = QuantScheme.parse(scheme)
    config = m.make_config(options)
    if m.needs_calibration and calib is None:
        raise CompactLMError(f"method {method!r} needs calibration data: pass calib (CLI: --calib wiki)")
    if calib is not None and (calib.dim() != 2 or calib.numel() == 0):
        raise CompactLMError(f"calib: expected a non-empty (N, T) tensor of token ids, got shape {list(calib.shape)}")
    _check_scheme_fits(model, scheme)
    start = time.perf_counter()
    was_training = model.training
    model.eval()  # calibration forwards without dropout, whatever mode the caller left the model in
    try:
        report = m.apply(model, scheme, config, calib)
    finally:
        model.train(was_training)
    return {
        "method": method,
        "scheme": scheme.name,
        "options": dataclasses.asdict(config),
        **report,
        "seconds": round(time.perf_counter() - start, 2),
        "peak_mem_mb": round(peak_memory_mb(), 1),
    }


def _fields(cls) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def _check_options(what: str, options: dict, allowed: set[str]) -> None:
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise CompactLMError(f"{what}: unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(allowed))}")


def qat(
    model: nn.Module,
    scheme: "str | QuantScheme" = "w2a16",
    data: torch.Tensor | None = None,
    *,
    loss: Any = None,
    teacher: nn.Module | None = None,
    task: str | None = None,
    tokenizer=None,
    progress: bool = True,
    **options: Any,
) -> dict:
    """Quantization-aware training with distillation, in place; the model ends on the integer grid.

    The teacher is a frozen copy of ``model`` taken before any change (or ``teacher``). Decoders
    train on ``data`` with the LM distillation terms (:class:`~compactlm.qat.recipe.QATRecipe`
    fields as ``options``: ``steps``, ``lr``, ``batch_size``, ``quantizer``, ``temperature``...);
    encoders (BERT-like) train on the classification ``task`` with the attention KD variants
    (:class:`~compactlm.encoder.qat.EncoderQATConfig` fields; ``tokenizer`` needed).

    Args:
        model: A supported HF model (``compactlm models``); changed in place.
        scheme: Scheme string or :class:`QuantScheme` (``"w2a16"``, ``"w2a8-tensor-actsym"``...).
        data: Decoders: ``(N, T)`` training token ids.
        loss: Decoders: a preset (``"tsld"``, ``"kd"``...) or terms; encoders: a KD variant
            (``"attn-map"``...). ``None``: the config's default.
        teacher: The FP teacher (default: a copy of ``model``); it is put in eval mode, frozen.
        task, tokenizer: Encoders: classification task and the model's tokenizer.
        progress: Progress bar.

    Returns:
        ``method``, ``scheme``, ``qat_config``, ``steps``, ``loss_start`` / ``loss_end`` (per term),
        ``history`` (per step), ``seconds``, ``peak_mem_mb``.
    """
    import copy

    from compactlm.train.trainer import TrainConfig

    spec = get_spec(model)
    scheme = QuantScheme.parse(scheme)
    if loss is not None:
        options["loss"] = loss
    start = time.perf_counter()
    if teacher is None:
        teacher = copy.deepcopy(model)
    if spec.kind == "encoder":
        from compactlm.encoder.finetune import encode_split
        from compactlm.encoder.qat import EncoderQATConfig, convert_encoder_qat, kd_qat, prepare_encoder_qat, resolve_terms

        if task is None or tokenizer is None:
            raise CompactLMError("qat: an encoder trains on a classification task: pass task= and tokenizer=")
        _check_options("qat", options, _fields(EncoderQATConfig) - {"task", "scheme"})
        config = EncoderQATConfig(task=task, scheme=scheme.name, **options)
        train = encode_split(tokenizer, task, "train", config.train_limit, config.seed, config.max_length)
        terms = resolve_terms(config.loss)
        prepare_encoder_qat(model, scheme, config.qat_config())
        trainer = kd_qat(model, teacher, train, terms, config.train_config(len(train["labels"])),
                         desc=f"qat {scheme.name} {config.loss}", progress=progress)
        convert_encoder_qat(model)
        qat_config = config.qat_config()
    else:
        from compactlm.qat.recipe import QATRecipe
        from compactlm.qat.run import train_qat

        if data is None or data.dim() != 2 or data.numel() == 0:
            raise CompactLMError("qat: data: expected a non-empty (N, T) tensor of training token ids")
        _check_options("qat", options, _fields(QATRecipe) - {"model", "scheme", "data", "samples", "seq_len", "extra"})
        recipe = QATRecipe(scheme=scheme.name, samples=data.shape[0], seq_len=data.shape[1], **options)
        trainer = train_qat(model, teacher, data, recipe, progress=progress)
        from compactlm.qat.prepare import convert_qat

        convert_qat(model)
        qat_config = recipe.qat_config()
    model.eval()
    history = trainer.history
    train_fields = _fields(TrainConfig)
    terms = [k for k in history[0] if k not in ("step", "lr")] if history else []
    mean = lambda rows: {k: round(sum(r[k] for r in rows) / len(rows), 5) for k in terms}  # noqa: E731
    return {
        "method": "qat",
        "scheme": scheme.name,
        "qat_config": dataclasses.asdict(qat_config),
        "train_config": {k: v for k, v in dataclasses.asdict(trainer.config).items() if k in train_fields},
        "steps": len(history),
        "loss_start": mean(history[:10]) if history else {},
        "loss_end": mean(history[-10:]) if history else {},
        "history": history,
        "seconds": round(time.perf_counter() - start, 2),
        "peak_mem_mb": round(peak_memory_mb(), 1),
    }


def apply_luts(model: nn.Module, luts: Any = "default", ops=("gelu", "silu", "softmax", "layernorm", "rmsnorm"),
               entries: int = 16):
    """Replace the model's non-linear operations by NN-LUT tables, in place.

    See :func:`compactlm.lut.apply.apply_luts`. Returns its :class:`~compactlm.lut.apply.LUTHandle`:
    ``handle.report()`` is the report (what was replaced, by which tables), ``handle.remove()``
    restores the exact original model.
    """
    from compactlm.lut.apply import apply_luts as _apply

    return _apply(model, luts=luts, ops=ops, entries=entries)


def distill(
    student: nn.Module,
    teacher: nn.Module,
    tokenizer,
    *,
    loss: str | None = None,
    task: str | None = None,
    progress: bool = True,
    **options: Any,
) -> dict:
    """Distil ``teacher`` into ``student`` in place; returns the report and writes nothing.

    Causal LMs (no ``task``): instruction data and the generative KD family —
    ``sft``, ``kd``, ``rkl``, ``seqkd``, ``gkd``, ``distillm``, ``promptkd`` — with the fields of
    :class:`~compactlm.distill.generative.DistillConfig` as ``options`` (``steps``, ``data``...); the
    report includes its ROUGE-L evaluation. Encoders (``task`` given): the classification task
    with the CKD family — ``none``, ``kd``, ``kd-hidden``, ``ckd``, ``wr``, ``ltr`` — and the fields of
    :class:`~compactlm.distill.ckd.DistillEncoderConfig`.

    Args:
        student: The student (shares the teacher's tokenizer); trained in place.
        teacher: The teacher (frozen during training).
        tokenizer: Their tokenizer.
        loss: Method / variant name (``None``: the config's default).
        task: Encoders: the classification task.
    """
    spec = get_spec(teacher)
    if loss is not None:
        options["loss"] = loss
    start = time.perf_counter()
    if task is not None or spec.kind == "encoder":
        from compactlm.distill.ckd import DistillEncoderConfig, run_distill_encoder

        if task is None:
            raise CompactLMError("distill: an encoder distils on a classification task: pass task=")
        _check_options("distill", options, _fields(DistillEncoderConfig) - {"task"})
        _, report = run_distill_encoder(teacher, tokenizer, DistillEncoderConfig(task=task, **options), student=student,
                                        progress=progress, eval_splits=())
    else:
        from compactlm.distill.generative import DistillConfig, run_distill

        _check_options("distill", options, _fields(DistillConfig) - {"teacher", "student"})
        report = run_distill(out=None, progress=progress, teacher=teacher, tokenizer=tokenizer, student=student,
                             **options)
    return {**report, "seconds": round(time.perf_counter() - start, 2), "peak_mem_mb": round(peak_memory_mb(), 1)}

