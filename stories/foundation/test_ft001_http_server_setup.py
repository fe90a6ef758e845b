"""FT-001 HTTP server setup: `python -m worker serve` is a real HTTP server on loopback.

Acceptance: the CLI binds 127.0.0.1 unless told otherwise; GET /health answers `ready` once the
model is loaded and reports the model's facts as the file states them (read here with gguf-py,
not with our reader), the device, memory by kind, residency and uptime; unknown routes and
wrong methods get JSON errors.
"""
import time
from collections import Counter

import httpx
import pytest

pytest_plugins = ["fixtures.server_fixtures"]
pytestmark = pytest.mark.story("FT-001")


def test_serve_binds_loopback_by_default():
    from worker.__main__ import build_parser

    args = build_parser().parse_args(["serve"])
    assert args.host == "127.0.0.1"
    assert args.device == "auto"
    assert args.model is None           # -> the embedded SmolLM2


def test_the_running_worker_listens_on_loopback(tiny_server):
    listening = tiny_server.wait_for(lambda r: r["event"] == "listening")
    assert listening["host"] == "127.0.0.1"
    assert tiny_server.url == f"http://127.0.0.1:{listening['port']}"


def _gguf_py_facts(path):
    """The file's facts as llama.cpp's own gguf-py reads them (the oracle)."""
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    arch = reader.get_field("general.architecture").contents()
    vocab = len(reader.get_field("tokenizer.ggml.tokens").contents())
    weight_bytes = Counter()
    for t in reader.tensors:
        if len([d for d in t.shape if d > 1]) >= 2:
            weight_bytes[t.tensor_type.name] += int(t.n_bytes)
    return {"architecture": arch, "vocab_size": vocab,
            "context_length": reader.get_field(f"{arch}.context_length").contents(),
            "quant_kind": weight_bytes.most_common(1)[0][0],
            "tensor_bytes": sum(int(t.n_bytes) for t in reader.tensors),
            "tensor_count": len(reader.tensors)}


def test_health_reports_ready_with_the_models_facts(tiny_server):
    from fixtures.external_worker import NOT_RUN, external_worker
    from fixtures.tiny_models import tiny_model_path

    response = httpx.get(tiny_server.url + "/health")
    assert response.status_code == 200
    health = response.json()
    external = external_worker()       # --worker-url: the facts of the file it says it serves
    path = tiny_model_path("llama") if external is None else external.model_file()
    if path is None:
        pytest.skip(f"{NOT_RUN}: its model_path {health.get('model_path')!r} is not a file here for gguf-py to read")
    facts = _gguf_py_facts(path)
    assert health["status"] == "ready"
    assert health["model"] == path.name
    assert health["architecture"] == facts["architecture"]
    assert health["vocab_size"] == facts["vocab_size"]
    assert health["model_context_length"] == facts["context_length"]
    assert 1 < health["context_length"] <= facts["context_length"]
    assert health["quant_kind"] == facts["quant_kind"]
    assert isinstance(health["tokenizer_kind"], str) and health["tokenizer_kind"]
    assert health["device"] == "cpu" or external is not None       # ours runs the tiny model on the cpu
    memory = health["memory_bytes"]
    assert set(memory) == {"weights", "kv_cache", "workspace", "total"}
    assert memory["weights"] > 0
    assert memory["total"] == memory["weights"] + memory["kv_cache"] + memory["workspace"]
    if health["device"] == "cpu":
        assert health["residency"]["status"] == "not_applicable"     # cpu: no device memory to verify
    assert health["uptime_s"] >= 0
    assert health["job"] is None


def test_uptime_grows(tiny_server):
    first = httpx.get(tiny_server.url + "/health").json()["uptime_s"]
    time.sleep(0.05)
    assert httpx.get(tiny_server.url + "/health").json()["uptime_s"] > first


@pytest.mark.parametrize("method, path, status, code", [
    ("GET", "/nope", 404, "NOT_FOUND"),
    ("GET", "/execute", 405, "METHOD_NOT_ALLOWED"),
    ("POST", "/health", 405, "METHOD_NOT_ALLOWED"),
])
def test_unknown_routes_and_methods_get_json_errors(tiny_server, method, path, status, code):
    response = httpx.request(method, tiny_server.url + path)
    assert response.status_code == status
    assert response.json()["code"] == code
