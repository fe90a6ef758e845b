"""Shared machinery of the CUDA conformance tests (in the style of llama.cpp's test-backend-ops).

Every CUDA op is run against the NumPy reference backend (worker.backend.numpy) on the same
inputs; the error measure is the normalized mean squared error

    NMSE = sum((cuda - ref)^2) / sum(ref^2)

which must stay under the op's stated threshold. The CUDA backend used here fills every output
with NaN before the kernel writes it (poison_outputs=True) and synchronizes after every launch,
so an element a kernel forgot to write, or an asynchronous fault, fails the test: NaN never
passes. Each check is recorded in reports/cuda_conformance.json (op, shapes tried, worst NMSE,
threshold), rewritten after every record so that a crash still leaves the table so far.
"""
from __future__ import annotations

import contextlib
import functools
import json
import os
import threading
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
RESULTS_PATH = Path(os.environ.get("M0_CONFORMANCE_JSON", ROOT / "reports" / "cuda_conformance.json"))

# NMSE thresholds per op (and storage type where it matters). Float32 kernels against a float32/
# float64 reference land near 1e-14; the thresholds leave room for a different summation order,
# not for a wrong result. Dequantization must be exact.
THRESHOLDS = {
    "embedding": 0.0,            # dequantized rows: bit-exact with worker.quant / gguf-py
    "dequantize": 0.0,
    # Products are held to the error normalized by the size of their terms,
    # sum((cuda-ref)^2) / sum((|x| @ |W|^T)^2): random quantized rows can cancel to a sum 1e4
    # times smaller than its terms, where float32 accumulation in ANY order (the reference's
    # BLAS included) differs by far more than 1e-9 of the result.
    "matvec": 1e-11,             # fused dequantize + matrix-vector (T <= 4), float32 accumulation
    "matmul": 1e-11,             # dequantized tile + cuBLAS SGEMM (T > 4)
    "matmul_expert": 1e-11,
    # The grouped expert products on BF16 tensor cores (moe_gemm.cu v4, MXFP4 weights: bfloat16 values already):
    # each activation is two bfloat16 terms, within 2^-18 of itself, so a product is off by at most 2^-18 of its
    # term sum (term-normalized NMSE <= 2^-36 = 1.5e-11) besides the float32 sums matmul_expert allows (1e-11).
    # On the H200 the worst seen was 1.1e-13; a lost low term leaves 2^-9 of each activation (about 1e-8 at width 256).
    "matmul_expert_bf16x2": 2.5e-11,
    # Q8_0 prefill products on BF16 tensor cores (mmq.cu's mmq_bf16_q8_0, M0_CUDA_PREFILL_Q8=bf16): the same two
    # bfloat16 terms of each activation, each quant an exact bfloat16 value, a block's sum scaled by its d: the bound
    # of matmul_expert_bf16x2.
    "matmul_bf16x2": 2.5e-11,
    # Decode products on int8 activations (worker/backend/kernels/vecdot.cu), term-normalized as above.
    # Two int8 terms carry each activation to within max|block|/64516 (d1 <= d0/254, d0 = max/127).
    # Gaussian inputs land near 8.6e-10 / K; a block dominated by one large value (SwiGLU outputs) is
    # the bad case: its other 31 values keep an error of up to that bound while the term sum is the
    # large value's, about 31 / (12 * 0.64 * 32258^2) = 4e-9 for such a row (H200: worst 4e-10 seen
    # after SwiGLU). 1e-8 keeps a margin over that, far under the single-term error (matvec_q8: plain NMSE
    # 1e-5..1e-4 here) and under what a wrong index or scale gives (above 1e-4).
    "matvec_q8x2": 1e-8,
    # Also the grouped expert products of moe_gemm.cu v5 (int8 tensor cores): the same two int8 terms a 32-value
    # block, MXFP4 weights exact as int8 (doubled E2M1) with their power-of-two scale, exact int32 block sums,
    # float32 sums after them (2^-24 a step, far below): the same bound. Not yet measured on a GPU.
    "matmul_expert_q8x2": 1e-8,
    # Prefill products of Q8_0 weights on int8 tensor cores (worker/backend/kernels/mmq.cu, M0_CUDA_PREFILL_Q8=mma):
    # the same two-term activation blocks, exact int32 block sums, float32 accumulation: matvec_q8x2's bound.
    "matmul_q8x2": 1e-8,
    # One int8 term is llama.cpp's Q8_1 activation: plain NMSE against the float reference under
    # test-backend-ops' bound for quantized MUL_MAT (test_mul_mat::max_nmse_err, 5e-4).
    "matvec_q8": 5e-4,
    "gpt_ffn": 1e-6,             # plain NMSE of up -> gelu -> down (two products in a row)
    "moe": 1e-6,                 # plain NMSE of router -> top-k -> gate/up -> swiglu -> down -> weighted sum
    # The whole expert FFN of a decode token routed on the device (CudaBackend.mixture_of_experts at T = 1) on two
    # int8 terms: x and SwiGLU's output h enter the products as int8 terms, each value within max|its 32-value
    # block| / 64516. Plain NMSE has no bound there: a block of h with one large value leaves the others that
    # absolute error, and a down weight block of a large scale multiplies it (the weights drawn here have MXFP4
    # scales of 2^-20..2^20; a host model of the scheme gave plain NMSE up to 1e-4 on such draws, the H200 2.1e-6 on
    # one). moe_decode_error divides the squared error by the sum of the squared terms it comes from (the down
    # weights times each h value's block maximum, and x's block maxima carried through gate, up and SwiGLU's
    # slopes). The host model of the two-term scheme (stories/gpt/test_gt016_moe_decode_error_measure.py), 300
    # draws each of MXFP4 and Q8_0: at most 5.8e-10, median 2e-11; one int8 term, or an error of 1e-2 on every
    # output, fails it on every draw of that file, an error of 1e-3 on most (median 1.5e-7 MXFP4, 3.3e-9 Q8_0).
    "moe_q8x2": 2e-9,
    "add": 0.0,
    "mul": 0.0,
    "rmsnorm": 1e-10,
    "layernorm": 1e-10,
    "rope": 1e-10,
    "attention_f32kv": 1e-9,
    "attention_f16kv": 2e-6,     # the cache stores K/V in float16 (relative rounding 2^-11)
    "swiglu": 1e-10,
    "swiglu_clamped": 1e-10,
    "gelu": 1e-10,
    "argmax": 0.0,               # index mismatches / rows
}

