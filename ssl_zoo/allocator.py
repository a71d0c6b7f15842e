"""glibc's malloc tuned for a training loop on the CPU.

PyTorch's CPU tensors come straight from malloc. With glibc's defaults, blocks above a (dynamic,
at most 32 MiB) threshold are fresh mmaps, and freed memory at the top of the heap goes back to
the OS once it exceeds twice that threshold, so every step faults in, page by page, the
activation memory the step before gave back: 4,600 minor faults per forward + backward of a
ResNet-10t on 32 images, 68,000 for a ResNet-18 on 512 views. Serving blocks up to 256 MiB from
the heap and keeping up to 1 GiB of it freed cuts those to 0 and about 1,200: on 2 CPU cores the
SimCLR step of 512 views runs about 5% faster (docs/performance.md), a small model's step less
(the quickstart: about 1%). The cost is resident memory the process keeps between steps.
"""

from __future__ import annotations

import ctypes
import functools
import os
import platform

M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3  # glibc's <malloc.h>
SETTINGS = ((M_MMAP_THRESHOLD, 256 << 20), (M_TRIM_THRESHOLD, 1 << 30), (M_TOP_PAD, 64 << 20))
# Malloc settings a user made on purpose win over ours.
USER_SETTINGS = ("GLIBC_TUNABLES", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_",
                 "MALLOC_TOP_PAD_")  # fmt: skip


@functools.cache
def keep_freed_memory() -> bool:
    """Apply SETTINGS to this process (and the DataLoader workers it forks later); True if done.
    Nothing happens off glibc or where the environment already sets malloc's options."""
    if platform.libc_ver()[0] != "glibc" or any(name in os.environ for name in USER_SETTINGS):
        return False
    mallopt = ctypes.CDLL(None).mallopt
    return all(mallopt(option, value) == 1 for option, value in SETTINGS)
