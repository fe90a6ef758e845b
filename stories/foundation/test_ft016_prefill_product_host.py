"""FT-016 prefill products without a GPU: prefill_product's tiles, strides and terms on an emulated device.

worker/backend/kernels/matmul.py's prefill_product runs here against a stand-in backend whose
device memory is one NumPy buffer: each kernel it launches is emulated in NumPy by name (the
split arithmetic is stories/foundation/_tf32_split.py, checked bit for bit against tf32.cuh), and
each cuBLAS product reads and writes that buffer through the addresses, leading dimensions and
accumulate flag it is given, refusing an access outside the buffer it starts in and, on the TF32
path, an operand that is not a TF32 value. So the bookkeeping the GPU tests cannot isolate is
checked on any machine: tile boundaries, the [hi | hi | lo] and [hi | lo] layouts, the beta = 1
terms, bias and residual as the start value, the split input's reuse, and the workspace bound.
Every output starts as NaN, so a column no product wrote fails.
"""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stories.foundation._cuda_conformance import THRESHOLDS
from stories.foundation._tf32_split import is_tf32, tf32_split
from worker.backend.cuda_runtime import NULL
from worker.backend.kernels import matmul

pytestmark = pytest.mark.story("FT-016")
BASE = 1 << 32                        # device addresses: BASE + 4 * float index


class FakeArray:
    def __init__(self, device, start: int, shape: tuple):
        self.device, self.start, self.shape = device, start, shape
        self.size = int(np.prod(shape))
        self.nbytes = 4 * self.size
        self.data = SimpleNamespace(ptr=BASE + 4 * start)

    def host(self) -> np.ndarray:
        return self.device.mem[self.start:self.start + self.size].reshape(self.shape).copy()


class FakeDevice:
    """Float32 device memory with a bump allocator; views check they stay inside one allocation."""

    def __init__(self, n_floats: int = 1 << 23):
        self.mem = np.full(n_floats, np.nan, np.float32)
        self.spans: list[tuple[int, int]] = []
        self.dense: dict[int, np.ndarray] = {}      # a weight's raw address -> its dequantized rows

    def alloc(self, shape, values=None) -> FakeArray:
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        start = self.spans[-1][1] + 16 if self.spans else 0
        a = FakeArray(self, start, shape)
        assert start + a.size <= self.mem.size, "the emulated device is full"
        self.spans.append((start, start + a.size))
        if values is not None:
            self.mem[start:start + a.size] = np.asarray(values, np.float32).reshape(-1)
        return a

    def view(self, ptr, rows: int, cols: int, ld: int) -> np.ndarray:
        ptr = int(ptr.data.ptr if isinstance(ptr, FakeArray) else ptr)
        assert ptr >= BASE and (ptr - BASE) % 4 == 0
        start = (ptr - BASE) // 4
        end = start + (rows - 1) * ld + cols if rows and cols else start
        assert any(a <= start and end <= b for a, b in self.spans), f"access [{start}, {end}) outside every buffer"
        assert cols <= ld or rows <= 1
        return np.lib.stride_tricks.as_strided(self.mem[start:], shape=(rows, cols), strides=(4 * ld, 4))


class FakeBlas:
    """CublasNT's interface: y[T, n] (+)= x[T, K] @ w[n, K]^T on the emulated memory."""

    def __init__(self, device: FakeDevice):
        self.device, self.calls, self._stream = device, [], 0

    def on_current_stream(self) -> None:
        pass

    def gemm(self, y, ldy, x, ldx, w, ldw, T, n, K, *, accumulate=False, tf32=False) -> None:
        X, W, Y = (self.device.view(x, T, K, ldx), self.device.view(w, n, K, ldw), self.device.view(y, T, n, ldy))
        if tf32:
            assert is_tf32(X) and is_tf32(W), "a TF32 product was given operands that are not TF32 values"
        product = X.astype(np.float64) @ W.astype(np.float64).T
        Y[...] = (Y + product if accumulate else product).astype(np.float32)
        self.calls.append(dict(T=T, n=n, K=K, accumulate=accumulate, tf32=tf32))


