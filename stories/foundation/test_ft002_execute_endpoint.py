"""FT-002 Execute endpoint: POST /execute accepts a job and answers with an event stream.

Acceptance: a valid job gets 200 `text/event-stream` starting with `started` {job_id, model,
started_at, seed, prompt_tokens}; the seed is echoed, or chosen by the worker (u64) and reported;
one job runs at a time: a second job while one runs gets 503 WORKER_BUSY (with Retry-After) and
does not disturb the running one (and carries the
correlation id too); once a job has ended the next one is accepted at once.
"""
import contextlib
import threading
import time
from datetime import datetime, timezone

import httpx
import pytest

from fixtures.server_process import check_stream, execute, sse_events

pytest_plugins = ["fixtures.server_fixtures"]
pytestmark = pytest.mark.story("FT-002")

# A prompt SmolLM2 continues at length (greedy), so that the job is still running when we look.
LONG_JOB = {"prompt": "Once upon a time, in a small village,", "max_tokens": 200, "temperature": 0, "seed": 5}


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


@pytest.mark.story("FT-002", "FT-004")
def test_a_second_job_while_one_runs_is_refused_busy(smollm2_server):
    url = smollm2_server.url
    first_events: list = []
    token_seen = threading.Event()

    def first_job():
        with httpx.Client(timeout=300) as client:
            with client.stream("POST", url + "/execute", json={**LONG_JOB, "job_id": "ft002-long"}) as response:
                for event in sse_events(response):
                    first_events.append(event)
                    if event[0] == "token":
                        token_seen.set()

    runner = threading.Thread(target=first_job)
    runner.start()
    tokens_at_refusal = 0
    try:
        assert token_seen.wait(120), f"first job produced no token: {first_events}"
        busy = httpx.post(url + "/execute", json={"job_id": "ft002-second", "prompt": "Hi", "max_tokens": 2},
                          headers={"X-Correlation-Id": "busy-id"})
        assert busy.status_code == 503
        assert busy.json()["code"] == "WORKER_BUSY"
        assert "ft002-long" in busy.json()["message"]
        assert int(busy.headers["retry-after"]) >= 1
        assert busy.headers["x-correlation-id"] == "busy-id"
        health = httpx.get(url + "/health").json()
        assert health["status"] == "ready" and health["job"]["job_id"] == "ft002-long"
        # The running job was not disturbed: it keeps streaming after the refusal.
        tokens_at_refusal = sum(1 for name, _ in first_events if name == "token")
        deadline = time.monotonic() + 120
        while sum(1 for name, _ in first_events if name == "token") <= tokens_at_refusal + 1:
            assert runner.is_alive() and time.monotonic() < deadline, first_events[-3:]
            time.sleep(0.05)
    finally:
        httpx.post(url + "/cancel", json={"job_id": "ft002-long"})      # no need to wait 200 tokens
        runner.join(300)
    summary = check_stream(first_events)
    assert summary["terminal"] == "end"
    assert summary["end"]["tokens_out"] >= tokens_at_refusal + 2
    # The slot is free as soon as `end` was read: the next job is accepted at once.
    response, events = execute(url, {"job_id": "ft002-after", "prompt": "Hi", "max_tokens": 1})
    assert response.status_code == 200 and check_stream(events)["terminal"] == "end"


@contextlib.contextmanager
def long_job_running(url: str, job_id: str):
    """A long greedy job streaming in a thread (its first token seen); cancelled on exit."""
    token_seen = threading.Event()

    def job():
        with httpx.Client(timeout=300) as client:
            with client.stream("POST", url + "/execute", json={**LONG_JOB, "job_id": job_id}) as response:
                for name, _ in sse_events(response):
                    if name == "token":
                        token_seen.set()

    runner = threading.Thread(target=job)
    runner.start()
    try:
        assert token_seen.wait(120), "the long job produced no token"
        yield
    finally:
        httpx.post(url + "/cancel", json={"job_id": job_id})
        runner.join(300)


def test_while_a_job_runs_an_invalid_request_gets_400_not_busy(smollm2_server):
    """Validation comes before the busy check, the engine's checks (which tokenize the prompt)
    included: a bad request is told what is wrong even while another job runs. An answer counts
    only if the job was running before it was asked and still after it came (a fast device may
    finish the job first; then a new job is started for the rest)."""
    url = smollm2_server.url
    n_ctx = httpx.get(url + "/health").json()["context_length"]
    cases = [({"prompt": ""}, "INVALID_PARAMS", "prompt"),
             ({"prompt": "Hi", "max_tokens": 5000}, "INVALID_PARAMS", "max_tokens"),
             ({"prompt": "Hi", "max_tokens": n_ctx}, "INVALID_PARAMS", "max_tokens"),
             ({"prompt": " word" * (n_ctx + 10)}, "PROMPT_TOO_LONG", "prompt"),
             ({"prompt": "Hi", "temperature": 9}, "INVALID_PARAMS", "temperature"),
             ({"prompt": "Hi", "max_tokens": 2}, "WORKER_BUSY", None)]        # the one valid request
    answers: dict[int, httpx.Response] = {}
    for attempt in range(5):
        job_id = f"ft002-runs-{attempt}"
        with long_job_running(url, job_id):
            for n, (body, _, _) in enumerate(cases):
                if n in answers:
                    continue
                response = httpx.post(url + "/execute", json={"job_id": "ft002-other", **body})
                if (httpx.get(url + "/health").json()["job"] or {}).get("job_id") != job_id:
                    break                           # the job ended meanwhile: this answer does not count
                answers[n] = response
        if len(answers) == len(cases):
            break
    assert len(answers) == len(cases), "the long job kept ending before the requests were answered"
    for n, (body, code, field) in enumerate(cases):
        status = 503 if code == "WORKER_BUSY" else 400
        assert answers[n].status_code == status, (body, answers[n].text)
        assert (answers[n].json()["code"], answers[n].json()["field"]) == (code, field)
