"""Large output blocks kept between calls, for the numba backend: the Python twin of the
C++ backend's output cache (``src/cpp/fastrnn/output_cache.hpp``, design notes section 6).

A training step's outputs (``hs``, the saved activations, ``dx``) are hundreds of MB at
long T; fresh memory for them costs a page fault and the kernel's zeroing of every page at
every step (``clear_page_erms``: 10 to 12% of numba's S2 forward and training step on a
Zen 3 EPYC), and mid-size ones as much, which glibc gives back to the OS when they are
freed (a char-LM batch's 1 MB ``hs``; see ``output_cache.hpp``). The pool hands out an
array of 64 KiB or more as a view of a block it keeps (NumPy's ``base`` of the view and of
every view of it is that block), and takes the block again for a later output of the
same size class once nothing but the pool refers to it: its reference count, compared with
that of a block only the pool holds, says so. A live array therefore never shares memory
with another output, whatever views or pickles of it are around, and memory NumPy would
have freed is kept only up to the limit.
"""

from __future__ import annotations

import math
import sys
import threading
from typing import Any

import numpy as np
import numpy.typing as npt

MIN_BYTES = 64 << 10  # smaller outputs come from NumPy, as always
# block capacities (size classes): whole multiples of MIN_BYTES below _LARGE, of _LARGE above
_LARGE = 2 << 20
_ALIGN = 64  # the byte alignment of the arrays handed out (a cache line)


def _refs(blocks: list[npt.NDArray[np.uint8]], i: int) -> int:
    """The reference count of ``blocks[i]``, taken the same way for every block."""
    block = blocks[i]
    return sys.getrefcount(block)


class BlockPool:
    """Blocks of 64 KiB or more kept for outputs: those in use, and free ones up to
    ``limit`` bytes."""

    def __init__(self, limit: int = 1 << 30) -> None:
        self._lock = threading.Lock()
        self._blocks: list[npt.NDArray[np.uint8]] = []  # oldest first
        self.limit = limit
        self.hits = 0
        self.misses = 0
        self.poison = False  # tests: fill a reused block with 0xff before handing it out

    def empty(self, shape: tuple[int, ...], dtype: npt.DTypeLike) -> npt.NDArray[Any]:
        """An uninitialised C-contiguous array, like ``np.empty(shape, dtype)``."""
        dt = np.dtype(dtype)
        nbytes = math.prod(shape) * dt.itemsize
        if nbytes < MIN_BYTES or self.limit == 0:
            return np.empty(shape, dt)
        step = _LARGE if nbytes + _ALIGN >= _LARGE else MIN_BYTES
        capacity = -(-(nbytes + _ALIGN) // step) * step
        with self._lock:
            block = self._take(capacity)
            if block is None:
                self.misses += 1
                block = np.empty(capacity, np.uint8)
                self._blocks.append(block)
                self._trim()
            else:
                self.hits += 1
                if self.poison:
                    block.fill(0xFF)
        start = -block.ctypes.data % _ALIGN
        return block[start : start + nbytes].view(dt).reshape(shape)

    def _take(self, capacity: int) -> npt.NDArray[np.uint8] | None:
        """The newest free block of this capacity, moved to the newest place; or None."""
        free = _refs([np.empty(0, np.uint8)], 0)  # a block nothing else refers to
        for i in range(len(self._blocks) - 1, -1, -1):
            if self._blocks[i].nbytes == capacity and _refs(self._blocks, i) <= free:
                block = self._blocks.pop(i)
                self._blocks.append(block)
                return block
        return None

    def _free(self) -> list[bool]:
        """Which blocks nothing but the pool refers to, oldest first."""
        free = _refs([np.empty(0, np.uint8)], 0)  # a block nothing else refers to
        return [_refs(self._blocks, i) <= free for i in range(len(self._blocks))]

    def _trim(self) -> None:
        """Forget the oldest free blocks while the free ones hold more than the limit (a
        block in use is kept track of, not counted: its arrays hold it anyway)."""
        free = self._free()
        held = sum(b.nbytes for b, f in zip(self._blocks, free, strict=True) if f)
        kept = []
        for block, is_free in zip(self._blocks, free, strict=True):
            if is_free and held > self.limit:
                held -= block.nbytes
            else:
                kept.append(block)
        self._blocks = kept

    def set_limit(self, max_bytes: int) -> int:
        """Set the most the pool's free blocks may hold (bytes), forgetting the oldest
        beyond it; the previous limit."""
        with self._lock:
            previous, self.limit = self.limit, max_bytes
            self._trim()
        return previous

    def info(self) -> dict[str, int]:
        """``limit``; ``held``, the bytes of the ``blocks`` free blocks kept (the limit is
        applied at every large output and here: arrays freed since the last call may have
        left more); ``hits`` and ``misses``, the outputs of 64 KiB or more that took a kept
        block or new memory."""
        with self._lock:
            self._trim()
            free = [b for b, f in zip(self._blocks, self._free(), strict=True) if f]
            return {
                "limit": self.limit,
                "held": sum(b.nbytes for b in free),
                "blocks": len(free),
                "hits": self.hits,
                "misses": self.misses,
            }


POOL = BlockPool()  # the numba backend's
