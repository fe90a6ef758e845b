"""Launchers of moe.cu: expert routing (top-k + softmax) and the weighted sum of the chosen experts."""
from __future__ import annotations

from worker.backend.cuda_runtime import i32


def route(k, logits, experts, weights, T: int, E: int, n_used: int) -> None:
    """logits [T, E] -> experts [T, n_used] int32 (best first, lower id on ties), weights [T, n_used]."""
    if n_used > 32:
        raise ValueError(f"moe_route picks at most 32 experts a token, got {n_used}")
    k._launch("moe.cu", "moe_route", T, 32, (logits, experts, weights, i32(E), i32(n_used)))


def combine(k, y, weights, out, n_used: int, D: int) -> None:
    """out [D] = sum_j weights[j] * y[j] for the n_used rows of y [n_used, D] (one token)."""
    k._launch("moe.cu", "moe_combine", max(1, min((D + 255) // 256, 1024)), 256, (y, weights, out, i32(n_used), i32(D)))
