"""FT-008 / FT-009 error codes: CUDA failures surface as WorkerError subclasses with stable codes.

Acceptance: no GPU or no CuPy -> CUDA_UNAVAILABLE; a device index that does not exist ->
CUDA_DEVICE_NOT_FOUND; device memory exhausted -> VRAM_OOM (DeviceOOMError with required and
available bytes and the device); bad kernel input -> INVALID_PARAMS naming the field. Each error
serializes to {"code", "message"[, "field"]}, never a traceback.
"""
import json
import os
import subprocess
import sys

import gguf
import numpy as np
import pytest

from worker.errors import DeviceOOMError, InvalidParamsError, WorkerError

pytestmark = pytest.mark.exclusive_device  # measures or fills the whole device: alone under pytest-xdist

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# The no-GPU path in a process of its own, for a machine whose GPU this process already sees: the
# CUDA runtime reads CUDA_VISIBLE_DEVICES once, at its start, so the child sees no device at all.
NO_GPU_CHILD = """
import json
from worker.backend import get_backend, visible_gpu
from worker.errors import WorkerError
answer = {"gpu_seen": visible_gpu()}
try:
    get_backend("cuda")
except WorkerError as exc:
    answer.update(kind="WorkerError", code=exc.code, as_dict=exc.to_dict())
except BaseException as exc:
    answer.update(kind=type(exc).__name__, message=str(exc))
print(json.dumps(answer))
"""


def _gpu_visible() -> bool:
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # noqa: BLE001
        return False


def _no_gpu_answer_in_a_child() -> dict:
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [REPO, env.get("PYTHONPATH")]))
    done = subprocess.run([sys.executable, "-c", NO_GPU_CHILD], capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.story("FT-008", "FT-009")
def test_no_gpu_is_a_clear_error_not_a_traceback():
    if _gpu_visible():   # hide it from a child process and check there (the same assertions)
        answer = _no_gpu_answer_in_a_child()
        assert answer["gpu_seen"] is None, f"the child still sees a GPU: {answer}"
        assert answer["kind"] == "WorkerError", answer
        assert answer["code"] == "CUDA_UNAVAILABLE"
        assert answer["as_dict"]["code"] == "CUDA_UNAVAILABLE" and answer["as_dict"]["message"]
        return
    from worker.backend import get_backend

    with pytest.raises(WorkerError) as info:
        get_backend("cuda")
    assert info.value.code == "CUDA_UNAVAILABLE"
    assert info.value.to_dict()["code"] == "CUDA_UNAVAILABLE" and info.value.message


@pytest.mark.story("FT-008", "FT-009")
def test_the_no_gpu_check_in_a_child_with_the_gpu_hidden():
    """The path a GPU machine takes: the child sees no device and gets CUDA_UNAVAILABLE as an error
    object (here it runs on a machine without a GPU too, so the child's check cannot rot)."""
    answer = _no_gpu_answer_in_a_child()
    assert answer["gpu_seen"] is None
    assert answer["kind"] == "WorkerError" and answer["code"] == "CUDA_UNAVAILABLE", answer
    assert set(answer["as_dict"]) == {"code", "message"} and answer["as_dict"]["message"]


@pytest.mark.gpu
@pytest.mark.story("FT-008", "FT-009")
def test_missing_device_index_is_reported_by_code():
    from worker.backend import get_backend

    with pytest.raises(WorkerError) as info:
        get_backend("cuda:97")
    assert info.value.code == "CUDA_DEVICE_NOT_FOUND"
    assert "97" in info.value.message


@pytest.mark.gpu
@pytest.mark.story("FT-008", "FT-009")
def test_out_of_memory_carries_required_and_available_bytes():
    from worker.backend.cuda import CudaBackend

    b = CudaBackend(memory_limit_bytes=1 << 20)
    with pytest.raises(DeviceOOMError) as info:
        b.new_kv_cache(4, 4096, 8, 128)
    err = info.value
    assert err.code == "VRAM_OOM"
    assert err.required_bytes == 2 * 4 * 4096 * 8 * 128 * 2
    assert 0 <= err.available_bytes <= 1 << 20
    assert err.device == "cuda:0"
    assert set(err.to_dict()) == {"code", "message"}


@pytest.mark.gpu
@pytest.mark.story("FT-008", "FT-009")
def test_bad_inputs_name_the_field():
    from stories.foundation._cuda_conformance import cuda_backend, f32_tensor

    b = cuda_backend()
    table = b.load_weight(f32_tensor(np.ones((10, 4))))
    with pytest.raises(InvalidParamsError) as info:
        b.embedding(table, np.array([3, 10]))
    assert info.value.field == "ids" and "10" in info.value.message
    w = b.load_weight(f32_tensor(np.ones((2, 3, 4))))
    with pytest.raises(InvalidParamsError) as info:
        b.matmul(b.asarray(np.ones((1, 4))), w, expert=5)
    assert info.value.field == "expert"
    bad = __import__("worker.quant", fromlist=["QuantTensor"]).QuantTensor(
        "w", gguf.GGMLQuantizationType.Q4_0, (2, 30), np.zeros(36, np.uint8))
    with pytest.raises(InvalidParamsError):
        b.load_weight(bad)                   # a row of 30 is not whole 32-value blocks
