"""FT-005 Request validation: every invalid /execute body gets HTTP 400 naming the field.

Acceptance (docs/http-api.md, spec §1): job_id and prompt required non-empty strings; max_tokens
integer >= 1 within the context; temperature 0-2; seed unsigned 64-bit; top_p (0, 1]; top_k >= 0;
min_p [0, 1); repetition_penalty > 0; stop at most 4 non-empty strings; unknown fields rejected;
non-JSON 400 INVALID_JSON; a body over the limit 413 BODY_TOO_LARGE; a prompt over the context
400 PROMPT_TOO_LONG. The values at each boundary are accepted. Invalid requests start no job.
A body is one RFC 8259 JSON text in UTF-8 (no BOM, no UTF-16, at most 32 levels deep) or it is
INVALID_JSON; a lone surrogate anywhere in a string is INVALID_PARAMS naming the field; an error
quotes a bounded part of the offending value (the answer and its log line stay small).
"""
import json

import httpx
import pytest

from fixtures.server_process import check_stream, execute

pytest_plugins = ["fixtures.server_fixtures"]
pytestmark = pytest.mark.story("FT-005")

VALID = {"job_id": "ft005", "prompt": "Hello", "max_tokens": 1}

INVALID = [  # (change to the valid body, field named in the answer)
    ({"job_id": None}, "job_id"),
    ({"job_id": ""}, "job_id"),
    ({"job_id": 17}, "job_id"),
    ({"job_id": "j" * 257}, "job_id"),
    ({"prompt": None}, "prompt"),
    ({"prompt": ""}, "prompt"),
    ({"prompt": ["Hello"]}, "prompt"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_tokens": -1}, "max_tokens"),
    ({"max_tokens": 1.5}, "max_tokens"),
    ({"max_tokens": "5"}, "max_tokens"),
    ({"max_tokens": True}, "max_tokens"),
    ({"temperature": -0.01}, "temperature"),
    ({"temperature": 2.01}, "temperature"),
    ({"temperature": "hot"}, "temperature"),
    ({"seed": -1}, "seed"),
    ({"seed": 2 ** 64}, "seed"),
    ({"seed": 1.5}, "seed"),
    ({"seed": "42"}, "seed"),
    ({"top_p": 0}, "top_p"),
    ({"top_p": 1.01}, "top_p"),
    ({"top_p": -0.5}, "top_p"),
    ({"top_k": -1}, "top_k"),
    ({"top_k": 2.5}, "top_k"),
    ({"min_p": 1.0}, "min_p"),
    ({"min_p": -0.1}, "min_p"),
    ({"repetition_penalty": 0}, "repetition_penalty"),
    ({"repetition_penalty": -1.0}, "repetition_penalty"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"stop": [""]}, "stop"),
    ({"stop": "END"}, "stop"),
    ({"stop": [1]}, "stop"),
    ({"temprature": 0.5}, "temprature"),       # unknown (misspelt) field: rejected, not ignored
    ({"stream": True}, "stream"),
]


def _missing(field):
    body = dict(VALID)
    del body[field]
    return body


@pytest.mark.parametrize("change, field", INVALID, ids=[f"{f}={c[f]!r}"[:40] for c, f in INVALID])
def test_each_invalid_parameter_is_refused_naming_it(tiny_server, change, field):
    body = {**VALID, **change}
    body = {k: v for k, v in body.items() if v is not None}
    response = httpx.post(tiny_server.url + "/execute", json=body)
    assert response.status_code == 400, response.text
    answer = response.json()
    assert answer["code"] == "INVALID_PARAMS"
    assert answer["field"] == field
    assert answer["message"]


@pytest.mark.parametrize("field", ["job_id", "prompt"])
def test_required_fields(tiny_server, field):
    response = httpx.post(tiny_server.url + "/execute", json=_missing(field))
    assert response.status_code == 400
    assert response.json() == {**response.json(), "code": "INVALID_PARAMS", "field": field}


@pytest.mark.parametrize("raw", [b"{not json", b"", b'{"job_id": "a", "prompt": "b", "temperature": NaN}',
                                 b'{"job_id": "a", "prompt": "b", "max_tokens": Infinity}', b"\xff\xfe{}"])
