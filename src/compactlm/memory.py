"""Give memory that Python and PyTorch freed back to the operating system.

Loading a model allocates transient buffers (file reads, unpacked codes before repacking); glibc
keeps the freed heap pages mapped, so the process stays as large as at its peak. ``malloc_trim``
returns them. On other C libraries this is a no-op.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import sys


def release_freed_memory() -> bool:
    """Collect garbage and trim the C heap; returns whether the heap could be trimmed."""
    gc.collect()
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.malloc_trim(0))
    except (OSError, AttributeError):  # not glibc
        return False
