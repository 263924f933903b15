"""Activation storage and resume state of the block-wise reconstruction engine.

:mod:`compactlm.ptq.engine` holds the reconstruction math; this module holds what it keeps
between blocks and between runs:

* :class:`ActivationStore` — one ``(N, T, C)`` float32 activation tensor (FP input, quantized-path
  input or FP target of the current block), in RAM or, above ``spill_mb``, memory-mapped from a
  ``.npy`` file in the work directory's ``spill/``;
* :class:`WorkDir` — the run's directory. Resumable (a ``work_dir`` was given): after each block
  its baked :class:`~compactlm.quant.QuantizedWeight` grids and activation ranges, and the next
  block's two inputs (``.npy``, streamed from RAM or from the memory-mapped spill without another
  in-memory copy), are written atomically; a restarted run whose :func:`run_fingerprint` matches
  replays the finished blocks and continues with identical results. Temporary (no ``work_dir``):
  only spill files, removed at the end.

A finished run leaves its resume state in place (the caller may still fail while saving its
output); :func:`remove_work_dir` deletes it once the output is safe. A caller that picks a work
directory by default (``compactlm quantize``: ``<out>.work``) so that every run is resumable
removes it that way after saving.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from compactlm.errors import CompactLMError
from compactlm.io import write_json
from compactlm.models.specs import block_linears, get_blocks, get_spec, linear_weight
from compactlm.quant.scheme import QuantScheme

FINGERPRINT = "fingerprint.json"


class ActivationStore:
    """``(N, T, C)`` float32 activations, in RAM or memory-mapped from a file.

    Args:
        shape: ``(N, T, C)``.
        path: File to memory-map, or ``None`` for RAM.
    """

    def __init__(self, shape: tuple[int, ...], path: Path | None = None):
        self.shape = tuple(shape)
        self.path = path
        if path is None:
            self.data = torch.empty(self.shape, dtype=torch.float32)
        else:
            arr = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=self.shape)
            self.data = torch.from_numpy(arr)

    def __len__(self) -> int:
        return self.shape[0]

    def put(self, start: int, x: torch.Tensor) -> None:
        self.data[start : start + len(x)] = x.detach().to("cpu", torch.float32)

    def get(self, index, device: torch.device) -> torch.Tensor:
        return self.data[index].to(device)

    def close(self) -> None:
        self.data = None  # type: ignore[assignment]
        if self.path is not None and self.path.exists():
            self.path.unlink()


class WorkDir:
    """State of one reconstruction run: spill files, and (unless temporary) resume state.

    Layout: ``fingerprint.json`` (what run this is), ``progress.json`` (``{"done": k}``),
    ``block_<i>.safetensors`` (baked grids + activation ranges of block ``i``), ``report_<i>.json``,
    ``inputs_<k>.x_fp.npy`` / ``inputs_<k>.x_q.npy`` (FP and quantized-path inputs of block ``k``),
    ``spill/``. A temporary work directory (no ``--work-dir``: no resume) holds ``spill/`` only.

    Args:
        path: Directory (created).
        fingerprint: :func:`run_fingerprint` of this run; a resumable directory holding another
            fingerprint is refused.
        temporary: No resume state; :meth:`cleanup` removes the whole directory.
    """

    def __init__(self, path: Path, fingerprint: dict, temporary: bool):
        self.path = path
        self.temporary = temporary
        path.mkdir(parents=True, exist_ok=True)
        if temporary:
            return
        fp_file = path / FINGERPRINT
        if fp_file.exists():
            old = json.loads(fp_file.read_text())
            if old != fingerprint:
                raise CompactLMError(
                    f"--work-dir {path} holds state of a different run (model, scheme, options or "
                    "calibration data differ); remove it or choose another --work-dir"
                )
        else:
            write_json(fp_file, fingerprint)

    @property
    def resumable(self) -> bool:
        return not self.temporary

    @property
    def done(self) -> int:
        f = self.path / "progress.json"
        return json.loads(f.read_text())["done"] if self.resumable and f.exists() else 0

    def spill_path(self, name: str) -> Path:
        (self.path / "spill").mkdir(exist_ok=True)
        return self.path / "spill" / f"{name}.npy"

    def _inputs_path(self, index: int, name: str) -> Path:
        return self.path / f"inputs_{index}.{name}.npy"

    def save_block(self, index: int, tensors: dict[str, torch.Tensor], x_fp: ActivationStore,
                   x_q: ActivationStore, report: dict) -> None:
        """Record block ``index`` as finished, with the inputs of block ``index + 1`` (no-op when temporary)."""
        if not self.resumable:
            return
        _atomic_save(tensors, self.path / f"block_{index}.safetensors")
        for name, store in (("x_fp", x_fp), ("x_q", x_q)):
            _atomic_save_npy(store.data, self._inputs_path(index + 1, name))
        write_json(self.path / f"report_{index}.json", report)
        write_json(self.path / "progress.json", {"done": index + 1})
        for name in ("x_fp", "x_q"):
            self._inputs_path(index, name).unlink(missing_ok=True)
        (self.path / f"inputs_{index}.safetensors").unlink(missing_ok=True)

    def load_block(self, index: int) -> tuple[dict[str, torch.Tensor], dict]:
        tensors = load_file(self.path / f"block_{index}.safetensors")
        report = json.loads((self.path / f"report_{index}.json").read_text())
        return tensors, report

    def load_inputs_into(self, index: int, x_fp: ActivationStore, x_q: ActivationStore, chunk: int = 64) -> None:
        """Copy the saved inputs of block ``index`` into the stores, ``chunk`` rows at a time (memory-mapped reads)."""
        legacy = self.path / f"inputs_{index}.safetensors"  # work dirs written before the .npy layout
        if legacy.exists() and not self._inputs_path(index, "x_fp").exists():
            from safetensors import safe_open

            with safe_open(str(legacy), framework="pt") as f:
                for name, store in (("x_fp", x_fp), ("x_q", x_q)):
                    store.data[:] = f.get_tensor(name)
            return
        for name, store in (("x_fp", x_fp), ("x_q", x_q)):
            path = self._inputs_path(index, name)
            if not path.exists():
                raise CompactLMError(f"--work-dir {self.path}: {path.name} is missing; remove the work dir to start over")
            saved = np.load(path, mmap_mode="r")
            if tuple(saved.shape) != store.shape:
                raise CompactLMError(
                    f"--work-dir {self.path}: {path.name} has shape {tuple(saved.shape)}, expected {store.shape}"
                )
            for start in range(0, len(store), chunk):
                store.put(start, torch.from_numpy(np.array(saved[start : start + chunk])))  # one chunk in RAM
            del saved

    def cleanup(self) -> None:
        """End of a run (finished or not): drop the spill files; a temporary directory goes entirely."""
        if self.temporary:
            shutil.rmtree(self.path, ignore_errors=True)
        else:
            shutil.rmtree(self.path / "spill", ignore_errors=True)


def remove_work_dir(path: str | os.PathLike) -> bool:
    """Delete the resume state of a finished reconstruction run, once its output is saved.

    Only a directory that holds a reconstruction ``fingerprint.json`` is removed (a mistyped path
    never deletes unrelated files).

    Args:
        path: The run's ``work_dir``.
    Returns:
        ``True`` if a work directory was removed, ``False`` if ``path`` does not exist.
    Raises:
        CompactLMError: ``path`` exists but is not a reconstruction work directory.
    """
    path = Path(path)
    if not path.exists():
        return False
    if not (path / FINGERPRINT).is_file():
        raise CompactLMError(f"--work-dir {path} is not a reconstruction work directory (no {FINGERPRINT}); not removing it")
    shutil.rmtree(path)
    return True


def _atomic_save(tensors: dict[str, torch.Tensor], path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))
    os.replace(tmp, path)


def _atomic_save_npy(data: torch.Tensor, path: Path) -> None:
    """Write a contiguous float32 CPU tensor as ``.npy`` straight from its buffer.

    ``np.save`` writes the array's memory with ``tofile``: a memory-mapped spill streams through the
    page cache instead of being copied into RAM (as ``safetensors.save_file`` would: it builds the
    whole file as one bytes object).
    """
    if not data.is_contiguous():
        raise ValueError("activation store must be contiguous")
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.save(f, data.numpy(), allow_pickle=False)
    os.replace(tmp, path)


def run_fingerprint(model: nn.Module, scheme: QuantScheme, method: str, config, calib: torch.Tensor) -> dict:
    """What makes two reconstruction runs the same: method, scheme, options (except where state
    lives and the spill threshold), model identity and first weight, calibration data."""
    options = {k: v for k, v in dataclasses.asdict(config).items() if k not in ("work_dir", "spill_mb")}
    first = linear_weight(next(iter(block_linears(get_blocks(model)[0], get_spec(model)).values())))
    return {
        "method": method,
        "scheme": scheme.to_dict(),
        "options": options,
        "model": str(getattr(model.config, "_name_or_path", "")),
        "model_type": model.config.model_type,
        "blocks": len(get_blocks(model)),
        "weight_checksum": float(first.detach().double().abs().sum()),
        "calib_shape": list(calib.shape),
        "calib_sha1": hashlib.sha1(calib.cpu().numpy().tobytes()).hexdigest(),
    }
