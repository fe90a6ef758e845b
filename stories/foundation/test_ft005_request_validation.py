"""FT-005 Request validation: every invalid /execute body gets HTTP 400 naming the field.

Acceptance (docs/http-api.md, spec §1): job_id and prompt required non-empty strings; max_tokens
integer >= 1 within the context; temperature 0-2; seed unsigned 64-bit; top_p (0, 1]; top_k >= 0;
min_p [0, 1); repetition_penalty > 0; stop at most 4 non-empty strings; unknown fields rejected;
non-JSON 400 INVALID_JSON; a body over the limit 413 BODY_TOO_LARGE; a prompt over the context
400 PROMPT_TOO_LONG. The values at each boundary are accepted. Invalid requests start no job.
"""
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
