"""FT-016 split TF32 products, without a GPU: the error bound of the prefill path's arithmetic.

The prefill products (worker/backend/kernels/matmul.py, "tf32x3") split every operand v into
hi = v rounded to TF32 (10 explicit mantissa bits, nearest even) and lo = (v - hi) rounded to TF32
(worker/backend/kernels/tf32.cuh), and sum x_hi w_hi + x_hi w_lo + x_lo w_hi on tensor cores, where
each TF32 x TF32 product is exact in float32. Checked here with a NumPy emulation of the split
(stories/foundation/_tf32_split.py):

* the emulation is the kernel's arithmetic: tf32.cuh compiled for the host by g++ gives the same
  bits for every class of float32 (normal, subnormal, near FLT_MAX, Inf, NaN);
* hi and lo are TF32 values (low 13 bits zero), v - hi is exact in float32, and
  |v - hi - lo| <= 2^-23 |v| (2^-22 |v| within 2^-11 of FLT_MAX, where hi is truncated);
* one product term: |x w - (x_hi w_hi + x_hi w_lo + x_lo w_hi)| <= 2^-21 (1 + 2^-12) |x| |w| for
  operands whose lo parts are normal float32 (|v| >= 2^-114) and below FLT_MAX's TF32 rounding
  boundary; <= 2^-20 |x| |w| with one operand there;
* the formats the product multiplies without a lo tile (matmul.TF32_EXACT_FORMATS) are exactly
  those whose dequantized values are all TF32 values;
* on a model-sized product that error, term-normalized as the conformance rows are, is under 1e-16
  (2.9e-18 measured), five orders of magnitude under the float32 product row's 1e-11: the GPU rows
  measure the float32 summation, as before.
"""
from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q
from hypothesis import given, settings
from hypothesis import strategies as st

from fixtures.gguf_corrupt import random_blocks
from fixtures.paths import REPO_ROOT
from stories.foundation._cuda_conformance import THRESHOLDS, random_weight
from stories.foundation._tf32_split import LOW13, is_tf32, tf32_round, tf32_split
from worker.backend.kernels.matmul import TF32_EXACT_FORMATS
from worker.backend.numpy import NumpyBackend
from worker.quant import FORMATS

pytestmark = pytest.mark.story("FT-016")
TERM_BOUND = 2.0 ** -21 * (1 + 2.0 ** -12)
ROUNDS_PAST_MAX = np.float32((2 - 2 ** -11) * 2.0 ** 127)   # from here on, TF32 rounding would give Inf


