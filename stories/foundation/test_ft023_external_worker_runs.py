"""FT-023 integration test framework, for a worker we did not start (`--worker-url URL`).

Acceptance, on a miniature project run with pytester against a stand-in worker (a few lines of
http.server answering /health):
- a protocol check (tiny_server) talks to the worker at URL, never to a process of ours;
- a check that starts our worker on a file runs against the worker at URL when it serves that
  file, and is NOT RUN, naming both files, when it serves another;
- a check of our own code in-process, or of our own process (narration), is NOT RUN with the
  reason, so the gate is INCOMPLETE, never PASS, on checks the external worker did not face;
- what a check needs to know about the worker it reads from /health (its context), never from
  how we would have launched ours.
"""
import json
import textwrap
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from stories.foundation.test_ft023_integration_test_framework import nested_pythonpath

pytest_plugins = ["pytester"]
pytestmark = pytest.mark.story("FT-023")

HEALTH = {"status": "ready", "model": "served.gguf", "model_path": "/elsewhere/served.gguf", "context_length": 777}


@pytest.fixture
def stand_in_worker():
    class Health(BaseHTTPRequestHandler):
        def do_GET(self):
            body = json.dumps(HEALTH).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture
def project(pytester, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", nested_pythonpath())
    gates = pytester.mkdir("gates")
    (gates / "gate1").mkdir()
    stories = ["XX-001", "XX-002", "XX-003", "XX-004", "XX-005"]
    (gates / "gate1" / "manifest.json").write_text(json.dumps(
        {"gate": 1, "title": "Mini", "criteria": "", "stories": stories, "checks": []}))
    (gates / "stories.json").write_text(json.dumps(
        [{"id": s, "title": s, "team": "Foundation", "sprint": "s1", "gate": 1, "testable": True} for s in stories]))
    (pytester.mkdir("stories") / "test_stories.py").write_text(textwrap.dedent("""
        import httpx
        import pytest
        from fixtures.server_process import worker_server

        @pytest.mark.story("XX-001")
        def test_protocol(tiny_server):
            assert httpx.get(tiny_server.url + "/health").json()["model"] == "served.gguf"
            assert tiny_server.ctx == 777

        @pytest.mark.story("XX-002")
        @pytest.mark.worker_http
        def test_on_the_served_file():
            with worker_server("/anywhere/served.gguf") as server:
                assert server.ctx == 777

        @pytest.mark.story("XX-003")
        @pytest.mark.worker_http
        def test_on_another_file():
            with worker_server("/anywhere/other.gguf"):
                pass

        @pytest.mark.story("XX-004")
        def test_in_process():
            assert True

        @pytest.mark.story("XX-005")
        def test_narration(tiny_server):
            tiny_server.narration()
    """))
    pytester.makeconftest('pytest_plugins = ["gates.harness.plugin", "fixtures.server_fixtures"]')
    return pytester


def test_an_external_worker_faces_only_the_checks_it_can_answer(project, stand_in_worker):
    result = project.runpytest_subprocess("gates/gate1", "-p", "no:cacheprovider", "-p", "no:allure_pytest",
                                          "--device", "cpu", "--worker-url", stand_in_worker, "-rs")
    outcomes = result.parseoutcomes()
    assert outcomes.get("passed") == 2 and outcomes.get("skipped") == 3, result.stdout.str()
    out = result.stdout.str()
    assert "NOT RUN for an external worker (--worker-url)" in out
    assert "serves served.gguf" in out and "other.gguf" in out           # both files named
    assert "in-process" in out and "narration" in out
    board = json.loads((project.path / "reports" / "gate-board.json").read_text())
    assert board["gates"][0]["verdict"] == "INCOMPLETE"
