"""Launchers of softmax.cu: row softmax with temperature, row argmax."""
from __future__ import annotations

from worker.backend.cuda_runtime import f32, i32


def softmax(k, x, y, rows: int, N: int, temperature: float) -> None:
    if rows and N:
        k._launch("softmax.cu", "softmax", rows, 256, (x, y, i32(N), f32(1.0 / temperature)))


def argmax(k, x, out, rows: int, N: int) -> None:
    if rows:
        k._launch("softmax.cu", "argmax", rows, 256, (x, out, i32(N)))