def split_error(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """x w - (x_hi w_hi + x_hi w_lo + x_lo w_hi) in float64 (each product exact there)."""
    (xh, xl), (wh, wl) = tf32_split(x), tf32_split(w)
    x, w, xh, xl, wh, wl = (np.asarray(a, np.float64) for a in (x, w, xh, xl, wh, wl))
    return x * w - (xh * wh + xh * wl + xl * wh)


def hard_values(rng: np.random.Generator) -> np.ndarray:
    """Hand-picked float32 classes: ties at the 13th bit, all-ones mantissas, powers of two, the
    normal/subnormal boundary, FLT_MAX and its neighbours, zeros, Inf, NaN; plus random bits."""
    bits = [0x3F800000 | 0x1000, 0x3F800000 | 0x3000, 0x3F800000 | 0x1FFF, 0x3FFFFFFF, 0x3F800000, 0x00800000,
            0x00801000, 0x007FFFFF, 0x00000001, 0x7F7FFFFF, 0x7F7FF000, 0x7F7FEFFF, 0x7F7FE000, 0x00000000,
            0x80000000, 0x7F800000, 0xFF800000, 0x7FC00000, 0x7F800001, 0xFFFFFFFF]
    bits = np.array(bits + [b | 0x80000000 for b in bits], np.uint32)
    return np.concatenate([bits, rng.integers(0, 2 ** 32, 4000, dtype=np.uint64).astype(np.uint32)]).view(np.float32)


def normal_operands(rng: np.random.Generator, n: int) -> np.ndarray:
    """Finite float32 values with normal lo parts, below the TF32 rounding boundary: random mantissas
    and signs over exponents 2^-100 .. 2^100, and the hard mantissas at exponent 0."""
    mant = rng.integers(0, 2 ** 23, n, dtype=np.uint32)
    mant[: 64] = [0x1000, 0x3000, 0x1FFF, 0x7FFFFF, 0, 0x7FF000, 0x7FEFFF, 0x400FFF] * 8
    exps = rng.integers(127 - 100, 127 + 100, n).astype(np.uint32)
    sign = rng.integers(0, 2, n).astype(np.uint32) << np.uint32(31)
    return (sign | (exps << np.uint32(23)) | mant).view(np.float32)


# -- the split of one value -------------------------------------------------------------------------

@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 2 ** 31))
def test_split_parts_are_tf32_values_that_sum_back(seed):
    v = hard_values(np.random.default_rng(seed))
    hi, lo = tf32_split(v)
    finite = np.isfinite(v)
    assert not (hi.view(np.uint32) & LOW13)[finite].any() and not (lo.view(np.uint32) & LOW13).any()
    assert np.array_equal(hi.view(np.uint32)[~finite], v.view(np.uint32)[~finite]), "Inf/NaN pass through"
    assert not lo[~finite].any(), "a non-finite value's lo part is 0"
    v64, hi64 = v[finite].astype(np.float64), hi[finite].astype(np.float64)
    assert np.array_equal(v64 - hi64, (v[finite] - hi[finite]).astype(np.float64)), "v - hi must be exact in float32"
    assert np.isfinite(hi[finite]).all(), "rounding a finite value must not overflow"
    rest = np.abs(v64 - hi64 - lo[finite].astype(np.float64))
    near_max = np.abs(v[finite]) >= ROUNDS_PAST_MAX
    normal_lo = np.abs(v64) >= 2.0 ** -114
    assert (rest <= 2.0 ** -23 * np.abs(v64))[normal_lo & ~near_max].all()
    assert (rest <= 2.0 ** -22 * np.abs(v64))[near_max].all()
    assert (rest <= 2.0 ** -137)[~normal_lo].all(), "subnormal lo parts: TF32's step there is 2^-136"


# -- one product term -------------------------------------------------------------------------------

@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 2 ** 31))
def test_product_term_error_is_at_most_2_to_the_minus_21(seed):
    rng = np.random.default_rng(seed)
    x, w = normal_operands(rng, 20000), normal_operands(rng, 20000)
    ratio = np.abs(split_error(x, w)) / (np.abs(x.astype(np.float64)) * np.abs(w.astype(np.float64)))
    assert ratio.max() <= TERM_BOUND, f"term error {ratio.max():.3e} of |x||w| above 2^-21 (1 + 2^-12)"
    # what is dropped is real: without the lo terms the error is that of TF32 itself (about 2^-12)
    xh, wh = tf32_round(x).astype(np.float64), tf32_round(w).astype(np.float64)
    plain = np.abs(x.astype(np.float64) * w - xh * wh) / np.abs(x.astype(np.float64) * w)
    assert plain.max() > 2.0 ** -13


def test_product_term_bound_near_float_max():
    """One operand at the top of float32's range (hi truncated there): the term error stays under 2^-20."""
    rng = np.random.default_rng(1)
    top = np.array([0x7F7FFFFF, 0x7F7FF000, 0x7F7FEFFF, 0x7F7FF001, 0x7F7FFFFE], np.uint32).view(np.float32)
    x = np.concatenate([top, -top, rng.uniform(ROUNDS_PAST_MAX, np.finfo(np.float32).max, 1000).astype(np.float32)])
    w = normal_operands(rng, x.size) * np.float32(2.0 ** -130)
    w = np.where(np.isfinite(w) & (np.abs(w) >= 2.0 ** -100), w, np.float32(1e-30)).astype(np.float32)
    ratio = np.abs(split_error(x, w)) / (np.abs(x.astype(np.float64)) * np.abs(w.astype(np.float64)))
    assert ratio.max() <= 2.0 ** -20