def test_a_body_that_is_not_json_is_refused(tiny_server, raw):
    response = httpx.post(tiny_server.url + "/execute", content=raw, headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    assert response.json()["code"] == "INVALID_JSON"


@pytest.mark.parametrize("body", [b"[]", b'["job_id", "prompt"]', b'"text"', b"3", b"null"])
def test_a_body_that_is_not_an_object_is_refused(tiny_server, body):
    response = httpx.post(tiny_server.url + "/execute", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    assert response.json()["code"] == "INVALID_PARAMS"


def test_a_body_over_the_limit_is_413(tiny_server):
    big = {**VALID, "prompt": "a" * (1 << 20)}
    response = httpx.post(tiny_server.url + "/execute", json=big)
    assert response.status_code == 413
    assert response.json()["code"] == "BODY_TOO_LARGE"


def test_a_chunked_body_over_the_limit_is_413(tiny_server):
    def chunks():                       # no Content-Length: the limit is enforced while reading
        yield b'{"job_id": "c", "prompt": "'
        for _ in range(20):
            yield b"a" * 65536
        yield b'"}'

    response = httpx.post(tiny_server.url + "/execute", content=chunks())
    assert response.status_code == 413


def test_a_prompt_longer_than_the_context_is_prompt_too_long(tiny_server):
    n_ctx = httpx.get(tiny_server.url + "/health").json()["context_length"]
    prompt = " ".join(["word"] * (n_ctx + 10))        # at least one token per word
    response = httpx.post(tiny_server.url + "/execute", json={**VALID, "prompt": prompt})
    assert response.status_code == 400
    assert response.json()["code"] == "PROMPT_TOO_LONG" and response.json()["field"] == "prompt"


def test_max_tokens_beyond_the_context_is_refused(tiny_server):
    n_ctx = httpx.get(tiny_server.url + "/health").json()["context_length"]
    response = httpx.post(tiny_server.url + "/execute", json={**VALID, "max_tokens": n_ctx})
    assert response.status_code == 400
    assert response.json()["field"] == "max_tokens"


BOUNDARY = [{"temperature": 0}, {"temperature": 2.0}, {"top_p": 1.0}, {"top_p": 1e-6}, {"min_p": 0},
            {"min_p": 0.999}, {"top_k": 0}, {"seed": 0}, {"seed": 2 ** 64 - 1}, {"repetition_penalty": 1e-3},
            {"stop": ["a", "b", "c", "d"]}, {"stop": []}, {"max_tokens": 1}]


@pytest.mark.parametrize("change", BOUNDARY, ids=[repr(c)[:40] for c in BOUNDARY])
def test_boundary_values_are_accepted(tiny_server, change):
    response, events = execute(tiny_server.url, {**VALID, **change})
    assert response.status_code == 200, events
    assert check_stream(events)["terminal"] == "end"


def test_invalid_requests_start_no_job(tiny_server):
    httpx.post(tiny_server.url + "/execute", json={**VALID, "job_id": "never-started", "top_k": -5})
    assert not [r for r in tiny_server.narration()
                if r.get("job_id") == "never-started" and r["event"] in ("job_accepted", "job_started")]


@pytest.mark.parametrize("body, field", [({}, "job_id"), ({"job_id": ""}, "job_id"), ({"job_id": 5}, "job_id"),
                                         ({"job_id": "a", "force": True}, "force")])
def test_cancel_validates_its_body(tiny_server, body, field):
    response = httpx.post(tiny_server.url + "/cancel", json=body)
    assert response.status_code == 400
    assert response.json()["field"] == field


# -- what a hostile client tried (each once answered 200 with a broken stream, or 500) ----------

def _post_raw(url, path, raw: bytes):
    return httpx.post(url + path, content=raw, headers={"Content-Type": "application/json"})


@pytest.mark.parametrize("path, raw, field", [
    ("/execute", b'{"job_id": "x\\udc00", "prompt": "Hi", "max_tokens": 1}', "job_id"),
    ("/execute", b'{"job_id": "x", "prompt": "Hi", "max_tokens": 1, "stop": ["\\ud800"]}', "stop"),
    ("/execute", b'{"job_id": "x", "prompt": "Hi \\udfff", "max_tokens": 1}', "prompt"),
    ("/cancel", b'{"job_id": "x\\udc00"}', "job_id"),
])
def test_a_lone_surrogate_in_any_string_is_refused_naming_the_field(tiny_server, path, raw, field):
    response = _post_raw(tiny_server.url, path, raw)
    assert response.status_code == 400, response.text
    assert response.json()["code"] == "INVALID_PARAMS" and response.json()["field"] == field
    assert "surrogate" in response.json()["message"]
    health = httpx.get(tiny_server.url + "/health")
    assert health.status_code == 200 and health.json()["job"] is None


def test_a_lone_surrogate_in_a_field_name_is_refused_and_the_answer_is_valid_json(tiny_server):
    response = _post_raw(tiny_server.url, "/execute", b'{"job_id": "x", "prompt": "Hi", "\\udc00": 1}')
    assert response.status_code == 400
    response.content.decode("utf-8")                      # the answer itself is valid UTF-8
    assert response.json()["code"] == "INVALID_PARAMS" and response.json()["field"] == "\\udc00"


@pytest.mark.parametrize("path", ["/execute", "/cancel"])
@pytest.mark.parametrize("depth", [40, 1000, 100_000])
def test_deeply_nested_json_is_invalid_json(tiny_server, path, depth):
    raw = b'{"job_id": ' + b"[" * depth + b"]" * depth + b', "prompt": "Hi"}'
    response = _post_raw(tiny_server.url, path, raw)
    assert response.status_code == 400, response.text
    assert response.json()["code"] == "INVALID_JSON" and "nested" in response.json()["message"]


@pytest.mark.parametrize("raw, why", [
    ('{"job_id": "a", "prompt": "b"}'.encode("utf-16"), "UTF-16 with a byte order mark"),
    ('{"job_id": "a", "prompt": "b"}'.encode("utf-16-le"), "UTF-16 without one"),
    (b'\xef\xbb\xbf{"job_id": "a", "prompt": "b"}', "a UTF-8 byte order mark"),
    (b'{"job_id": "a", "prompt": "\xff\xfe"}', "bytes that are not UTF-8 inside a string"),
    (b'{"job_id": "a", "prompt": "\xed\xa0\x80"}', "an encoded surrogate (CESU-8), not UTF-8"),
])
def test_a_body_that_is_not_utf8_json_is_invalid_json(tiny_server, raw, why):
    response = _post_raw(tiny_server.url, "/execute", raw)
    assert response.status_code == 400, why
    assert response.json()["code"] == "INVALID_JSON", (why, response.json())


def test_a_huge_integer_is_refused_without_python_internals(tiny_server):
    raw = b'{"job_id": "a", "prompt": "b", "max_tokens": ' + b"9" * 5000 + b"}"
    response = _post_raw(tiny_server.url, "/execute", raw)
    assert response.status_code == 400
    answer = response.json()
    assert answer["code"] == "INVALID_JSON"
    assert "sys." not in answer["message"] and "set_int_max_str_digits" not in answer["message"]


@pytest.mark.parametrize("change, field", [
    ({"stop": ["s" * 1000] * 830}, "stop"),                      # about 830 KB of stop strings
    ({"max_tokens": "9" * 500_000}, "max_tokens"),
    ({"x" * 500_000: 1}, "x" * 64 + "..."),                       # an unknown field with a huge name
    ({"prompt": [[["deep"] * 1000] * 100]}, "prompt"),
])
def test_an_error_quotes_a_bounded_part_of_the_offending_value(tiny_server, change, field):
    job_id = f"ft005-big-{len(tiny_server.narration())}"
    response = httpx.post(tiny_server.url + "/execute", json={**VALID, "job_id": job_id, **change})
    assert response.status_code == 400
    assert response.json()["field"] == field
    assert len(response.content) < 2048, len(response.content)
    rejected = tiny_server.wait_for(lambda r: r["event"] == "request_rejected" and r.get("field") == field)
    assert len(json.dumps(rejected)) < 2048


def test_validation_and_the_answer_leave_the_worker_healthy(tiny_server):
    response, events = execute(tiny_server.url, {**VALID, "job_id": "ft005-after-hostile"})
    assert response.status_code == 200 and check_stream(events)["terminal"] == "end"
