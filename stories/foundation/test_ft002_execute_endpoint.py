"""FT-002 Execute endpoint: POST /execute accepts a job and answers with an event stream.

Acceptance: a valid job gets 200 `text/event-stream` starting with `started` {job_id, model,
started_at, seed, prompt_tokens}; the seed is echoed, or chosen by the worker (u64) and reported;
one job runs at a time: a second job while one runs gets 503 WORKER_BUSY (with Retry-After) and
does not disturb the running one; once a job has ended the next one is accepted at once.
"""
import threading
from datetime import datetime, timezone

import httpx
import pytest

from fixtures.server_process import check_stream, execute, sse_events

pytest_plugins = ["fixtures.server_fixtures"]
pytestmark = pytest.mark.story("FT-002")


def test_a_job_streams_started_first_with_its_facts(tiny_server):
    response, events = execute(tiny_server.url, {"job_id": "ft002-a", "prompt": "Hello there",
                                                 "max_tokens": 4, "temperature": 0, "seed": 1234})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    summary = check_stream(events)
    started = summary["started"]
    assert set(started) >= {"job_id", "model", "started_at", "seed", "prompt_tokens"}
    assert started["job_id"] == "ft002-a"
    assert started["model"] == httpx.get(tiny_server.url + "/health").json()["model"]
    assert started["seed"] == 1234
    assert isinstance(started["prompt_tokens"], int) and started["prompt_tokens"] >= 2
    when = datetime.fromisoformat(started["started_at"].replace("Z", "+00:00"))
    assert when.tzinfo is not None and when.utcoffset() == timezone.utc.utcoffset(None)


def test_without_a_seed_the_worker_chooses_one_and_reports_it(tiny_server):
    seeds = []
    for n in range(2):
        _, events = execute(tiny_server.url, {"job_id": f"ft002-seed-{n}", "prompt": "Hi", "max_tokens": 1})
        seed = check_stream(events)["started"]["seed"]
        assert isinstance(seed, int) and 0 <= seed < 2 ** 64
        seeds.append(seed)
    assert seeds[0] != seeds[1], "two jobs without a seed got the same one"


def test_a_second_job_while_one_runs_is_refused_busy(smollm2_server):
    url = smollm2_server.url
    first_events: list = []
    streaming = threading.Event()

    def first_job():
        with httpx.Client(timeout=300) as client:
            with client.stream("POST", url + "/execute", json={
                    "job_id": "ft002-long", "prompt": "Write a long story about a cat.",
                    "max_tokens": 40, "temperature": 0, "seed": 1}) as response:
                for event in sse_events(response):
                    first_events.append(event)
                    if event[0] == "token":
                        streaming.set()

    runner = threading.Thread(target=first_job)
    runner.start()
    try:
        assert streaming.wait(120), "first job never produced a token"
        busy = httpx.post(url + "/execute", json={"job_id": "ft002-second", "prompt": "Hi", "max_tokens": 2})
        assert busy.status_code == 503
        assert busy.json()["code"] == "WORKER_BUSY"
        assert "ft002-long" in busy.json()["message"]
        assert int(busy.headers["retry-after"]) >= 1
        health = httpx.get(url + "/health").json()
        assert health["status"] == "ready" and health["job"]["job_id"] == "ft002-long"
    finally:
        runner.join(300)
    summary = check_stream(first_events)          # the running job was not disturbed
    assert summary["terminal"] == "end" and summary["end"]["stop_reason"] in ("max_tokens", "eos")
    # The slot is free as soon as `end` was read: the next job is accepted at once.
    response, events = execute(url, {"job_id": "ft002-after", "prompt": "Hi", "max_tokens": 1})
    assert response.status_code == 200 and check_stream(events)["terminal"] == "end"


def test_a_busy_refusal_still_validates_first(smollm2_server):
    """Validation comes before the busy check: a bad request is told what is wrong."""
    response = httpx.post(smollm2_server.url + "/execute", json={"job_id": "x", "prompt": ""})
    assert response.status_code == 400 and response.json()["field"] == "prompt"