# Hypothesis examples per test are multiplied by this (the sanitizer run uses a small fraction).
EXAMPLE_SCALE = float(os.environ.get("M0_EXAMPLE_SCALE", "1"))


def examples(n: int) -> int:
    return max(1, int(round(n * EXAMPLE_SCALE)))


_lock = threading.Lock()
_table: dict[str, dict] = {}


def nmse(out: np.ndarray, ref: np.ndarray) -> float:
    out = np.asarray(out, np.float64)
    ref = np.asarray(ref, np.float64)
    assert out.shape == ref.shape, f"shape {out.shape} != reference {ref.shape}"
    if not np.isfinite(out).all():
        return float("inf")                      # NaN (poison left in place) or inf never passes
    denom = float(np.sum(ref * ref))
    err = float(np.sum((out - ref) ** 2))
    if denom == 0.0:
        return 0.0 if err == 0.0 else float("inf")
    return err / denom


def _json_nmse(value: float):
    return value if np.isfinite(value) else str(value)


def _merged_rows(parts: list[list[dict]]) -> list[dict]:
    """One row an op over the processes' tables (pytest-xdist workers each keep their own)."""
    merged: dict[str, dict] = {}
    for rows in parts:
        for r in rows:
            worst = float(r["worst_nmse"])
            m = merged.get(r["op"])
            if m is None:
                merged[r["op"]] = dict(r, worst_nmse=worst)
                continue
            m["shapes_tried"] += r["shapes_tried"]
            m["failures"] += r["failures"]
            if worst > m["worst_nmse"] or worst != worst:
                m["worst_nmse"], m["worst_shape"] = worst, r["worst_shape"]
    return [dict(r, worst_nmse=_json_nmse(r["worst_nmse"])) for r in sorted(merged.values(), key=lambda r: r["op"])]


