"""Gate 4, G4-OOM-RECOVERY: a request whose KV cache does not fit gets VRAM_OOM and the worker
stays healthy (GPU).

A real `python -m worker serve --device cuda` process serves the tiny llama fixture with a very
long context (--ctx CTX). How memory is made scarce, and why not with the worker's cap:
`serve --max-memory` is a start-up admission check only (worker/cli/serve.py compares the
estimate for weights + a full --ctx KV cache + workspace with the cap, and the cap is not handed
to the backend), so under it every request within --ctx fits by construction. A request's KV
cache can therefore only fail to fit when something else has taken the GPU's memory, which is
what this test does: after the worker is warm, the test process itself allocates all but LEAVE
bytes of the device (plain cudaMalloc, another CUDA context on the same GPU). Then

  1. a request whose KV cache (prompt + max_tokens positions, float16) needs ~1 GiB is answered
     with `started` and an `error` event with code VRAM_OOM whose message gives the bytes;
     nothing was allocated for it (device memory used is unchanged);
  2. /health still says ready, with no KV cache held and residency ok;
  3. a normal request, still under the same memory pressure, streams to `end` with exactly the
     tokens it produced before the OOM (greedy);
  4. once the pressure is gone, the device memory in use is back at the warm baseline.
"""
from __future__ import annotations

import httpx
import pytest

from fixtures.server_process import check_stream, execute, worker_server

pytestmark = pytest.mark.gpu

CTX = 1 << 21                 # served context: a request may ask for up to ~2M positions
HUGE_MAX_TOKENS = CTX // 2    # KV cache of ~1M positions: 1 GiB for the tiny llama (1 KiB/position)
LEAVE = 256 << 20             # free device memory left to the worker while the test holds the rest
SLACK = 16 << 20              # allowed drift of device memory in use (allocator granularity, caches)
PROMPT = "Tell me about the sea."


def device_used() -> int:
    import cupy

    free, total = cupy.cuda.runtime.memGetInfo()
    return int(total - free)


def device_free() -> int:
    import cupy

    return int(cupy.cuda.runtime.memGetInfo()[0])


def hold_device_memory(leave: int) -> list:
    """Allocate device memory until only about `leave` bytes are free; returns the buffers."""
    import cupy

    held, step = [], 1 << 30
    while step >= 1 << 20:
        want = device_free() - leave
        if want < step:
            step //= 2
            continue
        try:
            held.append(cupy.cuda.memory.Memory(step))
        except Exception:      # noqa: BLE001 — fragmentation: try smaller pieces
            step //= 2
    return held


def greedy_request(url: str, job_id: str) -> dict:
    response, events = execute(url, {"job_id": job_id, "prompt": PROMPT, "max_tokens": 6, "temperature": 0})
    assert response.status_code == 200, events
    summary = check_stream(events)
    assert summary["terminal"] == "end", events[-1]
    return summary


@pytest.mark.gate_check("G4-OOM-RECOVERY")
def test_kv_cache_oom_is_an_error_event_and_the_worker_stays_healthy(record_model):
    from fixtures.tiny_models import tiny_model_path

    path = tiny_model_path("llama")
    record_model(path)
    device_used()                                              # create this process's context first
    with worker_server(path, device="cuda", extra=["--ctx", str(CTX)], ready_timeout=600) as server:
        url = server.url
        warm = greedy_request(url, "oom-warm-up")              # kernels compiled, workspace sized
        baseline = device_used()

        held = hold_device_memory(LEAVE)
        try:
            free_now = device_free()
            kv_bytes = 2 * 2 * 2 * 64 * 2 * HUGE_MAX_TOKENS      # layers * (K,V) * kv_heads * head_dim * f16
            assert free_now < kv_bytes - (64 << 20), f"could not make memory scarce: {free_now} bytes free"
            under_pressure = device_used()

            response, events = execute(url, {"job_id": "oom-huge", "prompt": PROMPT,
                                             "max_tokens": HUGE_MAX_TOKENS, "temperature": 0})
            assert response.status_code == 200, events
            summary = check_stream(events)
            assert summary["terminal"] == "error", f"expected an error event, got {events[-1]}"
            error = summary["end"]
            assert error["code"] == "VRAM_OOM", error
            assert "needs" in error["message"] and "available" in error["message"], error["message"]
            assert summary["tokens"] == []
            assert abs(device_used() - under_pressure) <= SLACK, "the refused KV cache left memory allocated"
            finished = server.wait_for(lambda r: r.get("event") == "job_finished" and r.get("job_id") == "oom-huge",
                                       timeout=30)
            assert finished["code"] == "VRAM_OOM"

            health = httpx.get(url + "/health", timeout=10).json()
            assert health["status"] == "ready", health
            assert health["memory_bytes"]["kv_cache"] == 0 and health["job"] is None
            assert health["residency"]["status"] == "ok", health["residency"]

            again = greedy_request(url, "oom-after")           # still under the same pressure
            assert again["ids"] == warm["ids"], "the worker answers differently after an OOM"
        finally:
            del held[:]
        assert abs(device_used() - baseline) <= SLACK, \
            f"device memory in use {device_used()} did not return to the baseline {baseline}"
        assert httpx.get(url + "/health", timeout=10).json()["memory_bytes"]["kv_cache"] == 0
