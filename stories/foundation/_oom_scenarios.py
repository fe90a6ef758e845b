"""OOM scenarios shared by FT-042 (llama), GT-045 (gpt2) and LT-037 (VRAM pressure, phi3).

Memory is made scarce with the backend's memory cap (memory_limit_bytes), not by hoping the GPU
runs out: the cap is set just above what the model's weights need, so a long-context request's
KV cache cannot fit while a short one can.
"""
from __future__ import annotations

import gc

import numpy as np
import pytest

from worker.errors import DeviceOOMError


def device_used() -> int:
    import cupy

    free, total = cupy.cuda.runtime.memGetInfo()
    return total - free


def greedy(model, prompt, n, n_ctx):
    b = model.backend
    cache = model.new_cache(n_ctx)
    try:
        tokens, logits, pos = [], model.forward(np.asarray(prompt), cache, 0), len(prompt)
        for _ in range(n):
            tokens.append(int(b.argmax(logits[-1])))
            logits = model.forward(np.array([tokens[-1]]), cache, pos)
            pos += 1
        return tokens
    finally:
        b.free_kv_cache(cache)


def capped_model(arch: str, headroom: int):
    """A tiny `arch` model on a CudaBackend whose cap leaves `headroom` bytes above the weights."""
    from fixtures.gguf_corrupt import tiny_model_path
    from worker.backend.cuda import CudaBackend
    from worker.gguf import GGUFModelFile
    from worker.memory_estimate import estimate_device_bytes

    gf = GGUFModelFile.open(tiny_model_path(arch))
    weights = estimate_device_bytes(gf, 1)["weights"]
    backend = CudaBackend(memory_limit_bytes=weights + headroom)
    from worker.models import load_model

    return load_model(gf, backend), backend


def oom_then_recover(arch: str, headroom: int = 8 << 20, huge: int = 1 << 20) -> dict:
    """A request whose KV cache cannot fit is refused with VRAM_OOM; the worker then serves the
    next request normally and device memory is back at its baseline. `huge`: the refused
    request's context (GPT-2 cannot exceed its learned positions, so its cap is tighter)."""
    model, b = capped_model(arch, headroom=headroom)
    prompt = [1, 5, 7, 3]
    before = greedy(model, prompt, 8, 32)
    gc.collect()
    b.release_cached_memory()
    baseline = device_used()
    report_before = b.memory_report()
    with pytest.raises(DeviceOOMError) as info:
        model.new_cache(huge)
    err = info.value
    cfg = model.config
    assert err.code == "VRAM_OOM" and err.device == "cuda:0"
    assert err.required_bytes == 2 * cfg.n_layers * huge * cfg.n_kv_heads * cfg.head_dim * 2
    assert err.available_bytes < err.required_bytes
    assert str(err.required_bytes) in err.message and str(err.available_bytes) in err.message
    gc.collect()
    b.release_cached_memory()
    assert abs(device_used() - baseline) <= 2 << 20, "device memory did not return to baseline"
    assert b.memory_report()["kv_cache"] == report_before["kv_cache"] == 0
    after = greedy(model, prompt, 8, 32)
    assert after == before, "the worker must answer normally after an OOM"
    assert b.verify_residency()["ok"]
    return {"required": err.required_bytes, "available": err.available_bytes}


def model_that_does_not_fit(arch: str) -> None:
    """Loading under a cap below the weights is refused with VRAM_OOM, and nothing stays allocated."""
    from fixtures.gguf_corrupt import tiny_model_path
    from worker.backend.cuda import CudaBackend
    from worker.gguf import GGUFModelFile
    from worker.models import load_model

    gf = GGUFModelFile.open(tiny_model_path(arch))
    stored = sum(info.nbytes for info in gf.tensors.values())
    b = CudaBackend(memory_limit_bytes=stored // 2)
    gc.collect()
    b.release_cached_memory()
    baseline = device_used()
    try:
        load_model(gf, b)
    except DeviceOOMError as exc:          # leaving the block drops the traceback (and the partial model)
        required, available, code = exc.required_bytes, exc.available_bytes, exc.code
    else:
        pytest.fail("a model over the memory cap was loaded")
    assert code == "VRAM_OOM" and required > 0 and available < stored
    gc.collect()
    b.release_cached_memory()
    assert b.memory_report()["weights"] == 0
    assert abs(device_used() - baseline) <= 2 << 20
