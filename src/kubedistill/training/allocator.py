"""glibc malloc tuning for CPU training.

By default glibc serves large allocations with mmap and hands freed memory back to the OS at once, so every
training step maps and faults in its activations anew (hundreds of thousands of page faults per step for a
ViT-B teacher at 224 px). Raising the mmap and trim thresholds keeps that memory in the heap for reuse.
BENCHMARKS.md measures the effect; set KUBEDISTILL_MALLOC_TUNING=0 to leave the allocator alone.
"""

from __future__ import annotations

import ctypes
import logging
import os

logger = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# glibc caps the mmap threshold at HEAP_MAX_SIZE / 2 = 32 MiB on 64-bit systems.
MMAP_THRESHOLD = 32 * 1024 * 1024
TRIM_THRESHOLD = 1024 * 1024 * 1024


def tune_glibc_malloc() -> bool:
    """Raise glibc's mmap/trim thresholds for this process; True if applied (glibc found and not disabled)."""
    if os.environ.get("KUBEDISTILL_MALLOC_TUNING", "1") == "0":
        return False
    try:
        # The soname, not ctypes.util.find_library: that forks `ldconfig` from a multi-GB training process.
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # musl, macOS or another non-glibc platform
        return False
    applied = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    if applied:
        logger.info("glibc malloc thresholds raised (mmap %d MiB, trim %d MiB)", MMAP_THRESHOLD >> 20, TRIM_THRESHOLD >> 20)
    return applied
