"""FT-044 Cancellation integration (HTTP side): /cancel and client disconnects stop the job.

Acceptance: POST /cancel {job_id} during a stream answers `cancelling` with the tokens produced so
far; the stream then ends with `end` stop_reason `cancelled` at most one token later; cancelling
again, cancelling a finished job and cancelling an unknown job all answer 200 (idempotent); a
client that disconnects mid-stream cancels its job (narrated, slot freed), and the worker takes
the next job. Runs on the real SmolLM2, whose tokens take long enough to cancel between.
"""
import threading
import time

import httpx
import pytest

from fixtures.server_process import check_stream, execute, sse_events

pytest_plugins = ["fixtures.server_fixtures"]
pytestmark = pytest.mark.story("FT-044")

LONG_JOB = {"prompt": "Once upon a time, in a small village,", "max_tokens": 200, "temperature": 0, "seed": 5}


def test_cancel_mid_stream_stops_within_one_token(smollm2_server):
    url = smollm2_server.url
    events, answers = [], []
    with httpx.Client(timeout=300) as client:
        with client.stream("POST", url + "/execute", json={**LONG_JOB, "job_id": "ft044-cancel"}) as response:
            for name, data in sse_events(response):
                events.append((name, data))
                if name == "token" and data["i"] == 2 and not answers:
                    answers.append(httpx.post(url + "/cancel", json={"job_id": "ft044-cancel"}))
    summary = check_stream(events)
    first = answers[0]
    assert first.status_code == 200
    assert first.json()["status"] == "cancelling"
    at_cancel = first.json()["tokens_out"]
    assert summary["end"]["stop_reason"] == "cancelled"
    assert at_cancel <= summary["end"]["tokens_out"] <= at_cancel + 1
    assert summary["end"]["tokens_out"] < LONG_JOB["max_tokens"]


def test_cancel_is_idempotent(smollm2_server):
    url = smollm2_server.url
    again = httpx.post(url + "/cancel", json={"job_id": "ft044-cancel"})       # the job cancelled above
    assert again.status_code == 200
    assert again.json()["status"] in ("finished", "unknown")
    if again.json()["status"] == "finished":
        assert again.json()["outcome"] == "cancelled"
    unknown = httpx.post(url + "/cancel", json={"job_id": "ft044-never-ran"})
    assert unknown.status_code == 200 and unknown.json()["status"] == "unknown"
    # Cancelling a running job twice: both answers 200, one job end.
    events, answers = [], []
    with httpx.Client(timeout=300) as client:
        with client.stream("POST", url + "/execute", json={**LONG_JOB, "job_id": "ft044-twice"}) as response:
            for name, data in sse_events(response):
                events.append((name, data))
                if name == "token" and not answers:
                    answers += [httpx.post(url + "/cancel", json={"job_id": "ft044-twice"}) for _ in range(2)]
    assert [a.status_code for a in answers] == [200, 200]
    assert check_stream(events)["end"]["stop_reason"] == "cancelled"


def test_a_finished_job_cannot_be_cancelled_but_the_call_succeeds(smollm2_server):
    _, events = execute(smollm2_server.url, {"job_id": "ft044-done", "prompt": "Hi", "max_tokens": 2})
    outcome = check_stream(events)["end"]["stop_reason"]
    answer = httpx.post(smollm2_server.url + "/cancel", json={"job_id": "ft044-done"})
    assert answer.status_code == 200
    assert answer.json() == {"job_id": "ft044-done", "status": "finished", "outcome": outcome}


def test_a_client_disconnect_cancels_the_job(smollm2_server):
    url = smollm2_server.url
    seen = 0
    with httpx.Client(timeout=300) as client:
        with client.stream("POST", url + "/execute", json={**LONG_JOB, "job_id": "ft044-gone"}) as response:
            for name, _ in sse_events(response):
                if name == "token":
                    seen += 1
                    if seen == 2:
                        break                   # leaving the block closes the connection
    finished = smollm2_server.wait_for(
        lambda r: r["event"] == "job_finished" and r.get("job_id") == "ft044-gone", timeout=120)
    assert finished["stop_reason"] == "cancelled"
    assert finished["tokens_out"] < LONG_JOB["max_tokens"]
    assert any(r["event"] == "client_disconnected" and r.get("job_id") == "ft044-gone"
               for r in smollm2_server.narration())
    health = httpx.get(url + "/health").json()
    assert health["job"] is None and health["status"] == "ready"
    response, events = execute(url, {"job_id": "ft044-next", "prompt": "Hi", "max_tokens": 1})
    assert response.status_code == 200 and check_stream(events)["terminal"] == "end"