def _write_results() -> None:
    """This process's table to its own part file, then every part of this test run merged into
    RESULTS_PATH under a file lock: pytest-xdist workers record at the same time, and one shared
    temporary file renamed by each of them lost rows and failed checks (FileNotFoundError)."""
    from fixtures.paths import build_lock

    run = os.environ.get("PYTEST_XDIST_TESTRUNUID") or f"pid{os.getpid()}"
    parts = RESULTS_PATH.parent / ".cuda_conformance_parts" / run
    parts.mkdir(parents=True, exist_ok=True)
    mine = parts / f"{os.environ.get('PYTEST_XDIST_WORKER', 'main')}-{os.getpid()}.json"
    rows = [dict(r, worst_nmse=_json_nmse(r["worst_nmse"])) for r in _table.values()]
    tmp = mine.with_suffix(".tmp")
    tmp.write_text(json.dumps(rows))
    tmp.replace(mine)
    with build_lock(RESULTS_PATH):
        merged = _merged_rows([json.loads(f.read_text()) for f in sorted(parts.glob("*.json"))])
        payload = {"device": _device_name(), "metric": "NMSE sum((cuda-ref)^2)/sum(ref^2) vs worker.backend.numpy; "
                   "matvec/matmul rows: sum((cuda-ref)^2)/sum((|x|@|W|^T)^2)",
                   "rows": merged}
        tmp = RESULTS_PATH.with_name(f"{RESULTS_PATH.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(payload, indent=1))
        tmp.replace(RESULTS_PATH)


def record(op: str, shape: str, value: float, threshold: float | None = None) -> float:
    """Add one check to the results table; returns the threshold it is held to."""
    threshold = THRESHOLDS[op.split(":")[0]] if threshold is None else threshold
    with _lock:
        row = _table.setdefault(op, {"op": op, "shapes_tried": 0, "worst_nmse": 0.0, "worst_shape": "",
                                     "threshold": threshold, "failures": 0})
        if row["threshold"] != threshold:    # one row, one threshold: otherwise the table misleads
            raise ValueError(f"{op}: threshold {threshold} differs from the row's {row['threshold']}; "
                             "give checks with different thresholds different op names")
        row["shapes_tried"] += 1
        if not value <= threshold:
            row["failures"] += 1
        if value > row["worst_nmse"] or (value != value):
            row["worst_nmse"], row["worst_shape"] = value, shape
        _write_results()
    return threshold


def check(op: str, shape: str, out, ref, threshold: float | None = None) -> None:
    """Record and assert: NMSE of `out` (host array) against `ref` under the op's threshold."""
    value = nmse(out, ref)
    limit = record(op, shape, value, threshold)
    assert value <= limit, f"{op} {shape}: NMSE {value:.3e} above threshold {limit:.1e}"


def product_op(backend, op: str, qtype, T: int, N: int = 1 << 20, K: int = 1 << 20) -> str:
    """The conformance row of a product (`op`: matvec, matmul or matmul_expert) by the path the backend takes for it
    (cuda.product_path, which CudaBackend.matmul follows): `op` for the float paths, `op_q8x2` / `op_q8` on int8
    activations (the decode products, and Q8_0 prefill products on the int8 tensor cores: two terms unless
    matvec_terms says one), `op_bf16x2` on the BF16 tensor cores, since those rows hold other thresholds."""
    from worker.backend.cuda import product_path

    path, terms = product_path(backend, qtype.name.lower(), T, N, K)
    if path == "bf16":
        return f"{op}_bf16x2"
    return {0: op, 1: f"{op}_q8", 2: f"{op}_q8x2"}[terms]


def check_product(op: str, shape: str, out, ref, x, dense_w, bias=None) -> None:
    """A product y = x @ W^T (+ b): error normalized by the magnitude of its terms (see THRESHOLDS)."""
    out = np.asarray(out, np.float64)
    ref = np.asarray(ref, np.float64)
    assert out.shape == ref.shape, f"shape {out.shape} != reference {ref.shape}"
    scale = np.abs(np.asarray(x, np.float64)) @ np.abs(np.asarray(dense_w, np.float64)).T
    if bias is not None:
        scale = scale + np.abs(np.asarray(bias, np.float64))
    if not np.isfinite(out).all():
        value = float("inf")
    else:
        denom = float(np.sum(scale * scale))
        err = float(np.sum((out - ref) ** 2))
        value = err / denom if denom else (0.0 if err == 0.0 else float("inf"))
    limit = record(op, shape, value)
    assert value <= limit, f"{op} {shape}: term-normalized error {value:.3e} above threshold {limit:.1e}"


def _block_max(v: np.ndarray) -> np.ndarray:
    """Each value's 32-value block maximum of |v| (the scale its int8 terms are quantized against)."""
    v = np.abs(np.asarray(v, np.float64))
    return np.repeat(v.reshape(-1, 32).max(axis=1), 32)


def moe_decode_error(out, x, ref_ws, n_used: int, *, limit: float | None = None, alpha: float | None = None) -> float:
    """A decode token's whole expert FFN out [1, D] against the reference's, on x and SwiGLU's output h carried as
    two int8 terms a 32-value block: the squared error over the sum of the squared terms it can come from
    (THRESHOLDS' moe_q8x2). ref_ws: the reference backend's (router, router bias, gate, gate bias, up, up bias,
    down, down bias)."""
    from worker.backend.base import top_k_softmax
    from worker.backend.numpy import NumpyBackend, _sigmoid

    ref_backend = NumpyBackend()
    router, router_b, gate, gate_b, up, up_b, down, down_b = ref_ws
    x = np.asarray(x, np.float32).reshape(1, -1)
    ref = np.asarray(ref_backend.mixture_of_experts(x, *ref_ws, n_used, limit=limit, alpha=alpha), np.float64)[0]
    experts, weights = top_k_softmax(np.asarray(ref_backend.matmul(x, router, router_b), np.float64), n_used)
    gpt_oss = not (limit is None and alpha is None)
    a, offset = (1.0 if alpha is None else alpha), (1.0 if gpt_oss else 0.0)
    x_max = _block_max(x[0])
    scale2 = np.zeros_like(ref)
    for w, e in zip(weights[0], experts[0]):
        e = int(e)
        wg, wu, wd = (np.asarray(m.expert(e), np.float64) for m in (gate, up, down))
        bg, bu, bd = (np.asarray(b.dense()[e], np.float64) for b in (gate_b, up_b, down_b))
        g, u = wg @ x[0] + bg, wu @ x[0] + bu
        g_err, u_err = np.sqrt(wg ** 2 @ x_max ** 2), np.sqrt(wu ** 2 @ x_max ** 2)    # x's error's reach in g, u
        gc = np.minimum(g, limit) if limit is not None else g
        uc = np.clip(u, -limit, limit) if limit is not None else u
        s = _sigmoid(a * gc)
        h = gc * s * (uc + offset)
        # SwiGLU's slopes in g and u (zero where a clamp holds, beyond the reach of the errors)
        dg = np.abs(s * (1 + a * gc * (1 - s))) * np.abs(uc + offset)
        du = np.abs(gc * s)
        if limit is not None:
            reach = 4.0 / 64516.0                    # x's quantization error (two terms), with a margin
            dg = np.where(g <= limit + reach * g_err, dg, 0.0)
            du = np.where(np.abs(u) <= limit + reach * u_err, du, 0.0)
        scale2 += w * w * (wd ** 2 @ (_block_max(h) ** 2 + (dg * g_err) ** 2 + (du * u_err) ** 2) + bd ** 2)
    out = np.asarray(out, np.float64).reshape(ref.shape)
    if not np.isfinite(out).all():
        return float("inf")
    denom, err = float(np.sum(scale2)), float(np.sum((out - ref) ** 2))
    return err / denom if denom else (0.0 if err == 0.0 else float("inf"))


def check_moe_decode(shape: str, out, x, ref_ws, n_used: int, *, limit: float | None = None,
                     alpha: float | None = None) -> None:
    """Record and assert a decode token's whole expert FFN on two int8 activation terms (row moe_q8x2):
    moe_decode_error under its threshold."""
    value = moe_decode_error(out, x, ref_ws, n_used, limit=limit, alpha=alpha)
    op = "moe_q8x2"
    bound = record(op, shape, value)
    assert value <= bound, f"{op} {shape}: term-normalized error {value:.3e} above threshold {bound:.1e}"


@functools.lru_cache(maxsize=1)
def _device_name() -> str:
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceProperties(0)["name"].decode()
    except Exception:  # noqa: BLE001
        return "no GPU"


@functools.lru_cache(maxsize=None)
def _backend(**options):
    from worker.backend.cuda import CudaBackend

    return CudaBackend(**options)


def cuda_backend(**options):
    """A CudaBackend (one per option set per process); skips the test when no GPU is usable."""
    try:
        import cupy

        if cupy.cuda.runtime.getDeviceCount() < 1:
            pytest.skip("CuPy sees no CUDA GPU")
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"CuPy/CUDA unavailable: {type(exc).__name__}: {exc}")
    return _backend(**options)


