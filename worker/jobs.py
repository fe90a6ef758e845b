"""The one-job worker behind every HTTP API: its state, request bodies, admission and job thread.

    body = await read_json(request, limit)              # InvalidJSONError / BodyTooLargeError
    job = await admit(state, job_id, prompt, params)    # validates first, then WorkerBusyError
    events = start(state, job)                          # asyncio.Queue of (engine event, monotonic time)

Both APIs (worker/server.py's /execute and worker/openai_api.py's /v1 routes) go through
`admit`, so they share one validation and one busy rule: every input check (the engine's too:
the prompt is tokenized) runs before the slot is claimed, so a bad request is told what is
wrong even while another job runs; a good one while a job runs is WORKER_BUSY, never queued.

The job runs in its own thread (started in a copy of the request's context, so its narration
carries the request's correlation id) and hands the engine's typed events (Started, Token,
End) to the event loop through an asyncio queue. The slot is freed before the End event is
handed over: a client that has seen the end may send its next job at once.
"""
from __future__ import annotations

import asyncio
import contextvars
import json
import threading
import time
import traceback
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Iterable

from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request

from worker.engine import ERROR_STOP, End, Prepared, Started, Token
from worker.errors import (
    BodyTooLargeError,
    InvalidJSONError,
    InvalidParamsError,
    WorkerBusyError,
    WorkerNotReadyError,
    quote,
)
from worker.narration import narrate
from worker.sampling import SamplingParams, is_unicode_text

MAX_BODY_BYTES = 1 << 20          # 1 MiB: a prompt larger than that cannot fit any context we serve
MAX_JSON_DEPTH = 32               # no request needs more than 4 levels; Python's parser recurses
MAX_JOB_ID_CHARS = 256
RECENT_JOBS = 256                 # finished job ids remembered for /cancel answers
FIELD_NAME_CHARS = 64             # how much of an unknown field's name an answer repeats


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# -- worker state ------------------------------------------------------------------------------

@dataclass
class Job:
    job_id: str
    prepared: Prepared
    cancel: threading.Event = field(default_factory=threading.Event)
    tokens_out: int = 0
    accepted_at: float = field(default_factory=time.monotonic)


class WorkerState:
    """Everything /health reports and the one-job slot. Mutated by the loader and job threads."""

    def __init__(self, *, model_path: str, device: str, n_ctx: int, info: dict):
        self.model_path = str(model_path)
        self.device = device
        self.n_ctx = n_ctx
        self.info = dict(info)          # architecture, quant_kind, tokenizer_kind, vocab_size, ...
        self.status = "loading"         # loading -> ready; -> unhealthy on a failed load or residency
        self.status_detail: str | None = None
        self.started = time.monotonic()
        self.progress = {"percent": 0.0, "done_bytes": 0, "total_bytes": 0,
                         "tensors_loaded": 0, "tensors_total": info.get("tensor_count", 0), "current_tensor": None}
        self.residency = {"status": "pending", "checked_at": None, "detail": "not checked yet"}
        self.backend = None
        self.model = None
        self.tokenizer = None
        self.engine = None
        self._slot = threading.Lock()
        self.job: Job | None = None
        self.recent: OrderedDict[str, str] = OrderedDict()   # job_id -> final stop reason / error code

    # The one-job slot: a second job is refused (WORKER_BUSY), never queued.
    def try_claim(self, job: Job) -> bool:
        if not self._slot.acquire(blocking=False):
            return False
        self.job = job
        return True

    def release(self, job: Job, outcome: str) -> None:
        if self.job is job:
            self.recent[job.job_id] = outcome
            while len(self.recent) > RECENT_JOBS:
                self.recent.popitem(last=False)
            self.job = None
            self._slot.release()

    def ready(self, *, backend, model, tokenizer, engine) -> None:
        self.backend, self.model, self.tokenizer, self.engine = backend, model, tokenizer, engine
        self.status = "ready"

    def require_ready(self) -> None:
        if self.status == "ready":
            return
        if self.status == "loading":
            raise WorkerNotReadyError(f"worker is loading ({self.progress['percent']:.1f}% loaded)")
        raise WorkerNotReadyError(f"worker is {self.status}: {self.status_detail}", code="WORKER_UNHEALTHY")

    def memory(self) -> dict:
        report = dict(self.backend.memory_report()) if self.backend is not None else {}
        mem = {k: int(report.get(k, 0)) for k in ("weights", "kv_cache", "workspace")}
        mem["total"] = sum(mem.values())
        return mem

    def health(self) -> dict:
        job = self.job
        return {
            "status": self.status,
            "status_detail": self.status_detail,
            "model": self.info.get("name"),
            "model_path": self.model_path,
            "architecture": self.info.get("architecture"),
            "quant_kind": self.info.get("quant_kind"),
            "tokenizer_kind": self.info.get("tokenizer_kind"),
            "vocab_size": self.info.get("vocab_size"),
            "context_length": self.n_ctx,
            "model_context_length": self.info.get("context_length"),
            "device": self.device,
            "device_name": getattr(self.backend, "device_name", None) or None,
            "memory_bytes": self.memory(),
            "residency": dict(self.residency),
            "uptime_s": round(time.monotonic() - self.started, 3),
            "load": dict(self.progress),
            "job": None if job is None else {"job_id": job.job_id, "tokens_out": job.tokens_out},
        }


