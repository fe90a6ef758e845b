"""FT-044 Cancellation integration (HTTP side): /cancel and client disconnects stop the job.

Acceptance: POST /cancel {job_id} during a stream answers `cancelling` with the tokens produced so
far; the stream then ends with `end` stop_reason `cancelled` at most one token later; cancelling
again, cancelling a finished job and cancelling an unknown job all answer 200 (idempotent); a
client that disconnects mid-stream cancels its job (narrated, slot freed), and the worker takes
the next job. Runs on the real SmolLM2, whose tokens take long enough to cancel between.
A long prompt's prefill is cancellable too (by /cancel or a disconnect, before its first token).
SIGTERM and SIGINT end the running job (its stream still ends with `end`), narrate `shutdown`
and exit 0.
"""
import signal
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


# A prompt of several prefill chunks (about 450 SmolLM2 tokens): its prefill takes seconds on a CPU.
LONG_PROMPT = "The history of the village, told by its oldest inhabitant, goes like this. " * 30


def slow_prefill_worker(server):
    """Our worker on the cpu, where a long prefill takes seconds: long enough for a cancel to arrive
    in the middle of it. (On a GPU the prefill is over in milliseconds; the engine's chunk-by-chunk
    check is tested in test_ft044_cancellation_engine.py on every device.)"""
    from fixtures.server_process import WorkerProcess

    if not isinstance(server, WorkerProcess) or httpx.get(server.url + "/health").json()["device"] != "cpu":
        pytest.skip("needs our worker on the cpu, where a long prompt's prefill takes seconds")
    return server


def test_cancel_during_prefill_ends_the_job_before_its_first_token(smollm2_server):
    url = slow_prefill_worker(smollm2_server).url
    events, answers = [], []
    began = time.monotonic()
    with httpx.Client(timeout=300) as client:
        body = {"job_id": "ft044-prefill", "prompt": LONG_PROMPT, "max_tokens": 50, "temperature": 0}
        with client.stream("POST", url + "/execute", json=body) as response:
            for name, data in sse_events(response):
                events.append((name, data))
                if name == "started" and not answers:
                    answers.append(httpx.post(url + "/cancel", json={"job_id": "ft044-prefill"}))
    summary = check_stream(events)
    assert summary["started"]["prompt_tokens"] > 4 * 64, summary["started"]
    assert answers[0].json()["status"] == "cancelling"
    assert summary["end"]["stop_reason"] == "cancelled" and summary["end"]["tokens_out"] == 0
    print(f"cancel during prefill of {summary['started']['prompt_tokens']} tokens: stream ended after "
          f"{time.monotonic() - began:.2f} s, prefill_time_ms {summary['end']['prefill_time_ms']}")


def test_a_disconnect_during_prefill_frees_the_worker(smollm2_server):
    url = slow_prefill_worker(smollm2_server).url
    with httpx.Client(timeout=300) as client:
        body = {"job_id": "ft044-prefill-gone", "prompt": LONG_PROMPT, "max_tokens": 50, "temperature": 0}
        with client.stream("POST", url + "/execute", json=body) as response:
            for name, _ in sse_events(response):
                if name == "started":
                    break                               # gone before the first token
    gone = time.monotonic()
    finished = smollm2_server.wait_for(
        lambda r: r["event"] == "job_finished" and r.get("job_id") == "ft044-prefill-gone", timeout=120)
    assert finished["stop_reason"] == "cancelled" and finished["tokens_out"] == 0
    print(f"worker free {time.monotonic() - gone:.2f} s after the disconnect during prefill")
    response, events = execute(url, {"job_id": "ft044-after-prefill", "prompt": "Hi", "max_tokens": 1})
    assert response.status_code == 200 and check_stream(events)["terminal"] == "end"


# -- shutdown: SIGTERM / SIGINT cancel the running job, say `shutdown`, exit 0 -------------------

@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_during_a_job_ends_it_and_shuts_down_cleanly(sig):
    from fixtures.server_process import start_worker
    from fixtures.tiny_models import tiny_model_path

    worker = start_worker(tiny_model_path("llama"))
    try:
        url = worker.wait_ready(120)
        events = []
        with httpx.Client(timeout=120) as client:
            body = {"job_id": f"ft044-{sig.name}", "prompt": "Once upon a time", "max_tokens": 250, "temperature": 0}
            with client.stream("POST", url + "/execute", json=body) as response:
                for name, data in sse_events(response):
                    events.append((name, data))
                    if name == "token" and data["i"] == 0:
                        worker.proc.send_signal(sig)
        summary = check_stream(events)                  # the stream still ends with its terminal event
        assert summary["terminal"] == "end"
        assert summary["end"]["stop_reason"] in ("cancelled", "max_tokens", "eos")
        assert worker.wait_exit(60) == 0
    finally:
        worker.stop()
    shutdown = [r for r in worker.narration() if r["event"] == "shutdown"]
    assert len(shutdown) == 1 and shutdown[0]["exit_status"] == 0 and shutdown[0]["signal"] == sig.name
    finished = [r for r in worker.narration() if r["event"] == "job_finished"]
    assert finished and finished[-1]["stop_reason"] == summary["end"]["stop_reason"]
    assert "Traceback" not in worker.stderr_text()


def test_a_signal_while_idle_exits_0():
    from fixtures.server_process import start_worker
    from fixtures.tiny_models import tiny_model_path

    worker = start_worker(tiny_model_path("llama"))
    try:
        worker.wait_ready(120)
        worker.proc.send_signal(signal.SIGTERM)
        assert worker.wait_exit(60) == 0
    finally:
        worker.stop()
    assert [r["exit_status"] for r in worker.narration() if r["event"] == "shutdown"] == [0]
