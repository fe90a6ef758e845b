"""Gate 3 — adapters: architecture detection and the adapter factory over every family, Phi-3,
and GPT-OSS (MoE with MXFP4 experts) generating."""
import subprocess
import sys

import pytest

from fixtures.paths import REPO_ROOT, user_model
from fixtures.server_process import execute, worker_server

ARCH_ADAPTER = {"llama": "LlamaModel", "qwen2": "LlamaModel", "phi3": "LlamaModel", "gpt2": "GPT2Model"}


@pytest.mark.gate_check("G3-ADAPTER-FACTORY")
@pytest.mark.parametrize("arch", sorted(ARCH_ADAPTER))
def test_each_architecture_is_detected_and_served_by_its_adapter(arch, record_model):
    from fixtures.tiny_models import tiny_model_path
    from worker.gguf import GGUFModelFile
    from worker.models import load_model

    path = tiny_model_path(arch)
    record_model(path)
    gguf_file = GGUFModelFile.open(path)
    assert gguf_file.config.architecture == arch
    model = load_model(gguf_file, "cpu")
    assert type(model).__name__ == ARCH_ADAPTER[arch]
    logits = model.backend.to_host(model.forward([1, 2, 3], model.new_cache(8), 0, logits="all"))
    assert logits.shape == (3, gguf_file.config.vocab_size)


@pytest.mark.gate_check("G3-ADAPTER-FACTORY")
def test_gpt_oss_is_detected_and_served_by_its_adapter(record_model):
    from fixtures.tiny_gpt_oss import tiny_gpt_oss_path
    from worker.models import load_model

    path = tiny_gpt_oss_path()
    record_model(path)
    model = load_model(path, "cpu")
    assert model.config.architecture == "gpt-oss" and model.config.n_experts > 0
    assert "gpt_oss" in type(model).__module__


@pytest.mark.gate_check("G3-ADAPTER-FACTORY")
def test_an_unknown_architecture_is_refused_with_a_clear_error(tmp_path):
    import gguf

    path = tmp_path / "mamba.gguf"
    writer = gguf.GGUFWriter(str(path), "mamba")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", __import__("numpy").zeros((4, 8), dtype="float32"))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    result = subprocess.run([sys.executable, "-m", "worker", "inspect", str(path), "--json"], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert "mamba" in result.stdout + result.stderr


@pytest.mark.worker_http
@pytest.mark.slow
@pytest.mark.needs_model("phi3")
@pytest.mark.gate_check("G3-PHI3-REAL")
def test_real_phi3_generates_greedy_text(device, record_model):
    path = user_model("M0_PHI3_GGUF")
    record_model(path)
    with worker_server(path, device=device) as server:
        response, events = execute(server.url, {"job_id": "phi3", "prompt": "The capital of France is",
                                                "max_tokens": 12, "temperature": 0})
    text = "".join(d["t"] for n, d in events if n == "token")
    assert events[-1][0] == "end", events[-1]
    assert "Paris" in text, text


@pytest.mark.worker_http
@pytest.mark.gate_check("G3-GPT-OSS-TINY")
def test_gpt_oss_generates_over_http(record_model):
    from fixtures.tiny_gpt_oss import tiny_gpt_oss_path

    path = tiny_gpt_oss_path()
    record_model(path)
    with worker_server(path, device="cpu") as server:
        response, events = execute(server.url, {"job_id": "oss", "prompt": "Hello there", "max_tokens": 6,
                                                "temperature": 0})
        health = __import__("httpx").get(server.url + "/health").json()
    assert health["architecture"] == "gpt-oss"
    assert events[-1][0] == "end" and events[-1][1]["tokens_out"] == 6


@pytest.mark.worker_http
@pytest.mark.slow
@pytest.mark.needs_model("gpt-oss-20b")
@pytest.mark.gate_check("G3-GPT-OSS-REAL")
def test_real_gpt_oss_20b_loads_and_generates(device, record_model):
    path = user_model("M0_GPT_OSS_GGUF")
    record_model(path)
    with worker_server(path, device=device, ready_timeout=1800) as server:
        response, events = execute(server.url, {"job_id": "oss20b", "prompt": "The capital of France is",
                                                "max_tokens": 12, "temperature": 0})
    assert events[-1][0] == "end", events[-1]
