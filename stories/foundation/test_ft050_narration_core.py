"""FT-050 Narration core logging: structured, one JSON object per line, with the correlation id.

Acceptance: narrate(event, **fields) writes exactly one JSON line with an ISO-8601 UTC `ts`, the
event, the current correlation id (a context variable: null outside a request, carried into a
thread started in a copy of the context) and the fields; lines written by many threads at once
never interleave; a running worker's stderr is nothing but such lines, and it narrates the
lifecycle (startup, validation, memory check, listening, load, ready) and each request.
"""
import contextvars
import io
import json
import threading
from datetime import datetime, timezone

import pytest

from worker import narration
from worker.narration import correlation_scope, narrate

pytest_plugins = ["fixtures.server_fixtures"]
pytestmark = pytest.mark.story("FT-050")


@pytest.fixture
def sink():
    buffer = io.StringIO()
    narration.set_stream(buffer)
    yield buffer
    narration.set_stream(None)


def _lines(buffer):
    return [json.loads(line) for line in buffer.getvalue().splitlines()]


def test_one_json_line_with_ts_event_id_and_fields(sink):
    narrate("model_load_progress", percent=12.5, tensor="blk.0.attn_q.weight", text="naïve ☃\nline")
    (record,) = _lines(sink)
    assert sink.getvalue().count("\n") == 1                 # the newline in a field is escaped
    assert record["event"] == "model_load_progress"
    assert record["percent"] == 12.5 and record["text"] == "naïve ☃\nline"
    assert record["correlation_id"] is None
    ts = datetime.fromisoformat(record["ts"].replace("Z", "+00:00"))
    assert ts.utcoffset() == timezone.utc.utcoffset(None)


def test_the_correlation_id_comes_from_the_context(sink):
    with correlation_scope("req-1"):
        narrate("inside")
        context = contextvars.copy_context()
        thread = threading.Thread(target=context.run, args=(narrate, "in_thread"))
        thread.start()
        thread.join()
        with correlation_scope("req-2"):
            narrate("nested")
        narrate("inside_again")
    narrate("outside")
    ids = {r["event"]: r["correlation_id"] for r in _lines(sink)}
    assert ids == {"inside": "req-1", "in_thread": "req-1", "nested": "req-2", "inside_again": "req-1",
                   "outside": None}


def test_concurrent_lines_never_interleave(sink):
    def writer(n):
        with correlation_scope(f"t{n}"):
            for i in range(200):
                narrate("tick", n=n, i=i, payload="x" * 500)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    records = _lines(sink)                 # raises if any line is not whole JSON
    assert len(records) == 8 * 200
    assert all(r["correlation_id"] == f"t{r['n']}" for r in records)


def test_worker_stderr_is_only_narration_and_covers_the_lifecycle(tiny_server):
    from fixtures.server_process import execute

    execute(tiny_server.url, {"job_id": "ft050", "prompt": "Hi", "max_tokens": 2})
    tiny_server.wait_for(lambda r: r["event"] == "request_finished" and r.get("path") == "/execute")
    lines = [line for line in tiny_server.stderr_lines() if line.strip()]
    records = [json.loads(line) for line in lines]            # every stderr line is JSON
    assert all({"ts", "event", "correlation_id"} <= set(r) for r in records)
    events = [r["event"] for r in records]
    lifecycle = ["startup", "model_validating", "memory_check", "model_validated", "listening",
                 "model_load_started", "model_ready"]
    positions = [events.index(e) for e in lifecycle]
    assert positions == sorted(positions), list(zip(lifecycle, positions))
    assert {"request_received", "job_accepted", "job_started", "job_finished", "request_finished"} <= set(events)


def test_a_vanishing_temperature_keeps_stderr_json_and_samples_greedily(tiny_server):
    from fixtures.server_process import check_stream, execute

    body = {"prompt": "Once upon a time", "max_tokens": 12, "seed": 3}
    _, tiny = execute(tiny_server.url, {**body, "job_id": "ft050-tiny-t", "temperature": 1e-308})
    _, greedy = execute(tiny_server.url, {**body, "job_id": "ft050-greedy", "temperature": 0})
    assert check_stream(tiny)["ids"] == check_stream(greedy)["ids"]
    for line in tiny_server.stderr_lines():
        if line.strip():
            assert isinstance(json.loads(line), dict), line     # no raw NumPy warning among the lines
