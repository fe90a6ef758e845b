"""Gate 1 — foundation and kernels: the gate's own end-to-end checks.

The kernel and component stories are collected from stories/ by the gate plugin; these checks
cover what no single story does: a real worker process streaming over SSE, the op boundary being
complete on both backends, and model weights living in device memory only.
"""
import pytest

from fixtures.server_process import execute


@pytest.mark.gate_check("G1-HTTP-SSE")
def test_a_real_worker_process_streams_started_tokens_and_one_end(tiny_server, record_model):
    from fixtures.external_worker import external_worker
    from fixtures.tiny_models import tiny_model_path

    external = external_worker()      # --worker-url: the file that worker says it serves
    record_model(tiny_model_path("llama") if external is None else external.model_file() or external.model_name)
    response, events = execute(tiny_server.url, {"job_id": "gate1-sse", "prompt": "Hello", "max_tokens": 5,
                                                 "temperature": 0})
    assert response.status_code == 200
    names = [name for name, _ in events]
    assert names[0] == "started", names
    assert names[-1] == "end" and names.count("end") == 1 and "error" not in names, names
    tokens = [data for name, data in events if name == "token"]
    assert len(tokens) == 5 and [t["i"] for t in tokens] == list(range(5))
    assert events[-1][1]["tokens_out"] == 5


@pytest.mark.gate_check("G1-OP-BOUNDARY")
def test_numpy_reference_implements_every_backend_op():
    from worker.backend.base import Backend
    from worker.backend.numpy import NumpyBackend

    required = set(Backend.__abstractmethods__)
    assert len(required) >= 15, required
    assert not NumpyBackend.__abstractmethods__, f"NumPy backend lacks {sorted(NumpyBackend.__abstractmethods__)}"
    NumpyBackend()


@pytest.mark.gpu
@pytest.mark.gate_check("G1-OP-BOUNDARY")
def test_cuda_backend_implements_every_backend_op():
    from worker.backend.cuda import CudaBackend

    assert not CudaBackend.__abstractmethods__, f"CUDA backend lacks {sorted(CudaBackend.__abstractmethods__)}"
    CudaBackend()


@pytest.mark.gpu
@pytest.mark.gate_check("G1-CUDA-VRAM")
def test_weights_are_resident_in_device_memory_only(model_path):
    from worker.backend import get_backend
    from worker.models import load_model

    backend = get_backend("cuda")
    model = load_model(model_path, backend)
    report = backend.verify_residency()
    assert report["ok"], report
    assert report["checked"] >= 3 * model.config.n_layers, report
    assert backend.memory_report()["weights"] > 0