class FakeBackend:
    """What prefill_product uses of CudaBackend: workspace, launches (emulated), the launch serial."""

    def __init__(self, path: str):
        self.device = FakeDevice()
        self._workspace: dict[str, FakeArray] = {}
        self.launch_serial = 0
        self.sync_each_op = False
        self.graphs = SimpleNamespace(hold=lambda *arrays: None)
        self.launches: list[str] = []
        self.blas = FakeBlas(self.device)
        self._prefill_products = matmul.PrefillProducts(self, path, blas=self.blas)

    def _scratch(self, name: str, n_floats: int):
        buf = self._workspace.get(name)
        if buf is None or buf.size < n_floats:
            buf = self._workspace[name] = self.device.alloc(max(n_floats, 1))
        return buf

    def _launch(self, module, name, grid, block, args, *, keeps_quantized_input=False) -> None:
        assert module == "matmul.cu"
        self.launches.append(name)
        self.launch_serial += 1
        view = self.device.view
        if name.startswith("dequant_rows_"):
            raw, _row_bytes, ids, first_row, out, n_rows, K = args
            assert ids is NULL
            view(out, int(n_rows), int(K), int(K))[...] = self.device.dense[raw.data.ptr][first_row:first_row + n_rows]
        elif name.startswith("dequant_split_rows_"):
            raw, _row_bytes, first_row, out, n_rows, K = args
            hi, lo = tf32_split(self.device.dense[raw.data.ptr][first_row:first_row + n_rows])
            tile = view(out, int(n_rows), 2 * int(K), 2 * int(K))
            tile[:, :K], tile[:, K:] = hi, lo
        elif name == "split_tf32_rows":
            x, xs, T, K = args
            hi, lo = tf32_split(view(x, int(T), int(K), int(K)))
            rows = view(xs, int(T), 3 * int(K), 3 * int(K))
            rows[:, :K], rows[:, K:2 * K], rows[:, 2 * K:] = hi, hi, lo
        elif name == "bias_residual_init":
            y, bias, residual, T, N = args
            start = np.zeros((int(T), int(N)), np.float32)
            if residual is not NULL:
                start += view(residual, int(T), int(N), int(N))
            if bias is not NULL:
                start += view(bias, 1, int(N), int(N))
            view(y, int(T), int(N), int(N))[...] = start
        else:
            raise AssertionError(f"prefill_product launched an unexpected kernel {name}")

    def weight(self, dense: np.ndarray, fmt: str):
        raw = self.device.alloc(1)
        self.device.dense[raw.data.ptr] = np.asarray(dense, np.float32)
        return SimpleNamespace(format=fmt, row_bytes=4 * dense.shape[1]), raw


def term_error(y: np.ndarray, x: np.ndarray, w: np.ndarray, start=0.0) -> float:
    """sum((y - exact)^2) / sum((|x| @ |w|^T)^2), exact in float64."""
    x64, w64 = x.astype(np.float64), w.astype(np.float64)
    exact = x64 @ w64.T + start
    scale = np.abs(x64) @ np.abs(w64).T + np.abs(start)
    return float(np.sum((y.astype(np.float64) - exact) ** 2) / np.sum(scale * scale))


def run(path: str, fmt: str, T: int, N: int, K: int, tile_rows: int, seed: int, bias=False, residual=None):
    rng = np.random.default_rng(seed)
    b = FakeBackend(path)
    dense = rng.standard_normal((N, K)).astype(np.float32)
    if fmt == "f16":
        dense = dense.astype(np.float16).astype(np.float32)
    x = rng.standard_normal((T, K)).astype(np.float32)
    weight, raw = b.weight(dense, fmt)
    x2 = b.device.alloc((T, K), x)
    per_row = K if path == "fp32" or fmt == "f16" else 2 * K
    y = b.device.alloc((T, N))
    start = np.zeros((T, N))
    bias_arr = res_arr = None
    if bias:
        bv = rng.standard_normal(N).astype(np.float32)
        bias_arr, start = b.device.alloc(N, bv), start + bv
    if residual is not None:
        r = rng.standard_normal((T, N)).astype(np.float32)
        start = start + r
        if residual == "in_place":
            b.device.mem[y.start:y.start + y.size] = r.reshape(-1)
            res_arr = y
        else:
            res_arr = b.device.alloc((T, N), r)
    matmul.prefill_product(b, weight, raw, x2, y, bias_arr, res_arr, tile_bytes=4 * per_row * tile_rows)
    return b, x, dense, y.host(), start


@settings(max_examples=60, deadline=None)
@given(path=st.sampled_from(["tf32x3", "fp32"]), fmt=st.sampled_from(["q4_k", "f32", "f16"]),
       T=st.integers(5, 40), N=st.integers(1, 90), K=st.integers(1, 70), tile_rows=st.integers(1, 40),
       bias=st.booleans(), residual=st.sampled_from([None, "separate", "in_place"]), seed=st.integers(0, 2 ** 31))
