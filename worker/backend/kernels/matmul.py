"""Launchers of matmul.cu: fused dequantize + matrix-vector product, row dequantization, bias add."""
from __future__ import annotations

from worker.backend.cuda_runtime import i32, i64

MATVEC_MAX_T = 4                      # tokens one matvec launch handles: must match matmul.cu
MATVEC_ROWS_PER_BLOCK = 4             # one warp per output row


def matvec(k, w, raw, x, bias, y, N: int, K: int, T: int) -> None:
    """y[t, n] = x[t] . W[n] (+ bias[n]) for T <= MATVEC_MAX_T tokens; raw: the weight's (expert's) bytes."""
    k._launch("matmul.cu", f"matvec_{w.format}", (N + MATVEC_ROWS_PER_BLOCK - 1) // MATVEC_ROWS_PER_BLOCK,
              32 * MATVEC_ROWS_PER_BLOCK, (raw, i64(w.row_bytes), x, bias, y, i32(N), i32(K), i32(T)))


def dequant_rows(k, w, raw, ids, first_row: int, out, n_rows: int, K: int) -> None:
    """out[i] = W[ids[i] if ids else first_row + i] as float32, for i < n_rows."""
    total = n_rows * (K // 8 + K % 8)
    if total:
        k._launch("matmul.cu", f"dequant_rows_{w.format}", (total + 255) // 256, 256,
                  (raw, i64(w.row_bytes), ids, i64(first_row), out, i32(n_rows), i32(K)))


def add_bias(k, y, bias, T: int, N: int) -> None:
    """y[t, n] += bias[n]."""
    k._launch("matmul.cu", "add_bias", (T * N + 255) // 256, 256, (y, bias, i32(T), i32(N)))
