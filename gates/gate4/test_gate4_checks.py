"""Gate 4 — M0 complete: every model serves a request end to end; OOM recovery and the
performance baseline on the GPU. (Docs and CI checks: test_gate4_docs.py, FT-039.)"""
import pytest

from fixtures.paths import user_model
from fixtures.server_process import execute, worker_server

TINY = ["llama", "qwen2", "phi3", "gpt2", "gpt-oss"]
REAL = {"qwen2.5": "M0_QWEN25_GGUF", "phi3": "M0_PHI3_GGUF", "gpt-oss-20b": "M0_GPT_OSS_GGUF"}


def tiny_path(arch):
    if arch == "gpt-oss":
        from fixtures.tiny_gpt_oss import tiny_gpt_oss_path

        return tiny_gpt_oss_path()
    from fixtures.tiny_models import tiny_model_path

    return tiny_model_path(arch)


def assert_serves_a_request(url: str, job_id: str) -> None:
    response, events = execute(url, {"job_id": job_id, "prompt": "Tell me about the sea.", "max_tokens": 4,
                                     "temperature": 0})
    names = [n for n, _ in events]
    assert response.status_code == 200 and names[0] == "started" and names[-1] == "end", events[-3:]
    assert names.count("token") == events[-1][1]["tokens_out"] >= 1


@pytest.mark.worker_http
@pytest.mark.gate_check("G4-ALL-MODELS")
@pytest.mark.parametrize("arch", TINY)
def test_every_tiny_architecture_serves_a_request(arch, device, record_model):
    path = tiny_path(arch)
    record_model(path)
    with worker_server(path, device=device) as server:
        assert_serves_a_request(server.url, f"all-{arch}")


@pytest.mark.gate_check("G4-ALL-MODELS")
def test_smollm2_serves_a_request(smollm2_server, model_path):
    assert_serves_a_request(smollm2_server.url, "all-smollm2")


@pytest.mark.worker_http
@pytest.mark.slow
@pytest.mark.gate_check("G4-ALL-MODELS")
@pytest.mark.parametrize("name", sorted(REAL))
def test_every_real_model_serves_a_request(name, device, record_model, request):
    request.applymarker(pytest.mark.needs_model(name))
    path = user_model(REAL[name])
    if path is None:
        pytest.skip(f"real model {name!r} not available: set {REAL[name]} to its GGUF file")
    record_model(path)
    with worker_server(path, device=device, ready_timeout=1800) as server:
        assert_serves_a_request(server.url, f"all-{name}")
