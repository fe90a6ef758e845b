"""The request rules of the M0 contract (docs/http-api.md, `POST /execute` and `POST /cancel`;
codes from docs/errors.md), written from the docs alone."""
from __future__ import annotations

import dataclasses
import json
import math

DEFAULT_MAX_TOKENS = 256
MAX_STOPS, MAX_STOP_CHARS, MAX_JOB_ID_CHARS = 4, 256, 256
U64_MAX = 2 ** 64 - 1
MAX_JSON_DEPTH = 32


class ContractError(Exception):
    """A refusal with the contract's HTTP status, code and field."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.field = status, code, message, field

    def body(self) -> dict:
        return {"code": self.code, "message": self.message, "field": self.field}


def invalid(field: str | None, message: str) -> ContractError:
    return ContractError(400, "INVALID_PARAMS", message, field)


def shown(name: str, limit: int = 64) -> str:
    """A field name as an answer can carry it: a lone surrogate escaped, at most `limit` characters."""
    text = name.encode("utf-8", "backslashreplace").decode("utf-8")
    return text if len(text) <= limit else text[:limit] + "..."


@dataclasses.dataclass(frozen=True)
class Job:
    job_id: str
    prompt: str
    max_tokens: int | None
    temperature: float = 1.0
    seed: int | None = None
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    repeat_last_n: int = 64
    stop: tuple[str, ...] = ()


def parse_json_object(raw: bytes) -> dict:
    """RFC 8259 JSON (NaN and Infinity are not JSON) in UTF-8, and an object."""
    def no_constants(name):
        raise ValueError(f"{name} is not valid JSON")
    try:
        body = json.loads(raw.decode("utf-8"), parse_constant=no_constants)
    except json.JSONDecodeError as exc:
        raise ContractError(400, "INVALID_JSON", f"the body is not valid JSON: {exc.msg} at byte {exc.pos}") from None
    except UnicodeDecodeError as exc:
        raise ContractError(400, "INVALID_JSON", f"the body is not UTF-8 (byte {exc.start})") from None
    except RecursionError:
        raise ContractError(400, "INVALID_JSON", f"the body is nested more than {MAX_JSON_DEPTH} levels deep") from None
    except ValueError:                       # NaN/Infinity, a number of more than 4300 digits
        raise ContractError(400, "INVALID_JSON", "the body is not valid JSON (RFC 8259: no NaN or Infinity; "
                            "numbers of at most 4300 digits)") from None
    if _depth(body) > MAX_JSON_DEPTH:
        raise ContractError(400, "INVALID_JSON", f"the body is nested more than {MAX_JSON_DEPTH} levels deep")
    if not isinstance(body, dict):
        raise invalid(None, f"the body must be a JSON object, not {type(body).__name__}")
    return body


def _depth(value) -> int:
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    return 0


def _string(body: dict, field: str, limit: int | None = None) -> str:
    value = body.get(field)
    if value is None:
        raise invalid(field, f"{field} is required")
    if not isinstance(value, str):
        raise invalid(field, f"{field} must be a string")
    if not value:
        raise invalid(field, f"{field} must not be empty")
    if limit is not None and len(value) > limit:
        raise invalid(field, f"{field} is longer than {limit} characters")
    return value


def _integer(body: dict, field: str, low: int | None, high: int | None = None) -> int | None:
    value = body.get(field)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise invalid(field, f"{field} must be an integer")
    if (low is not None and value < low) or (high is not None and value > high):
        raise invalid(field, f"{field}={shown(repr(value))} is out of range")
    return value


def _number(body: dict, field: str, ok, rule: str) -> float | None:
    value = body.get(field)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise invalid(field, f"{field} must be a number")
    if not ok(value):
        raise invalid(field, f"{field}={shown(repr(value))} is out of range: {rule}")
    return float(value)


def _stop(body: dict) -> tuple[str, ...]:
    value = body.get("stop")
    if value is None:
        return ()
    if not isinstance(value, list):
        raise invalid("stop", "stop must be a list of strings")
    if len(value) > MAX_STOPS:
        raise invalid("stop", f"stop holds at most {MAX_STOPS} strings")
    for s in value:
        if not isinstance(s, str) or not s or len(s) > MAX_STOP_CHARS:
            raise invalid("stop", f"each stop string must be 1 to {MAX_STOP_CHARS} characters")
        _encodable("stop", s)
    return tuple(value)


def _encodable(field: str, text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise invalid(field, f"{field} holds a lone surrogate at position {exc.start}: not a character") from None


def parse_job(body: dict) -> Job:
    """The job, or INVALID_PARAMS naming the first bad field (unknown fields included)."""
    fields = {f.name for f in dataclasses.fields(Job)}
    for name in body:
        if name not in fields:
            raise invalid(shown(name), f"unknown field {shown(name)!r}")
    job_id = _string(body, "job_id", MAX_JOB_ID_CHARS)
    _encodable("job_id", job_id)
    prompt = _string(body, "prompt")
    _encodable("prompt", prompt)
    values = {
        "max_tokens": _integer(body, "max_tokens", 1),
        "temperature": _number(body, "temperature", lambda v: 0.0 <= v <= 2.0, "0 to 2"),
        "seed": _integer(body, "seed", 0, U64_MAX),
        "top_p": _number(body, "top_p", lambda v: 0.0 < v <= 1.0, "(0, 1]"),
        "top_k": _integer(body, "top_k", 0),
        "min_p": _number(body, "min_p", lambda v: 0.0 <= v < 1.0, "[0, 1)"),
        "repetition_penalty": _number(body, "repetition_penalty", lambda v: v > 0.0, "> 0"),
        "repeat_last_n": _integer(body, "repeat_last_n", -1),
    }
    given = {k: v for k, v in values.items() if v is not None}
    return Job(job_id=job_id, prompt=prompt, max_tokens=values["max_tokens"], stop=_stop(body),
               **{k: v for k, v in given.items() if k != "max_tokens"})


def parse_cancel(body: dict) -> str:
    for name in body:
        if name != "job_id":
            raise invalid(shown(name), f"unknown field {shown(name)!r}")
    job_id = _string(body, "job_id", MAX_JOB_ID_CHARS)
    _encodable("job_id", job_id)
    return job_id


def check_lengths(job: Job, prompt_tokens: int, n_ctx: int) -> int:
    """The token budget of a job whose prompt has `prompt_tokens` tokens in a context of n_ctx."""
    if prompt_tokens >= n_ctx:
        raise ContractError(400, "PROMPT_TOO_LONG", f"the prompt has {prompt_tokens} tokens; the context "
                            f"holds {n_ctx}", "prompt")
    room = n_ctx - prompt_tokens
    if job.max_tokens is None:
        return min(DEFAULT_MAX_TOKENS, room)
    if job.max_tokens > room:
        raise invalid("max_tokens", f"max_tokens={job.max_tokens} with {prompt_tokens} prompt tokens exceeds "
                      f"the context of {n_ctx}")
    return job.max_tokens
