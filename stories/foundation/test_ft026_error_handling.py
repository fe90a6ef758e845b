"""FT-026 Error handling integration: bad start-ups end cleanly, with the error named.

Acceptance: a corrupt model file makes `python -m worker serve` exit non-zero with
`error: <CODE>: <message>` naming the problem and no Python traceback; a model that does not fit
the memory available (here a --max-memory cap, which also works on cpu) is refused before any
weight is allocated, with the required bytes, available bytes, device and model path in the
message, exit status 1; a path that is not a model file (missing, a directory, a FIFO, a device)
is refused with the code `inspect` gives it (one check for both). None of these ever binds the port.
On the cpu the cap counts what the NumPy backend really holds: each tensor as stored plus its
float32 copy.
"""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fixtures.paths import REPO_ROOT
from fixtures.server_process import start_worker

pytest_plugins = ["fixtures.server_fixtures"]
pytestmark = pytest.mark.story("FT-026")


def _tiny():
    from fixtures.tiny_models import tiny_model_path

    return tiny_model_path("llama")


def _assert_clean_refusal(worker, status):
    assert worker.wait_exit(120) == status, worker.stderr_text()
    err = worker.stderr_text()
    assert "Traceback" not in err and "Traceback" not in worker.stdout_text()
    assert not [r for r in worker.narration() if r["event"] in ("listening", "model_load_started")]
    failed = [r for r in worker.narration() if r["event"] == "startup_failed"]
    assert len(failed) == 1
    plain = [line for line in err.splitlines() if line.startswith("error: ")]
    assert plain, err
    return failed[0], plain[0]


