"""The HTTP worker: one model, one job at a time, tokens streamed as Server-Sent Events.

    POST /execute   JSON job -> text/event-stream: started, token*, (metrics), end | error
    POST /cancel    {"job_id": ...} -> 200, idempotent
    GET  /health    status, model facts, memory, residency, load progress, current job

The contract as implemented (fields, codes, stop reasons, limits) is docs/http-api.md.

Threads: the event loop only parses, validates and relays; tokenization and inference run in
one inference thread per job (started in a copy of the request's context, so narration from
it carries the request's correlation id) and hand events to the loop through an asyncio queue.
"""
from __future__ import annotations

import asyncio
import contextvars
import json
import re
import threading
import time
import traceback
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable

from starlette.applications import Starlette
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from worker.errors import InvalidParamsError, WorkerError
from worker.narration import correlation_id, narrate
from worker.sampling import SamplingParams

MAX_BODY_BYTES = 1 << 20          # 1 MiB: a prompt larger than that cannot fit any context we serve
MAX_JOB_ID_CHARS = 256
METRICS_EVERY_TOKENS = 16         # a `metrics` event after every 16th token
RECENT_JOBS = 256                 # finished job ids remembered for /cancel answers
CORRELATION_ID = re.compile(r"^[\x21-\x7e]{1,128}$")   # visible ASCII, no spaces; else we make one

# Request fields besides job_id and prompt: everything SamplingParams.from_dict validates.
SAMPLING_FIELDS = tuple(SamplingParams.FIELDS)
REQUEST_FIELDS = ("job_id", "prompt") + SAMPLING_FIELDS

STOP_REASONS = ("max_tokens", "eos", "stop_sequence", "cancelled", "context_full")


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def error_body(code: str, message: str, field: str | None = None) -> dict:
    return {"code": code, "message": message, "field": field}


def error_response(status: int, code: str, message: str, field: str | None = None, headers=None) -> JSONResponse:
    narrate("request_rejected", status=status, code=code, field=field, message=message)
    return JSONResponse(error_body(code, message, field), status_code=status, headers=headers)


# -- worker state ------------------------------------------------------------------------------

@dataclass
class Job:
    job_id: str
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


# -- middleware --------------------------------------------------------------------------------