def checking_backend():
    """The conformance backend: outputs poisoned with NaN, synchronized after every launch."""
    return cuda_backend(poison_outputs=True, sync_each_op=True)


@contextlib.contextmanager
def q8_prefill_path(path: str, *backends):
    """The backends' path of Q8_0 prefill products (CudaBackend.prefill_q8, M0_CUDA_PREFILL_Q8) set to `path`
    inside the block; without backends, the conformance ones' (skips without a GPU)."""
    backends = backends or (checking_backend(), cuda_backend())
    before = [b.prefill_q8 for b in backends]
    for b in backends:
        b.prefill_q8 = path
    try:
        yield
    finally:
        for b, old in zip(backends, before):
            b.prefill_q8 = old


def random_weight(qtype, shape: tuple, rng: np.random.Generator, name: str = "w"):
    """A QuantTensor of random valid stored blocks (finite scales) of `qtype`."""
    import gguf

    from fixtures.gguf_corrupt import random_blocks
    from worker.quant import QuantTensor

    block_size, type_size = gguf.GGML_QUANT_SIZES[qtype]
    n_blocks = int(np.prod(shape)) // block_size
    raw = np.ascontiguousarray(random_blocks(qtype, n_blocks, rng)).reshape(-1)
    return QuantTensor(name, qtype, tuple(shape), raw)


def moe_tensors(qtype, rng: np.random.Generator, E: int, D: int, F: int) -> list:
    """A random GPT-OSS expert FFN of E experts (width D, F hidden), in mixture_of_experts' argument order: router,
    router bias, then gate, up and down (stacked `qtype` experts) each with its biases."""
    router, router_b = f32_tensor(rng.standard_normal((E, D)), "router"), f32_tensor(rng.standard_normal(E), "rb")
    mats = [random_weight(qtype, shape, rng, name) for name, shape in
            (("gate", (E, F, D)), ("up", (E, F, D)), ("down", (E, D, F)))]
    biases = [f32_tensor(rng.standard_normal((E, n)) * 0.1, f"{name}_b") for name, n in (("g", F), ("u", F), ("d", D))]
    return [router, router_b, mats[0], biases[0], mats[1], biases[1], mats[2], biases[2]]


def f32_tensor(values: np.ndarray, name: str = "v"):
    import gguf

    from worker.quant import QuantTensor

    values = np.ascontiguousarray(values, dtype=np.float32)
    return QuantTensor(name, gguf.GGMLQuantizationType.F32, values.shape, values.reshape(-1).view(np.uint8))