CORRUPTIONS = {
    "bad magic": lambda data: b"GGUX" + data[4:],
    "truncated": lambda data: data[: len(data) // 2],
    "empty": lambda data: b"",
    "version 99": lambda data: data[:4] + (99).to_bytes(4, "little") + data[8:],
}


@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
def test_a_corrupt_model_exits_cleanly_naming_the_error(tmp_path, corruption):
    path = tmp_path / "corrupt.gguf"
    path.write_bytes(CORRUPTIONS[corruption](_tiny().read_bytes()))
    worker = start_worker(path)
    failed, line = _assert_clean_refusal(worker, 2)
    assert re.match(r"error: (GGUF_[A-Z_]+|UNSUPPORTED_[A-Z_]+): ", line), line
    assert failed["code"] in line and str(path) in line


def _not_a_model_file(kind, tmp_path):
    if kind == "missing":
        return tmp_path / "nowhere.gguf"
    if kind == "directory":
        return tmp_path
    if kind == "fifo":
        os.mkfifo(tmp_path / "pipe.gguf")        # opening it would block: it must be refused unopened
        return tmp_path / "pipe.gguf"
    return Path("/dev/zero")                     # a device: endless zeros, never a GGUF file


@pytest.mark.parametrize("kind", ["missing", "directory", "fifo", "device"])
def test_a_path_that_is_not_a_model_file_is_refused_as_inspect_refuses_it(tmp_path, kind):
    """serve and inspect run one check: the same code (GGUF_UNREADABLE) and the path named."""
    path = _not_a_model_file(kind, tmp_path)
    inspected = subprocess.run([sys.executable, "-m", "worker", "inspect", str(path), "--json"], cwd=REPO_ROOT,
                               capture_output=True, text=True, timeout=60)
    assert inspected.returncode == 2
    inspect_code = json.loads(inspected.stdout)["error"]["code"]
    worker = start_worker(path)
    failed, line = _assert_clean_refusal(worker, 2)
    assert failed["code"] == inspect_code == "GGUF_UNREADABLE"
    assert line.startswith("error: GGUF_UNREADABLE: ") and str(path) in line
    assert ("does not exist" if kind == "missing" else "is not a regular file") in line


def _cuda_device_count() -> int:
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount()
    except Exception:  # noqa: BLE001 — no CuPy or no driver: no GPU
        return 0


def test_a_missing_gpu_is_a_clear_start_up_error():
    """--device cuda without CuPy/driver/GPU, or cuda:N beyond the GPUs there, is refused by name."""
    count = _cuda_device_count()
    worker = start_worker(_tiny(), device="cuda" if count == 0 else f"cuda:{count + 7}")
    failed, line = _assert_clean_refusal(worker, 2)
    expected = "CUDA_UNAVAILABLE" if count == 0 else "CUDA_DEVICE_NOT_FOUND"
    assert failed["code"] == expected and line.startswith(f"error: {expected}: "), line


def test_a_model_that_does_not_fit_is_refused_before_allocation(tmp_path):
    from gguf import GGUFReader

    path = tmp_path / "tiny.gguf"
    shutil.copy(_tiny(), path)
    weights = sum(int(t.n_bytes) for t in GGUFReader(str(path)).tensors)   # oracle: gguf-py
    cap = weights // 2                                                       # less than the weights alone
    worker = start_worker(path, extra=["--max-memory", str(cap)])
    failed, line = _assert_clean_refusal(worker, 1)
    assert failed["code"] == "VRAM_OOM"
    assert failed["required_bytes"] >= weights
    assert failed["available_bytes"] == cap
    assert failed["device"] == "cpu"
    assert failed["model_path"] == str(path)
    for fact in (str(failed["required_bytes"]), str(cap), "cpu", str(path)):
        assert fact in line, (fact, line)


def test_a_cap_that_fits_starts_normally(tiny_server):
    # tiny_server runs with --max-memory 4G
    check = next(r for r in tiny_server.narration() if r["event"] == "memory_check")
    assert check["max_memory"] == 4 << 30
    assert check["required_bytes"] <= check["available_bytes"] <= 4 << 30


def test_on_the_cpu_the_cap_counts_the_float32_copies_of_the_weights(tiny_server, tmp_path):
    """The NumPy backend keeps every tensor as stored and its float32 copy: the estimate, the
    refusal and /health all count both (the file's sizes read with gguf-py, the oracle)."""
    import httpx
    from gguf import GGUFReader

    from fixtures.server_process import execute

    tensors = GGUFReader(str(_tiny())).tensors
    expected_weights = sum(int(t.n_bytes) for t in tensors) + 4 * sum(int(t.n_elements) for t in tensors)
    check = next(r for r in tiny_server.narration() if r["event"] == "memory_check")
    assert check["estimate"]["weights"] == expected_weights
    execute(tiny_server.url, {"job_id": "ft026-mem", "prompt": "Hello", "max_tokens": 2})
    assert httpx.get(tiny_server.url + "/health").json()["memory_bytes"]["weights"] == expected_weights
    # A cap that holds the stored weights, the KV cache and the workspace, but not the copies.
    path = tmp_path / "tiny.gguf"
    shutil.copy(_tiny(), path)
    cap = check["required_bytes"] - 2 * sum(int(t.n_elements) for t in tensors)
    failed, _ = _assert_clean_refusal(start_worker(path, extra=["--max-memory", str(cap)]), 1)
    assert failed["code"] == "VRAM_OOM" and failed["required_bytes"] == check["required_bytes"]


def test_a_bug_in_the_server_is_a_json_500_internal_never_a_client_error():
    """An exception that is no WorkerError (here: the engine's input check itself breaks) is our bug:
    500 INTERNAL as JSON with the correlation id, and the next request is served."""
    from types import SimpleNamespace

    from fastapi.testclient import TestClient

    from worker.jobs import WorkerState
    from worker.server import create_app

    def broken_prepare(prompt, params):
        raise KeyError("a bug")

    state = WorkerState(model_path="model.gguf", device="cpu", n_ctx=64, info={"name": "model.gguf"})
    state.ready(backend=None, model=None, tokenizer=None, engine=SimpleNamespace(prepare=broken_prepare))
    with TestClient(create_app(state), raise_server_exceptions=False) as client:
        response = client.post("/execute", json={"job_id": "bug", "prompt": "Hi"}, headers={"X-Correlation-Id": "b-1"})
        assert response.status_code == 500
        assert response.json()["code"] == "INTERNAL" and "KeyError" in response.json()["message"]
        assert response.headers["x-correlation-id"] == "b-1"
        assert state.job is None                            # the slot was never claimed
        assert client.get("/health").status_code == 200
