"""Device choice shared by every command and API entry point that runs a model."""

from __future__ import annotations

import torch

from compactlm.errors import CompactLMError


def choose_device(device: "str | torch.device | None" = None) -> torch.device:
    """``None``/``"auto"``: CUDA when present, else CPU; otherwise the named device, checked.

    A device this machine lacks (``cuda`` without CUDA, ``cuda:3`` on a one-GPU machine) is a
    one-line :class:`CompactLMError` naming ``--device``.
    """
    if isinstance(device, torch.device):
        device = str(device)
    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise CompactLMError(f"--device: {device!r} is not a torch device (expected auto, cpu, cuda, cuda:1)") from e
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise CompactLMError(f"--device: {device!r} asked for, but this machine has no CUDA device")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise CompactLMError(f"--device: {device!r} asked for, but this machine has {torch.cuda.device_count()} "
                                 "CUDA device(s)")
    elif dev.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise CompactLMError(f"--device: {device!r} asked for, but MPS is not available here")
    return dev
