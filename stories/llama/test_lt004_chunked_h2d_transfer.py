"""LT-004 chunked host-to-device transfer: weights reach the GPU in bounded chunks, byte for byte.

The plan's story is a C++ chunked cudaMemcpy. Ours is worker/backend/upload.py's PinnedStager,
used by CudaBackend.load_weight: each chunk is copied from the GGUF memory map into one of two
pinned staging buffers of `capacity // 2` bytes (whole pages), sent with an asynchronous copy
while the next chunk is read, and the mapped file pages just read are dropped from the process.

Acceptance, on the CPU (the chunking logic, with a stand-in for CuPy's pinned memory, stream and
device pointer whose asynchronous copies really are deferred until the stream or an event is
synchronized, so a staging buffer overwritten before its copy ran would corrupt the result):
  * every chunk is at most the staging chunk, the chunk is whole pages, and the chunks tile the
    tensor in order; the bytes that arrive equal the bytes in the file;
  * only the two staging buffers are ever used, whatever the tensor size;
  * progress is reported after every chunk, increasing, ending at the total;
  * a destination smaller than the tensor is refused before anything is copied;
  * pages of the memory-mapped file that were uploaded no longer count against the process (the
    file mapping's resident size in /proc/self/smaps stays near the staging size).
On the GPU: the same upload into real device memory, and a whole model loaded with a tiny
staging buffer, whose every weight on the device equals the bytes gguf-py reads from the file.
"""
from __future__ import annotations

import contextlib
import ctypes
import mmap
import re
import sys
import types

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.backend.upload import PAGE, PinnedStager, release_mapped_pages

# -- a stand-in CuPy with deferred asynchronous copies ---------------------------------------------

class FakeStream:
    def __init__(self, non_blocking=False):
        self.queue: list[tuple] = []       # copies enqueued, in order
        self.done = 0                      # how many of them have run

    def run_until(self, n: int) -> None:
        while self.done < n:
            op = self.queue[self.done]
            self.done += 1
            if callable(op):                   # other queued work: a wait for an event, a fill
                op()
                continue
            dst, offset, host_ptr, nbytes = op
            dst.memory[offset:offset + nbytes] = ctypes.string_at(host_ptr, nbytes)   # reads the host buffer NOW

    def record(self):
        return FakeEvent(self, len(self.queue))

    def wait_event(self, event: "FakeEvent") -> None:
        self.queue.append(event.synchronize)   # what follows runs after the event's stream reached it

    def synchronize(self) -> None:
        self.run_until(len(self.queue))


class FakeEvent:
    def __init__(self, stream: FakeStream, position: int):
        self.stream, self.position = stream, position

    def synchronize(self) -> None:
        self.stream.run_until(self.position)


class FakePointer:
    def __init__(self, array: "FakeDeviceArray", offset: int):
        self.array, self.offset = array, offset

    def __add__(self, k: int) -> "FakePointer":
        return FakePointer(self.array, self.offset + int(k))

    def copy_from_host_async(self, host_ptr: int, nbytes: int, stream: FakeStream) -> None:
        assert self.offset + nbytes <= self.array.nbytes, "copy past the end of the device buffer"
        self.array.copies.append((self.offset, nbytes, host_ptr))
        stream.queue.append((self.array, self.offset, host_ptr, nbytes))


class FakeDeviceArray:
    def __init__(self, nbytes: int):
        self.memory = bytearray(nbytes)
        self.nbytes = nbytes
        self.copies: list[tuple[int, int, int]] = []    # (device offset, bytes, host address)

    @property
    def data(self) -> FakePointer:
        return FakePointer(self, 0)


@contextlib.contextmanager
def stand_in_cupy():
    """`import cupy` gives the stand-in while the block runs; yields the pinned buffers made."""
    pinned: list[bytearray] = []

    def alloc_pinned_memory(n):
        buf = bytearray(n)
        pinned.append(buf)
        return buf

    cp = types.ModuleType("cupy")
    caller = FakeStream()                  # the caller's current stream
    cp.cuda = types.SimpleNamespace(alloc_pinned_memory=alloc_pinned_memory, Stream=FakeStream,
                                    get_current_stream=lambda: caller)
    saved = sys.modules.get("cupy", _ABSENT)
    sys.modules["cupy"] = cp
    try:
        yield pinned
    finally:
        if saved is _ABSENT:
            del sys.modules["cupy"]
        else:
            sys.modules["cupy"] = saved


_ABSENT = object()


@pytest.fixture
def fake_cupy():
    with stand_in_cupy() as pinned:
        yield pinned


