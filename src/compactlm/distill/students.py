"""Students derived from a causal-LM teacher: depth-pruned copies, optionally fake-quantized.

:func:`depth_pruned_student` deep-copies the teacher and keeps ``N`` of its blocks
(:func:`compactlm.models.prune.prune_depth`, the block list from the ``ArchSpec``); embeddings,
final norm, ``lm_head`` and the kept blocks are the teacher's exactly. Then the copy is made a
consistent *smaller* decoder: ``config.num_hidden_layers`` shrinks, per-layer config lists
(``layer_types``: Gemma-3's sliding/full pattern, Qwen2's) keep the kept layers' entries, and every
``layer_idx`` inside the kept blocks is renumbered ``0..N−1`` (the KV cache is indexed by it, so a
stale index breaks ``generate`` and even a plain forward). It saves with ``save_pretrained`` and
loads as a plain HF model.

Which blocks (:func:`decoder_keep`): ``N`` evenly spaced *including the first and the last*,
``round(i·(n−1)/(N−1))``. For decoders the first block matters most: on SmolLM2-135M (30 blocks,
wiki PPL 28 on 8×256 tokens) keeping 15 blocks gives PPL 2.0e6 with blocks 0 and 29 kept and
3.8e6 with the encoder rule of :func:`compactlm.models.prune.evenly_spaced` (which drops block 0);
10 blocks: 7.2e6 vs 1.0e9. Either way a pruned student needs the SFT warm-up before distillation.
An explicit list of block indices is accepted too.

:func:`quantize_student` wraps :func:`compactlm.qat.prepare_qat` (a QAT scheme, e.g. ``w4a16-g32``)
so the same distillation trains a quantized student.
"""

from __future__ import annotations

import copy
from typing import Sequence

from torch import nn

from compactlm.errors import CompactLMError
from compactlm.models.prune import prune_depth
from compactlm.models.specs import get_blocks, get_spec

_PER_LAYER_CONFIG = ("layer_types",)


def decoder_keep(n: int, k: int) -> list[int]:
    """``k`` of ``n`` block indices, evenly spaced with the first and the last kept."""
    if not 1 <= k <= n:
        raise CompactLMError(f"--student-layers: expected 1..{n} layers, got {k}")
    if k == 1:
        return [n - 1]
    return sorted({int(i * (n - 1) / (k - 1) + 0.5) for i in range(k)})


def parse_keep(value: "int | str | Sequence[int]", n: int) -> list[int]:
    """``--student-layers``: a count (``12``) or explicit indices (``0,3,7,29``)."""
    if isinstance(value, str):
        parts = [p.strip() for p in value.split(",") if p.strip()]
        try:
            nums = [int(p) for p in parts]
        except ValueError:
            raise CompactLMError(f"--student-layers: expected a count or comma-separated block indices, got {value!r}") from None
        value = nums[0] if len(nums) == 1 else nums
    if isinstance(value, int):
        return decoder_keep(n, value)
    keep = list(value)
    if not keep or len(set(keep)) != len(keep) or any(not 0 <= i < n for i in keep):
        raise CompactLMError(f"--student-layers: block indices must be distinct and in 0..{n - 1}, got {keep}")
    return keep


def depth_pruned_student(teacher: nn.Module, keep: "int | str | Sequence[int]") -> tuple[nn.Module, list[int]]:
    """A smaller copy of ``teacher`` with the blocks ``keep`` (a count or indices); the teacher is untouched.

    Returns:
        ``(student, kept block indices)``; the student is in eval mode, on the teacher's device.
    """
    if get_spec(teacher).kind != "decoder":
        raise CompactLMError("--teacher: generative distillation needs a causal LM (decoder)")
    n = len(get_blocks(teacher))
    kept = parse_keep(keep, n)
    student = copy.deepcopy(teacher)
    prune_depth(student, kept)
    config = student.config
    for name in _PER_LAYER_CONFIG:
        values = getattr(config, name, None)
        if isinstance(values, (list, tuple)) and len(values) == n:
            setattr(config, name, [values[i] for i in kept])
    for new, block in enumerate(get_blocks(student)):
        for module in block.modules():
            if hasattr(module, "layer_idx"):
                module.layer_idx = new
    return student.eval(), kept


def quantize_student(student: nn.Module, scheme: str, **qat_options) -> nn.Module:
    """Fake-quantize ``student``'s block linears for QAT (:func:`compactlm.qat.prepare_qat`), in place."""
    from compactlm.qat import prepare_qat

    return prepare_qat(student, scheme, **qat_options)


__all__ = ["decoder_keep", "parse_keep", "depth_pruned_student", "quantize_student"]