class CorrelationIdMiddleware:
    """X-Correlation-Id on every response (echoed when valid, generated otherwise), set in the
    narration context for the whole request, and the request's first and last narration lines.
    Also the last line of defence: an unexpected exception becomes a JSON 500 with the header."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        sent = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"x-correlation-id"), None)
        cid = sent if sent is not None and CORRELATION_ID.match(sent) else uuid.uuid4().hex
        token = correlation_id.set(cid)
        started = time.monotonic()
        status: list[int] = []

        async def send_with_id(message):
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)["X-Correlation-Id"] = cid
                status.append(message["status"])
            await send(message)

        narrate("request_received", method=scope["method"], path=scope["path"],
                client=f"{scope['client'][0]}:{scope['client'][1]}" if scope.get("client") else None,
                correlation_id_source="header" if sent == cid else ("generated" if sent is None else "replaced_invalid"))
        try:
            await self.app(scope, receive, send_with_id)
        except Exception as exc:   # noqa: BLE001 — report, never leak a traceback to the client
            narrate("internal_error", error=type(exc).__name__, message=str(exc), traceback=traceback.format_exc())
            if not status:
                response = JSONResponse(error_body("INTERNAL", f"internal error: {type(exc).__name__}"), status_code=500)
                await response(scope, receive, send_with_id)
        finally:
            narrate("request_finished", method=scope["method"], path=scope["path"],
                    status=status[0] if status else None, duration_ms=round((time.monotonic() - started) * 1000, 3))
            correlation_id.reset(token)


class EventStreamResponse(StreamingResponse):
    """StreamingResponse that always watches for the client going away, also while no token is
    being sent (prefill): the disconnect cancels the body iterator, whose `finally` cancels the job."""

    media_type = "text/event-stream"

    async def __call__(self, scope, receive, send):
        async def stream_then_stop():
            try:
                await self.stream_response(send)
            except OSError:
                pass
            finally:
                task_group.cancel_scope.cancel()

        async def watch_disconnect():
            await self.listen_for_disconnect(receive)
            task_group.cancel_scope.cancel()

        import anyio

        async with anyio.create_task_group() as task_group:
            task_group.start_soon(stream_then_stop)
            task_group.start_soon(watch_disconnect)


def sse(event: str, data: dict) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n".encode("utf-8")


# -- the inference thread ----------------------------------------------------------------------

class Rejected(Exception):
    """Raised in the job thread before the first event: becomes an HTTP 400 instead of a stream."""

    def __init__(self, error: WorkerError):
        super().__init__(error.message)
        self.error = error


def _attr(obj, *names, default=None):
    for name in names:
        if hasattr(obj, name):
            return getattr(obj, name)
    return default


def _event_kind(ev) -> str:
    return type(ev).__name__.lower()


def run_job(state: WorkerState, job: Job, prompt: str, params, emit: Callable[[tuple], None]) -> None:
    """Generate; emit ('started'|'token'|'metrics'|'end'|'error', data), or ('rejected', error) when
    the engine refuses the job before it starts (prompt too long, max_tokens beyond the context)."""
    t_first = None
    prompt_tokens = None
    terminal: tuple | None = None
    outcome = "error"
    stop_reason = None
    try:
        started = False
        events = state.engine.generate(prompt, params, cancel=job.cancel, job_id=job.job_id)
        while True:
            try:
                ev = next(events)
            except StopIteration:
                break
            except InvalidParamsError as exc:      # the engine's checks, raised before Started
                if started:
                    raise
                raise Rejected(exc)
            kind = _event_kind(ev)
            if kind == "started":
                started = True
                prompt_tokens = _attr(ev, "prompt_tokens")
                narrate("job_started", job_id=job.job_id, prompt_tokens=prompt_tokens, seed=_attr(ev, "seed"),
                        max_tokens=_attr(ev, "max_tokens"), n_ctx=_attr(ev, "n_ctx"))
                emit(("started", {"job_id": job.job_id, "model": state.info.get("name"), "started_at": utc_now(),
                                  "seed": _attr(ev, "seed"), "prompt_tokens": prompt_tokens,
                                  "max_tokens": _attr(ev, "max_tokens"), "n_ctx": _attr(ev, "n_ctx", default=state.n_ctx)}))
            elif kind == "token":
                if t_first is None:
                    t_first = time.monotonic()
                job.tokens_out += 1
                emit(("token", {"t": _attr(ev, "text", default=""), "i": _attr(ev, "index", default=job.tokens_out - 1),
                                "id": int(_attr(ev, "id", "token_id"))}))
                if job.tokens_out % METRICS_EVERY_TOKENS == 0:
                    elapsed = time.monotonic() - t_first
                    emit(("metrics", {"tokens_out": job.tokens_out, "decode_time_ms": round(elapsed * 1000, 3),
                                      "tokens_per_second": round((job.tokens_out - 1) / elapsed, 3) if elapsed > 0 else None}))
            elif kind == "end":
                t_end = time.monotonic()
                stop_reason = _attr(ev, "stop_reason")
                if stop_reason == "error":
                    terminal = ("error", {"code": _attr(ev, "error_code", default=None) or "INFERENCE_FAILED",
                                          "message": _attr(ev, "error", default=None) or "inference failed"})
                    outcome = terminal[1]["code"]
                    continue
                server_decode_ms = round(((t_end - t_first) if t_first else 0.0) * 1000, 3)
                data = {"tokens_out": _attr(ev, "tokens_out", default=job.tokens_out),
                        "decode_time_ms": _attr(ev, "decode_time_ms", default=server_decode_ms),
                        "stop_reason": stop_reason,
                        "prompt_tokens": _attr(ev, "prompt_tokens", default=prompt_tokens),
                        "prefill_time_ms": _attr(ev, "prefill_time_ms"),
                        "time_to_first_token_ms": round((t_first - job.accepted_at) * 1000, 3) if t_first else None,
                        "total_time_ms": round((t_end - job.accepted_at) * 1000, 3)}
                if _attr(ev, "stop_sequence") is not None:
                    data["stop_sequence"] = ev.stop_sequence
                if _attr(ev, "text"):
                    data["text"] = ev.text      # text released only at the end (docs/http-api.md)
                terminal = ("end", data)
                outcome = stop_reason
        if terminal is None:
            terminal = ("error", {"code": "INTERNAL", "message": "the engine ended without an end event"})
            outcome = "INTERNAL"
    except Rejected as rejected:
        terminal = ("rejected", rejected.error)
        outcome = "rejected"
    except WorkerError as exc:
        terminal = ("error", {"code": exc.code, "message": exc.message})
        outcome = exc.code
    except Exception as exc:   # noqa: BLE001 — reported as an event, with the traceback in narration
        narrate("inference_failed", job_id=job.job_id, error=type(exc).__name__, message=str(exc),
                traceback=traceback.format_exc())
        terminal = ("error", {"code": "INFERENCE_FAILED", "message": f"{type(exc).__name__}: {exc}"})
        outcome = "INFERENCE_FAILED"
    finally:
        # Free the slot before the terminal event goes out: a client that has seen `end` may
        # send its next job at once and must not be told the worker is busy.
        state.release(job, outcome)
        if terminal is None:
            terminal = ("error", {"code": "INTERNAL", "message": "job thread stopped unexpectedly"})
        if terminal[0] != "rejected":
            narrate("job_finished", job_id=job.job_id, outcome=terminal[0], stop_reason=stop_reason,
                    tokens_out=job.tokens_out, prompt_tokens=prompt_tokens,
                    code=terminal[1].get("code") if terminal[0] == "error" else None,
                    cancel_requested=job.cancel.is_set())
        emit(terminal)


# -- endpoints ---------------------------------------------------------------------------------

async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise HTTPException(413)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise HTTPException(413)
    return bytes(body)


def _reject_constant(name: str):
    # Python's json accepts NaN and Infinity; RFC 8259 JSON does not, and no parameter wants them.
    raise ValueError(f"{name} is not valid JSON")


def create_app(state: WorkerState, *, max_body_bytes: int = MAX_BODY_BYTES) -> Starlette:
    async def parse_json(request: Request) -> tuple[Any, Response | None]:
        try:
            body = await read_body(request, max_body_bytes)
        except HTTPException:
            return None, error_response(413, "BODY_TOO_LARGE", f"request body exceeds {max_body_bytes} bytes")
        except ClientDisconnect:
            return None, Response(status_code=400)
        try:
            return json.loads(body, parse_constant=_reject_constant), None
        except ValueError as exc:     # includes JSONDecodeError and UnicodeDecodeError
            return None, error_response(400, "INVALID_JSON", f"request body is not valid JSON: {exc}")

    def not_ready() -> Response | None:
        if state.status == "ready":
            return None
        code = "WORKER_LOADING" if state.status == "loading" else "WORKER_UNHEALTHY"
        return error_response(503, code, f"worker is {state.status}" +
                              (f" ({state.progress['percent']:.1f}% loaded)" if state.status == "loading" else
                               f": {state.status_detail}"), headers={"Retry-After": "1"})

    async def execute(request: Request) -> Response:
        body, problem = await parse_json(request)
        if problem:
            return problem
        if not isinstance(body, dict):
            return error_response(400, "INVALID_PARAMS", "request body must be a JSON object")
        unknown = sorted(set(body) - set(REQUEST_FIELDS))
        if unknown:
            return error_response(400, "INVALID_PARAMS", f"unknown field {unknown[0]!r}; accepted fields: "
                                  + ", ".join(REQUEST_FIELDS), field=unknown[0])
        for name in ("job_id", "prompt"):
            value = body.get(name)
            if name not in body:
                return error_response(400, "INVALID_PARAMS", f"{name} is required", field=name)
            if not isinstance(value, str) or not value:
                return error_response(400, "INVALID_PARAMS", f"{name} must be a non-empty string", field=name)
        if len(body["job_id"]) > MAX_JOB_ID_CHARS:
            return error_response(400, "INVALID_PARAMS", f"job_id is longer than {MAX_JOB_ID_CHARS} characters",
                                  field="job_id")
        try:
            params = SamplingParams.from_dict({k: v for k, v in body.items() if k in SAMPLING_FIELDS})
        except InvalidParamsError as exc:
            return error_response(400, exc.code, exc.message, field=exc.field)
        busy = not_ready()
        if busy:
            return busy
        job = Job(body["job_id"])
        if not state.try_claim(job):
            running = state.job
            return error_response(503, "WORKER_BUSY", "one job runs at a time and job "
                                  f"{running.job_id if running else '?'!r} is running; retry after it ends",
                                  headers={"Retry-After": "1"})
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()

        def emit(item):
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:      # loop closed: the server is shutting down
                pass

        narrate("job_accepted", job_id=job.job_id)
        context = contextvars.copy_context()
        threading.Thread(target=context.run, name=f"job-{job.job_id[:32]}", daemon=True,
                         args=(run_job, state, job, body["prompt"], params, emit)).start()
        try:
            first = await queue.get()
        except asyncio.CancelledError:
            job.cancel.set()
            raise
        if first[0] == "rejected":
            err: WorkerError = first[1]
            return error_response(400, err.code, err.message, field=err.field)

        async def stream():
            item = first
            finished = False
            try:
                while True:
                    yield sse(*item)
                    if item[0] in ("end", "error"):
                        finished = True
                        return
                    item = await queue.get()
            finally:
                if not finished:
                    job.cancel.set()
                    narrate("client_disconnected", job_id=job.job_id, tokens_out=job.tokens_out)

        return EventStreamResponse(stream(), headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def cancel(request: Request) -> Response:
        body, problem = await parse_json(request)
        if problem:
            return problem
        if not isinstance(body, dict):
            return error_response(400, "INVALID_PARAMS", "request body must be a JSON object")
        unknown = sorted(set(body) - {"job_id"})
        if unknown:
            return error_response(400, "INVALID_PARAMS", f"unknown field {unknown[0]!r}; accepted fields: job_id",
                                  field=unknown[0])
        job_id = body.get("job_id")
        if not isinstance(job_id, str) or not job_id:
            return error_response(400, "INVALID_PARAMS", "job_id must be a non-empty string", field="job_id")
        job = state.job
        if job is not None and job.job_id == job_id:
            first_request = not job.cancel.is_set()
            job.cancel.set()
            narrate("job_cancel_requested", job_id=job_id, tokens_out=job.tokens_out, repeated=not first_request)
            return JSONResponse({"job_id": job_id, "status": "cancelling", "tokens_out": job.tokens_out})
        if job_id in state.recent:
            outcome = state.recent[job_id]
            narrate("job_cancel_requested", job_id=job_id, finished=outcome)
            return JSONResponse({"job_id": job_id, "status": "finished", "outcome": outcome})
        narrate("job_cancel_requested", job_id=job_id, known=False)
        return JSONResponse({"job_id": job_id, "status": "unknown"})

    async def health(request: Request) -> Response:
        return JSONResponse(state.health(), status_code=200 if state.status == "ready" else 503)

    async def http_error(request: Request, exc: HTTPException) -> Response:
        codes = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED", 413: "BODY_TOO_LARGE"}
        return JSONResponse(error_body(codes.get(exc.status_code, f"HTTP_{exc.status_code}"),
                                       f"{request.method} {request.url.path}: {exc.detail}"),
                            status_code=exc.status_code, headers=exc.headers)

    routes = [Route("/execute", execute, methods=["POST"]),
              Route("/cancel", cancel, methods=["POST"]),
              Route("/health", health, methods=["GET"])]
    app = Starlette(routes=routes, exception_handlers={HTTPException: http_error})
    app.add_middleware(CorrelationIdMiddleware)
    app.state.worker = state
    return app
