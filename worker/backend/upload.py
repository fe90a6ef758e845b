"""Weights from the memory map to device memory through a bounded pinned staging buffer.

The host never holds a whole tensor: each chunk is copied from the file mapping into one of two
pinned (page-locked) buffers, sent to the device asynchronously while the next chunk is read,
and the file pages just read are dropped from this process's mapping (madvise DONTNEED), so
peak resident memory stays near 2 x the staging size whatever the model size. (The pages stay
in the kernel's page cache; they are simply not counted against the process.)

    stager = PinnedStager(capacity_bytes=8 << 20)
    stager.upload(raw_uint8_view, device_uint8_array, progress=lambda done, total: ...)
    peak, result = measure_peak_rss(lambda: ...)     # bytes above the RSS before the call
"""
from __future__ import annotations

import mmap
import os
from typing import Callable

import numpy as np

PAGE = mmap.PAGESIZE


def _backing_mmap(a: np.ndarray):
    """The mmap.mmap object a NumPy view lives in, or None (plain host memory)."""
    obj = a
    for _ in range(64):
        if obj is None:
            return None
        if isinstance(obj, mmap.mmap):
            return obj
        if isinstance(obj, memoryview):
            obj = obj.obj
            continue
        obj = getattr(obj, "base", None)
    return None


def release_mapped_pages(a: np.ndarray, start: int, length: int) -> bool:
    """Drop bytes [start, start+length) of a memory-mapped view from this process's RSS.

    Safe on a read-only file mapping: a later read faults the page back in from the file.
    Returns False when `a` is not memory-mapped (nothing to release).
    """
    mm = _backing_mmap(a)
    if mm is None or not hasattr(mm, "madvise") or length <= 0:
        return False
    base = np.frombuffer(mm, dtype=np.uint8).ctypes.data if len(mm) else 0
    offset = a.ctypes.data - base + start
    lo = (offset // PAGE) * PAGE
    hi = min(len(mm), -(-(offset + length) // PAGE) * PAGE)
    if hi > lo:
        mm.madvise(mmap.MADV_DONTNEED, lo, hi - lo)
    return True


class PinnedStager:
    """Two pinned host buffers of `capacity_bytes // 2` each, reused for every upload."""

    def __init__(self, capacity_bytes: int = 16 << 20):
        import cupy as cp

        self.chunk = max(PAGE, (capacity_bytes // 2) // PAGE * PAGE)
        self.capacity_bytes = 2 * self.chunk
        self._pinned = [cp.cuda.alloc_pinned_memory(self.chunk) for _ in range(2)]
        self._host = [np.frombuffer(m, dtype=np.uint8, count=self.chunk) for m in self._pinned]
        self._cuda = cp.cuda
        self._stream = cp.cuda.Stream(non_blocking=True)
        self._done = [None, None]          # event per buffer: its last copy has finished
        self.bytes_uploaded = 0

    def upload(self, raw: np.ndarray, dst, progress: Callable[[int, int], None] | None = None) -> None:
        """Copy host bytes `raw` (uint8, 1-D, e.g. a memmap view) into device array `dst` (uint8)."""
        raw = raw.reshape(-1).view(np.uint8)
        total = raw.size
        if dst.nbytes < total:
            raise ValueError(f"device buffer of {dst.nbytes} bytes cannot take {total}")
        # the copy stream is not ordered after the caller's: work queued there on dst (a fill, a kernel on a pool block
        # just freed) must finish before the copies land, or it overwrites them (seen on a busy GPU)
        self._stream.wait_event(self._cuda.get_current_stream().record())
        done, slot = 0, 0
        while done < total:
            n = min(self.chunk, total - done)
            event = self._done[slot]
            if event is not None:
                event.synchronize()                            # this buffer's previous copy is done
            host = self._host[slot]
            host[:n] = raw[done:done + n]                      # the file read happens here
            release_mapped_pages(raw, done, n)
            (dst.data + done).copy_from_host_async(host.ctypes.data, n, self._stream)
            self._done[slot] = self._stream.record()
            done += n
            slot ^= 1
            if progress is not None:
                progress(done, total)
        self._stream.synchronize()
        self.bytes_uploaded += total

    def close(self) -> None:
        self._stream.synchronize()
        self._host = []
        self._pinned = []


def current_rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


def _vm_hwm() -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def measure_peak_rss(fn: Callable[[], object]) -> tuple[dict, object]:
    """Run fn(); return ({'baseline', 'peak', 'peak_above_baseline', 'method'}, fn's result).

    Resets the kernel's high-water mark first (/proc/self/clear_refs = 5) where allowed, so the
    peak belongs to this call; otherwise reports the process-lifetime peak (method says which).
    """
    baseline = current_rss()
    method = "vmhwm-reset"
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        method = "vmhwm-lifetime"
    result = fn()
    peak = _vm_hwm()
    if peak is None:
        peak, method = current_rss(), "rss-after"
    return {"baseline": baseline, "peak": peak, "peak_above_baseline": max(0, peak - baseline),
            "method": method, "pid": os.getpid()}, result