# -- request bodies ----------------------------------------------------------------------------

async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLargeError(f"request body exceeds {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise BodyTooLargeError(f"request body exceeds {limit} bytes")
    return bytes(body)


def _reject_constant(name: str):
    # Python's json accepts NaN and Infinity; RFC 8259 JSON does not, and no parameter wants them.
    raise InvalidJSONError(f"request body is not valid JSON: {name} is not a JSON number")


def parse_json(body: bytes) -> Any:
    """One RFC 8259 JSON text: UTF-8 (strictly: no byte order mark, no encoded surrogates), at most
    MAX_JSON_DEPTH levels deep. Anything else is InvalidJSONError with a message for a person."""
    try:
        text = body.decode("utf-8")        # strict: json.loads(bytes) would also take UTF-16/32
    except UnicodeDecodeError as exc:
        raise InvalidJSONError(f"request body is not UTF-8 (invalid byte at offset {exc.start})") from None
    if text.startswith("\ufeff"):
        raise InvalidJSONError("request body starts with a byte order mark; JSON text must not (RFC 8259 §8.1)")
    try:
        value = json.loads(text, parse_constant=_reject_constant)
    except RecursionError:
        raise InvalidJSONError(f"request body is nested more than {MAX_JSON_DEPTH} levels deep") from None
    except json.JSONDecodeError as exc:
        raise InvalidJSONError(f"request body is not valid JSON: {exc.msg} at line {exc.lineno} "
                               f"column {exc.colno}") from None
    except ValueError:                     # int() refusing a number of more than 4300 digits
        raise InvalidJSONError("request body is not valid JSON for this API: a number has too many digits") from None
    if _depth(value) > MAX_JSON_DEPTH:
        raise InvalidJSONError(f"request body is nested more than {MAX_JSON_DEPTH} levels deep")
    return value


def _depth(value: Any) -> int:
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, depth)
            stack.extend((v, depth + 1) for v in (item.values() if isinstance(item, dict) else item))
    return deepest


async def read_json(request: Request, limit: int) -> Any:
    try:
        body = await read_body(request, limit)
    except ClientDisconnect:
        raise InvalidJSONError("the client closed the connection before the body was complete") from None
    return parse_json(body)


def field_name(name: str) -> str:
    """A field name safe to repeat in an answer: bounded, and escaped if it is not Unicode text."""
    safe = name if is_unicode_text(name) else name.encode("utf-8", "backslashreplace").decode("utf-8")
    return safe if len(safe) <= FIELD_NAME_CHARS else safe[:FIELD_NAME_CHARS] + "..."