def test_every_column_block_holds_its_product(path, fmt, T, N, K, tile_rows, bias, residual, seed):
    b, x, dense, y, start = run(path, fmt, T, N, K, tile_rows, seed, bias, residual)
    assert np.isfinite(y).all(), "a column block of the output was never written"
    assert term_error(y, x, dense, start) <= 1e-13
    tiles = -(-N // min(tile_rows, N))
    gemms = b.blas.calls
    assert len(gemms) == tiles * (1 if path == "fp32" else 2)
    assert all(g["tf32"] == (path == "tf32x3") for g in gemms)
    starts = bias or residual is not None
    assert [g["accumulate"] for g in gemms[::len(gemms) // tiles]] == [starts] * tiles, "a tile's first term"
    assert b.launches.count("bias_residual_init") == (1 if bias or residual == "separate" else 0)
    assert b.launches.count("split_tf32_rows") == (1 if path == "tf32x3" else 0)
    dequant = "dequant_split_rows_" if path == "tf32x3" and fmt != "f16" else "dequant_rows_"
    assert sum(name.startswith(dequant) for name in b.launches) == tiles
    tile = b._workspace[matmul.TILE]
    per_row = 2 * K if dequant == "dequant_split_rows_" else K
    assert tile.size == min(tile_rows, N) * per_row, "the tile workspace is bounded by tile_bytes"


def test_split_terms_beat_plain_tf32():
    """The three terms are what keeps float32 accuracy: one TF32 product of the hi parts alone
    (about 2^-12 a term) misses the float32 product row's 1e-11 (4e-10 here), the split product is
    at float32 rounding (3e-17 here)."""
    _, x, dense, y, _ = run("tf32x3", "q4_k", 64, 96, 512, 96, seed=1)
    split = term_error(y, x, dense)
    xh, wh = tf32_split(x)[0], tf32_split(dense)[0]
    hi_only = term_error((xh.astype(np.float64) @ wh.astype(np.float64).T).astype(np.float32), x, dense)
    assert split < 1e-15 and hi_only > THRESHOLDS["matmul"]


def test_split_input_reused_until_a_kernel_runs():
    rng = np.random.default_rng(0)
    b = FakeBackend("tf32x3")
    T, K = 12, 40
    x = b.device.alloc((T, K), rng.standard_normal((T, K)))
    products = []
    for N in (30, 20):
        weight, raw = b.weight(rng.standard_normal((N, K)), "q8_0")
        y = b.device.alloc((T, N))
        matmul.prefill_product(b, weight, raw, x, y, tile_bytes=1 << 20)
        products.append((weight, raw, y))
    assert b.launches.count("split_tf32_rows") == 1, "q and k of one input: one split"
    b._launch("matmul.cu", "bias_residual_init", 1, 1, (x, NULL, NULL, np.int32(T), np.int32(K)))   # x rewritten
    weight, raw, y = products[0]
    matmul.prefill_product(b, weight, raw, x, y, tile_bytes=1 << 20)
    assert b.launches.count("split_tf32_rows") == 2
    assert np.array_equal(y.host(), np.zeros((T, 30), np.float32)), "the product must read the rewritten input"


def test_cublas_keeps_our_workspace_when_its_stream_changes():
    """cublasSetStream puts a handle back on cuBLAS's own workspace pool (cuBLAS docs): the products of a
    graph capture (its own stream) then allocated 32 MiB outside the memory accounting on the H200
    (FT-012). Every stream change sets our workspace again, and a repeated stream costs no call."""
    from worker.backend.cuda_runtime import CublasNT

    calls = []
    lib = SimpleNamespace(cublasSetStream_v2=lambda h, p: calls.append(("stream", p)) or 0,
                          cublasSetWorkspace_v2=lambda h, p, n: calls.append(("workspace", p, n)) or 0)
    stream = SimpleNamespace(ptr=11)
    cp = SimpleNamespace(cuda=SimpleNamespace(get_current_stream=lambda: stream))
    blas = CublasNT.__new__(CublasNT)                    # no CUDA here: the library and CuPy faked
    blas._cp, blas._lib, blas.handle, blas._stream, blas._workspace = cp, lib, 1, None, None
    blas.set_workspace(0xA000, 1 << 25)
    blas.on_current_stream()
    blas.on_current_stream()
    stream.ptr = 22                                      # a capture's stream
    blas.on_current_stream()
    assert calls == [("workspace", 0xA000, 1 << 25), ("stream", 11), ("workspace", 0xA000, 1 << 25),
                     ("stream", 22), ("workspace", 0xA000, 1 << 25)]
