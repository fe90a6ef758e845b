"""FT-004 Correlation id middleware: every response carries X-Correlation-Id.

Acceptance: a valid id sent by the client is echoed on every endpoint and every kind of answer
(stream, JSON, 400, 404, 413; the 503 busy answer is checked in FT-002's busy test); without one
the worker generates a fresh id per request; an unusable id (too long, spaces, control
characters) is replaced; and every narration line written while handling a request, including the
inference thread's, carries that request's id. A request so malformed that the HTTP layer refuses
it before the app (bad request line, header, Content-Length or chunk encoding) still gets a JSON
400 (INVALID_HTTP_REQUEST) with an X-Correlation-Id, narrated like any other refusal.
"""
import json

import httpx
import pytest

from fixtures.server_process import check_stream, execute

pytest_plugins = ["fixtures.server_fixtures"]
pytestmark = pytest.mark.story("FT-004")


@pytest.mark.parametrize("method, path, body, status", [
    ("GET", "/health", None, 200),
    ("POST", "/cancel", {"job_id": "nobody"}, 200),
    ("POST", "/execute", {"job_id": "x"}, 400),
    ("POST", "/execute", b"{not json", 400),
    ("GET", "/missing", None, 404),
    ("POST", "/execute", b"x" * (2 << 20), 413),
])
def test_a_sent_id_is_echoed_on_every_answer(tiny_server, method, path, body, status):
    kwargs = {"json": body} if isinstance(body, dict) else {"content": body} if body else {}
    response = httpx.request(method, tiny_server.url + path, headers={"X-Correlation-Id": "client-id-42"}, **kwargs)
    assert response.status_code == status
    assert response.headers["x-correlation-id"] == "client-id-42"


def test_a_sent_id_is_echoed_on_the_event_stream(tiny_server):
    response, events = execute(tiny_server.url, {"job_id": "ft004-s", "prompt": "Hi", "max_tokens": 2},
                               headers={"X-Correlation-Id": "stream-id-1"})
    assert response.status_code == 200
    assert response.headers["x-correlation-id"] == "stream-id-1"
    check_stream(events)


def test_without_an_id_each_request_gets_a_new_one(tiny_server):
    ids = [httpx.get(tiny_server.url + "/health").headers["x-correlation-id"] for _ in range(3)]
    assert all(ids) and len(set(ids)) == 3


@pytest.mark.parametrize("bad", ["has space", "x" * 129, "tab\there", ""])
def test_an_unusable_id_is_replaced(tiny_server, bad):
    response = httpx.get(tiny_server.url + "/health", headers={"X-Correlation-Id": bad})
    assert response.status_code == 200
    assert response.headers["x-correlation-id"] not in ("", bad)


def test_every_narration_line_of_a_request_carries_its_id(tiny_server):
    cid = "narration-check-7"
    _, events = execute(tiny_server.url, {"job_id": "ft004-narr", "prompt": "Hello", "max_tokens": 3},
                        headers={"X-Correlation-Id": cid})
    check_stream(events)
    tiny_server.wait_for(lambda r: r.get("event") == "request_finished" and r.get("correlation_id") == cid)
    mine = [r for r in tiny_server.narration() if r.get("correlation_id") == cid]
    assert [r["event"] for r in mine][0] == "request_received"
    assert {"request_received", "job_accepted", "job_started", "job_finished", "request_finished"} <= {
        r["event"] for r in mine}
    # Every line about this job (from the event loop and from the inference thread) has the id.
    about_job = [r for r in tiny_server.narration() if r.get("job_id") == "ft004-narr"]
    assert about_job and all(r["correlation_id"] == cid for r in about_job)


# -- requests the HTTP layer itself refuses (before the app sees them) -----------------------------

MALFORMED = {
    "request line": b"GARBAGE\r\n\r\n",
    "header without a colon": b"GET /health HTTP/1.1\r\nHost: x\r\nNoColonHere\r\n\r\n",
    "Content-Length not a number": b"POST /execute HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n{}",
    "two Content-Lengths": b"POST /execute HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
    "broken chunk size": (b"POST /execute HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                          b"Content-Type: application/json\r\n\r\nZZ\r\n{}\r\n0\r\n\r\n"),
}


def _raw_exchange(url: str, request: bytes) -> tuple[int, dict, bytes]:
    import socket
    from urllib.parse import urlsplit

    where = urlsplit(url)
    with socket.create_connection((where.hostname, where.port), timeout=10) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


@pytest.mark.parametrize("what", list(MALFORMED))
def test_a_malformed_http_request_gets_a_json_400_with_an_id(tiny_server, what):
    status, headers, body = _raw_exchange(tiny_server.url, MALFORMED[what])
    assert status == 400, (status, body)
    assert headers["content-type"].startswith("application/json")
    assert headers.get("x-correlation-id")
    answer = json.loads(body)
    assert answer["code"] == "INVALID_HTTP_REQUEST" and answer["message"]
    rejected = tiny_server.wait_for(lambda r: r["event"] == "request_rejected"
                                    and r.get("correlation_id") == headers["x-correlation-id"])
    assert rejected["code"] == "INVALID_HTTP_REQUEST"
    assert httpx.get(tiny_server.url + "/health").status_code == 200