def check_object(body: Any, accepted: Iterable[str]) -> dict:
    """The body is a JSON object of accepted fields whose strings are all Unicode text."""
    if not isinstance(body, dict):
        raise InvalidParamsError("request body must be a JSON object")
    accepted = tuple(accepted)
    for name in body:
        if name not in accepted:
            raise InvalidParamsError(f"unknown field {quote(field_name(name))}; accepted fields: "
                                     + ", ".join(accepted), field=field_name(name))
    for name, value in body.items():
        if not _all_text(value):
            raise InvalidParamsError(f"{name} holds a lone surrogate (\\ud800-\\udfff), which is not Unicode text",
                                     field=name)
    return body


def _all_text(value: Any) -> bool:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if not is_unicode_text(item):
                return False
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return True


def need_string(body: dict, name: str, *, max_chars: int | None = None) -> str:
    if name not in body:
        raise InvalidParamsError(f"{name} is required", field=name)
    value = body[name]
    if not isinstance(value, str) or not value:
        raise InvalidParamsError(f"{name} must be a non-empty string, got {quote(value)}", field=name)
    if max_chars is not None and len(value) > max_chars:
        raise InvalidParamsError(f"{name} is longer than {max_chars} characters", field=name)
    return value


# -- admission and the job thread --------------------------------------------------------------

async def admit(state: WorkerState, job_id: str, prompt: str | list[int], params: SamplingParams) -> Job:
    """Validate everything (the engine's checks included), then claim the one-job slot."""
    state.require_ready()
    prepared = await run_in_threadpool(state.engine.prepare, prompt, params)
    job = Job(job_id, prepared)
    if not state.try_claim(job):
        running = state.job
        raise WorkerBusyError(f"one job runs at a time and job {quote(running.job_id if running else '?')} is "
                              "running; retry after it ends")
    narrate("job_accepted", job_id=job.job_id)
    return job


def start(state: WorkerState, job: Job) -> asyncio.Queue:
    """Run the job in its own thread; its engine events arrive on the returned queue as
    (event, monotonic time), the last one always an End."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()

    def emit(event) -> None:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, (event, time.monotonic()))
        except RuntimeError:      # loop closed: the server is shutting down
            pass

    context = contextvars.copy_context()
    threading.Thread(target=context.run, name=f"job-{job.job_id[:32]}", daemon=True,
                     args=(_run_job, state, job, emit)).start()
    return queue


def _run_job(state: WorkerState, job: Job, emit) -> None:
    end: End | None = None
    prompt_tokens = len(job.prepared.ids)
    try:
        for event in state.engine.run(job.prepared, cancel=job.cancel, job_id=job.job_id):
            if isinstance(event, Started):
                narrate("job_started", job_id=job.job_id, prompt_tokens=event.prompt_tokens, seed=event.seed,
                        max_tokens=event.max_tokens, n_ctx=event.n_ctx)
            elif isinstance(event, Token):
                job.tokens_out += 1
            elif isinstance(event, End):
                end = event
                break
            emit(event)
        if end is None:
            end = _internal_end(job, prompt_tokens, "the engine ended without an End event")
    except Exception as exc:   # noqa: BLE001 — the engine reports failures as End events; this is a bug
        narrate("internal_error", job_id=job.job_id, error=type(exc).__name__, message=str(exc),
                traceback=traceback.format_exc())
        end = _internal_end(job, prompt_tokens, f"internal error: {type(exc).__name__}")
    finally:
        if end is None:
            end = _internal_end(job, prompt_tokens, "the job thread stopped unexpectedly")
        state.release(job, end.error_code if end.stop_reason == ERROR_STOP else end.stop_reason)
        narrate("job_finished", job_id=job.job_id, outcome="error" if end.stop_reason == ERROR_STOP else "end",
                stop_reason=end.stop_reason, tokens_out=job.tokens_out, prompt_tokens=prompt_tokens,
                code=end.error_code, cancel_requested=job.cancel.is_set())
        emit(end)


def _internal_end(job: Job, prompt_tokens: int, message: str) -> End:
    return End(stop_reason=ERROR_STOP, tokens_out=job.tokens_out, prompt_tokens=prompt_tokens,
               decode_time_ms=0.0, prefill_time_ms=0.0, error_code="INTERNAL", error=message)
