"""GT-025 GPT weight loading: every tensor is loaded once, with progress, in its stored format.

Acceptance: the progress callback reports monotonically increasing bytes, names every tensor of
the file exactly once and ends at the file's total tensor bytes (as gguf-py counts them); the
backend's memory report counts the stored (quantized) bytes, not float32 copies.
"""
import pytest

from fixtures.tiny_models import gguf_py_reader, tiny_model_path
from worker.backend.numpy import NumpyBackend
from worker.gguf import GGUFModelFile
from worker.models import load_model


@pytest.mark.story("GT-025")
@pytest.mark.parametrize("qtype", ["F32", "Q4_0", "Q4_K"])
def test_loading_reports_progress_over_every_tensor(qtype):
    path = tiny_model_path("gpt2", qtype)
    reader = gguf_py_reader("gpt2", qtype)
    total = sum(int(t.n_bytes) for t in reader.tensors)
    events = []
    backend = NumpyBackend()
    load_model(GGUFModelFile.open(path), backend, progress=lambda done, tot, name: events.append((done, tot, name)))
    assert sorted(name for _, _, name in events) == sorted(t.name for t in reader.tensors)
    done = [d for d, _, _ in events]
    assert done == sorted(done) and len(set(done)) == len(done)
    assert events[-1][0] == total and all(tot == total for _, tot, _ in events)
    assert backend.memory_report()["weights"] == total
