"""Launchers of elementwise.cu: residual add, products, SwiGLU (plain and clamped), GELU."""
from __future__ import annotations

from worker.backend.cuda_runtime import elementwise_grid, f32, i32, i64


def add(k, a, b, y, n: int) -> None:
    k._launch("elementwise.cu", "add", elementwise_grid(n), 256, (a, b, y, i64(n)))


def mul(k, a, b, y, n: int) -> None:
    k._launch("elementwise.cu", "mul", elementwise_grid(n), 256, (a, b, y, i64(n)))


def mul_rows(k, a, b, y, n: int, cols: int) -> None:
    """y[r, c] = a[r, c] * b[r]."""
    k._launch("elementwise.cu", "mul_rows", elementwise_grid(n), 256, (a, b, y, i64(n), i32(cols)))


def mul_cols(k, a, b, y, n: int, cols: int) -> None:
    """y[r, c] = a[r, c] * b[c]."""
    k._launch("elementwise.cu", "mul_cols", elementwise_grid(n), 256, (a, b, y, i64(n), i32(cols)))


def swiglu(k, g, u, y, n: int) -> None:
    k._launch("elementwise.cu", "swiglu", elementwise_grid(n), 256, (g, u, y, i64(n)))


def swiglu_clamped(k, g, u, y, n: int, limit: float | None, alpha: float | None) -> None:
    k._launch("elementwise.cu", "swiglu_clamped", elementwise_grid(n), 256,
              (g, u, y, i64(n), i32(limit is not None), f32(limit or 0.0), f32(1.0 if alpha is None else alpha)))


def swiglu_q8(k, g, u, y, xq, xds, terms: int, n: int, clamped: bool = False, limit: float | None = None,
              alpha: float | None = None) -> None:
    """swiglu (or swiglu_clamped) of n values (n % 32 == 0), also writing y as int8 activation blocks."""
    blocks = n // 32
    k._launch("elementwise.cu", "swiglu_q8", (blocks + 7) // 8, 256,
              (g, u, y, xq, xds, i64(n), i32(terms), i32(clamped), i32(limit is not None), f32(limit or 0.0),
               f32(1.0 if alpha is None else alpha)))


def gelu_tanh(k, x, y, n: int) -> None:
    k._launch("elementwise.cu", "gelu_tanh", elementwise_grid(n), 256, (x, y, i64(n)))
