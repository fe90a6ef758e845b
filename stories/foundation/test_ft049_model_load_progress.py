"""FT-049 Model load progress events: loading is narrated with percent, bytes and tensors.

Acceptance: start-up narrates `model_load_started`, then `model_load_progress` events whose percent
and bytes never go backwards and end at 100 % with every byte and tensor of the file (counted here
by gguf-py, not by our reader), then `model_ready`; /health's `load` block shows the same totals.
"""
import httpx
import pytest

pytest_plugins = ["fixtures.server_fixtures"]
pytestmark = pytest.mark.story("FT-049")


def _file_totals(path):
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    return sum(int(t.n_bytes) for t in reader.tensors), len(reader.tensors)


@pytest.mark.parametrize("which", ["tiny_server", "smollm2_server"])
def test_load_is_narrated_with_progress(request, which):
    server = request.getfixturevalue(which)
    path = httpx.get(server.url + "/health").json()["model_path"]
    total_bytes, total_tensors = _file_totals(path)
    log = server.narration()
    events = [r["event"] for r in log]
    assert events.index("model_load_started") < events.index("model_ready")
    progress = [r for r in log if r["event"] == "model_load_progress"]
    assert progress, "no model_load_progress events"
    assert events.index("model_load_started") < events.index("model_load_progress")
    assert events.index("model_ready") > max(i for i, e in enumerate(events) if e == "model_load_progress")
    for before, after in zip(progress, progress[1:]):
        assert after["percent"] >= before["percent"]
        assert after["done_bytes"] >= before["done_bytes"]
        assert after["tensors_loaded"] >= before["tensors_loaded"]
    last = progress[-1]
    assert last["percent"] == 100.0
    assert last["total_bytes"] == last["done_bytes"] == total_bytes
    assert last["tensors_total"] == total_tensors
    assert all(0.0 <= p["percent"] <= 100.0 and p["done_bytes"] <= p["total_bytes"] for p in progress)
    load = httpx.get(server.url + "/health").json()["load"]
    assert load["percent"] == 100.0
    assert load["total_bytes"] == total_bytes
    assert load["tensors_loaded"] == load["tensors_total"] == total_tensors
