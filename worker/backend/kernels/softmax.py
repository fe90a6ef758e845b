"""Launcher of softmax.cu: row argmax (sampling runs on the host; greedy decoding asks the device)."""
from __future__ import annotations

from worker.backend.cuda_runtime import i32


def argmax(k, x, out, rows: int, N: int) -> None:
    if rows:
        k._launch("softmax.cu", "argmax", rows, 256, (x, out, i32(N)))