def _host_addresses(stager) -> set[int]:
    return {h.ctypes.data for h in stager._host}


# -- CPU: the chunking logic ----------------------------------------------------------------------

@pytest.mark.story("LT-004")
@settings(max_examples=60, deadline=None)
@given(capacity=st.sampled_from([1, PAGE, 2 * PAGE, 3 * PAGE + 17, 64 << 10]),
       size=st.one_of(st.integers(0, 5 * PAGE), st.sampled_from([PAGE - 1, PAGE, PAGE + 1, 2 * PAGE, 200_003])),
       seed=st.integers(0, 2**32 - 1))
def test_chunks_are_bounded_ordered_and_deliver_the_exact_bytes(capacity, size, seed):
    with stand_in_cupy() as pinned:
        _check_one_upload(pinned, capacity, size, seed)


def _check_one_upload(fake_cupy, capacity, size, seed):
    source = np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8)
    stager = PinnedStager(capacity)
    assert stager.chunk % PAGE == 0 and stager.chunk >= PAGE
    assert stager.chunk <= max(PAGE, capacity // 2)
    assert len(fake_cupy) == 2 and all(len(b) == stager.chunk for b in fake_cupy)
    dst = FakeDeviceArray(size + 5)              # a larger destination is fine; its tail is untouched
    seen = []
    stager.upload(source, dst, progress=lambda done, total: seen.append((done, total)))

    offsets = [c[0] for c in dst.copies]
    sizes = [c[1] for c in dst.copies]
    assert all(0 < n <= stager.chunk for n in sizes)
    assert offsets == list(np.cumsum([0] + sizes)[:-1]) and sum(sizes) == size, "chunks must tile the tensor in order"
    assert len(sizes) == -(-size // stager.chunk)
    assert {c[2] for c in dst.copies} <= _host_addresses(stager), "a copy came from outside the two staging buffers"
    assert bytes(dst.memory[:size]) == source.tobytes()
    assert bytes(dst.memory[size:]) == b"\0" * 5
    assert [d for d, _ in seen] == list(np.cumsum(sizes)) and all(t == size for _, t in seen)
    assert stager.bytes_uploaded == size


@pytest.mark.story("LT-004")
def test_the_staging_buffers_are_reused_across_tensors(fake_cupy):
    stager = PinnedStager(2 * PAGE)
    rng = np.random.default_rng(1)
    for size in (10 * PAGE + 3, 1, 7 * PAGE):
        src = rng.integers(0, 256, size, dtype=np.uint8)
        dst = FakeDeviceArray(size)
        stager.upload(src, dst)
        assert bytes(dst.memory) == src.tobytes()
    assert len(fake_cupy) == 2, "pinned memory must be allocated once, not per tensor"
    assert stager.bytes_uploaded == 17 * PAGE + 4


@pytest.mark.story("LT-004")
def test_the_copies_land_after_work_queued_before_on_the_callers_stream(fake_cupy):
    """The copy stream runs beside the caller's: a fill of the destination queued there before the upload (and not
    run yet, as on a busy GPU) must not land on top of the copied bytes."""
    import cupy

    size = 3 * PAGE + 11
    source = np.random.default_rng(7).integers(0, 256, size, dtype=np.uint8)
    dst = FakeDeviceArray(size)
    caller = cupy.cuda.get_current_stream()
    caller.queue.append(lambda: dst.memory.__setitem__(slice(0, size), b"\xab" * size))   # cupy.full, pending
    PinnedStager(2 * PAGE).upload(source, dst)
    caller.synchronize()
    assert bytes(dst.memory) == source.tobytes()


@pytest.mark.story("LT-004")
def test_a_destination_smaller_than_the_tensor_is_refused_before_copying(fake_cupy):
    stager = PinnedStager(2 * PAGE)
    dst = FakeDeviceArray(100)
    with pytest.raises(ValueError, match="cannot take 101"):
        stager.upload(np.zeros(101, np.uint8), dst)
    assert dst.copies == []


@pytest.mark.story("LT-004")
def test_non_byte_views_are_uploaded_as_their_bytes(fake_cupy):
    values = np.linspace(-3, 3, 3 * PAGE + 5, dtype=np.float32)
    dst = FakeDeviceArray(values.nbytes)
    PinnedStager(2 * PAGE).upload(values.view(np.uint8), dst)
    assert np.array_equal(np.frombuffer(bytes(dst.memory), np.float32), values)


def _mapping_rss(path) -> int:
    """Resident bytes of this process's mappings of `path` (/proc/self/smaps)."""
    total, inside = 0, False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()
            if head and "-" in head[0] and len(head) >= 5:       # a mapping's header line
                inside = len(head) >= 6 and head[-1] == str(path)
            elif inside and line.startswith("Rss:"):
                total += int(head[1]) * 1024
    return total


@pytest.mark.story("LT-004")
def test_uploaded_file_pages_leave_the_process(fake_cupy, tmp_path):
    size = 32 << 20
    path = tmp_path / "weights.bin"
    rng = np.random.default_rng(3)
    path.write_bytes(rng.integers(0, 256, size, dtype=np.uint8).tobytes())
    mapped = np.memmap(path, dtype=np.uint8, mode="r")
    stager = PinnedStager(1 << 20)
    dst = FakeDeviceArray(size)
    stager.upload(mapped, dst)
    assert bytes(dst.memory[:4096]) == path.read_bytes()[:4096]
    assert bytes(dst.memory) == path.read_bytes()
    # Without the release every page of the 32 MiB would stay resident in the mapping.
    assert _mapping_rss(path) <= 4 * stager.chunk, _mapping_rss(path)
    np.asarray(mapped[:PAGE]).sum()                             # the mapping is still readable
    assert _mapping_rss(path) <= 4 * stager.chunk + PAGE


@pytest.mark.story("LT-004")
def test_release_is_a_no_op_on_plain_host_memory():
    assert release_mapped_pages(np.zeros(10 * PAGE, np.uint8), 0, 10 * PAGE) is False
    with mmap.mmap(-1, 4 * PAGE) as anonymous:
        view = np.frombuffer(anonymous, dtype=np.uint8)
        assert release_mapped_pages(view, PAGE, PAGE) is True
        del view


# -- GPU: real pinned memory, stream and device -----------------------------------------------------

@pytest.mark.gpu
@pytest.mark.story("LT-004")
@pytest.mark.parametrize("size", [1, PAGE - 1, 3 * PAGE + 12345, (8 << 20) + 7])
def test_gpu_upload_delivers_the_exact_bytes(size):
    import cupy

    from stories.foundation._cuda_conformance import cuda_backend

    cuda_backend()
    source = np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8)
    stager = PinnedStager(2 * PAGE)
    dst = cupy.full(size + 64, 0xAB, dtype=np.uint8)
    seen = []
    stager.upload(source, dst, progress=lambda done, total: seen.append(done))
    host = cupy.asnumpy(dst)
    assert np.array_equal(host[:size], source)
    assert (host[size:] == 0xAB).all(), "bytes past the tensor were written"
    assert seen == sorted(seen) and seen[-1] == size and len(seen) == -(-size // stager.chunk)


@pytest.mark.gpu
@pytest.mark.story("LT-004")
def test_gpu_model_weights_on_the_device_equal_the_file_bytes():
    """A tiny model (mixed storage types) loaded through a one-page staging chunk: every weight's
    device bytes equal what gguf-py reads from the file; the staging stayed two pages."""
    import cupy
    import gguf

    from fixtures.gguf_corrupt import tiny_model_path
    from stories.foundation._cuda_conformance import cuda_backend
    from worker.backend.cuda import CudaBackend
    from worker.gguf import GGUFModelFile
    from worker.models import load_model

    cuda_backend()
    path = tiny_model_path("llama")
    b = CudaBackend(staging_bytes=2 * PAGE)
    model = load_model(GGUFModelFile.open(path), b)
    reader = gguf.GGUFReader(str(path))
    stored = {t.name: np.ascontiguousarray(t.data).view(np.uint8).reshape(-1) for t in reader.tensors}
    rows = {t.name: int(t.shape[-1]) for t in reader.tensors}     # gguf-py lists dims innermost first

    def file_bytes(name: str) -> np.ndarray:
        """The stored bytes of a weight; `name[a:b]` is rows a..b of a fused tensor (split_rows)."""
        m = re.fullmatch(r"(.+)\[(\d+):(\d+)\]", name)
        if not m:
            return stored[name]
        whole = stored[m.group(1)]
        row_bytes = whole.size // rows[m.group(1)]
        return whole[int(m.group(2)) * row_bytes:int(m.group(3)) * row_bytes]

    weights = list(b._weights)
    assert weights
    for w in weights:
        expected = file_bytes(w.name)
        on_device = cupy.asnumpy(w.raw)[:expected.size]
        assert w.nbytes >= expected.size and np.array_equal(on_device, expected), f"{w.name} differs on the device"
    assert b._stager.capacity_bytes == 2 * PAGE and b._stager.chunk == PAGE
    assert b.upload_stats["bytes"] == sum(file_bytes(w.name).size for w in weights)
    del model