def test_model_sized_product_error_is_far_under_the_row_threshold():
    """Qwen2.5's down projection shape (896 x 4864, Q4_K) for 16 tokens, split arithmetic only."""
    rng = np.random.default_rng(2)
    dense = NumpyBackend().load_weight(random_weight(Q.Q4_K, (896, 4864), rng)).dense()
    x = rng.standard_normal((16, 4864)).astype(np.float32)
    (xh, xl), (wh, wl) = tf32_split(x), tf32_split(dense)
    f64 = [np.asarray(a, np.float64) for a in (x, dense, xh, xl, wh, wl)]
    x64, w64, xh64, xl64, wh64, wl64 = f64
    exact = x64 @ w64.T
    split = xh64 @ wh64.T + xh64 @ wl64.T + xl64 @ wh64.T
    scale = np.abs(x64) @ np.abs(w64).T
    value = float(np.sum((split - exact) ** 2) / np.sum(scale * scale))
    print(f"split error, term-normalized NMSE: {value:.3e}")
    # 2.9e-18 here; the float32 sums themselves land near 1e-15 on the GPU rows
    assert 0 < value <= 1e-16 <= THRESHOLDS["matmul"] * 1e-5


# -- formats whose values are TF32 values already ----------------------------------------------------

@pytest.mark.parametrize("qtype", list(FORMATS), ids=lambda q: q.name)
def test_tf32_exact_formats_are_the_formats_with_tf32_values(qtype):
    """matmul.TF32_EXACT_FORMATS skips the lo tile: right only where every stored value, finite
    scales or not, dequantizes (worker.quant, which the CUDA dequantization matches bit for bit)
    to a TF32 value; the other formats do produce values with more bits."""
    rng = np.random.default_rng(int(qtype))
    fmt = FORMATS[qtype]
    with np.errstate(all="ignore"):
        values = [fmt.dequantize_blocks(np.ascontiguousarray(random_blocks(qtype, 4000, rng, sane=sane)))
                  for sane in (True, False)]
    assert all(is_tf32(v) for v in values) == (fmt.kernel in TF32_EXACT_FORMATS)


# -- the kernel's source, compiled for the host ---------------------------------------------------

_HOST_PROGRAM = r"""
#include <cmath>
#include <cstdio>
#include <cstring>
typedef unsigned int u32;
#define __device__
#define __forceinline__ inline
static inline u32 __float_as_uint(float f) { u32 u; std::memcpy(&u, &f, 4); return u; }
static inline float __uint_as_float(u32 u) { float f; std::memcpy(&f, &u, 4); return f; }
%s
int main() {
    float v;
    while (std::fread(&v, 4, 1, stdin) == 1) {
        float hi, lo;
        tf32_split(v, hi, lo);
        std::fwrite(&hi, 4, 1, stdout);
        std::fwrite(&lo, 4, 1, stdout);
    }
    return 0;
}
"""


@pytest.mark.skipif(shutil.which("g++") is None, reason="g++ is not installed on this machine")
def test_kernel_split_is_the_emulated_split(tmp_path):
    source = (REPO_ROOT / "worker" / "backend" / "kernels" / "tf32.cuh").read_text()
    source = "\n".join(line for line in source.splitlines() if not line.startswith(("#include", "#pragma")))
    (tmp_path / "split.cpp").write_text(_HOST_PROGRAM % source)
    build = subprocess.run(["g++", "-O1", "-std=c++17", "-o", str(tmp_path / "split"), str(tmp_path / "split.cpp")],
                           capture_output=True, text=True, timeout=120)
    assert build.returncode == 0, build.stderr
    v = hard_values(np.random.default_rng(0))
    run = subprocess.run([str(tmp_path / "split")], input=v.tobytes(), capture_output=True, timeout=60)
    assert run.returncode == 0
    got = np.frombuffer(run.stdout, np.uint32).reshape(-1, 2)
    hi, lo = tf32_split(v)
    np.testing.assert_array_equal(got[:, 0], hi.view(np.uint32))
    np.testing.assert_array_equal(got[:, 1], lo.view(np.uint32))
