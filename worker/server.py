"""The HTTP worker: one model, one job at a time, tokens streamed as Server-Sent Events.

    POST /execute   JSON job -> text/event-stream: started, token*, (metrics), end | error
    POST /cancel    {"job_id": ...} -> 200, idempotent
    GET  /health    status, model facts, memory, residency, load progress, current job
    /v1/...         the OpenAI-compatible API on the same engine (worker/openai_api.py)
    GET  /openapi.json   the schema of all of it

The contract as implemented (fields, codes, stop reasons, limits) is docs/http-api.md. The
worker's state, body parsing, admission and the job thread are in worker/jobs.py.
"""
from __future__ import annotations

import json
import re
import time
import traceback
import uuid

import anyio
from fastapi import FastAPI
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from worker import api_schema
from worker.engine import ERROR_STOP, End, Started, Token
from worker.errors import WorkerError
from worker.jobs import (
    MAX_BODY_BYTES,
    MAX_JOB_ID_CHARS,
    WorkerState,
    admit,
    check_object,
    need_string,
    read_json,
    start,
    utc_now,
)
from worker.narration import correlation_id, narrate
from worker.sampling import SamplingParams

METRICS_EVERY_TOKENS = 16         # a `metrics` event after every 16th token
CORRELATION_ID = re.compile(r"^[\x21-\x7e]{1,128}$")   # visible ASCII, no spaces; else we make one

# Request fields besides job_id and prompt: everything SamplingParams.from_dict validates.
SAMPLING_FIELDS = tuple(SamplingParams.FIELDS)
REQUEST_FIELDS = ("job_id", "prompt") + SAMPLING_FIELDS
HTTP_CODES = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED", 413: "BODY_TOO_LARGE"}


def error_body(code: str, message: str, field: str | None = None) -> dict:
    return {"code": code, "message": message, "field": field}


def error_response(status: int, code: str, message: str, field: str | None = None, headers=None) -> JSONResponse:
    narrate("request_rejected", status=status, code=code, field=field, message=message)
    return JSONResponse(error_body(code, message, field), status_code=status, headers=headers)


def refusal(exc: WorkerError) -> JSONResponse:
    """The answer to a request refused with `exc` (503s say when to come back)."""
    headers = {"Retry-After": "1"} if exc.http_status == 503 else None
    return error_response(exc.http_status, exc.code, exc.message, exc.field, headers=headers)


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

        source = "header" if sent == cid else ("generated" if sent is None else "replaced_invalid")
        narrate("request_received", method=scope["method"], path=scope["path"],
                client=f"{scope['client'][0]}:{scope['client'][1]}" if scope.get("client") else None,
                correlation_id_source=source)
        try:
            await self.app(scope, receive, send_with_id)
        except Exception as exc:   # noqa: BLE001 — report, never leak a traceback to the client
            narrate("internal_error", error=type(exc).__name__, message=str(exc), traceback=traceback.format_exc())
            if not status:
                body = error_body("INTERNAL", f"internal error: {type(exc).__name__}")
                response = JSONResponse(body, status_code=500)
                await response(scope, receive, send_with_id)
        finally:
            narrate("request_finished", method=scope["method"], path=scope["path"],
                    status=status[0] if status else None, duration_ms=round((time.monotonic() - started) * 1000, 3))
            correlation_id.reset(token)


class EventStreamResponse(StreamingResponse):
    """StreamingResponse that always watches for the client going away, also while no token is
    being sent (prefill): the disconnect cancels the body iterator, whose `finally` cancels the job."""

    media_type = "text/event-stream"

    def __init__(self, content, **kwargs):
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **(kwargs.pop("headers", None) or {})}
        super().__init__(content, headers=headers, **kwargs)

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

        async with anyio.create_task_group() as task_group:
            task_group.start_soon(stream_then_stop)
            task_group.start_soon(watch_disconnect)


def sse(event: str, data: dict) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n".encode("utf-8")


# -- /execute's stream -------------------------------------------------------------------------

class ExecuteStream:
    """The engine's events as /execute's SSE events (docs/http-api.md): call it with each event."""

    def __init__(self, state: WorkerState, job):
        self.state, self.job = state, job
        self.t_first: float | None = None

    def __call__(self, event, at: float) -> bytes:
        if isinstance(event, Started):
            return sse("started", {"job_id": self.job.job_id, "model": self.state.info.get("name"),
                                   "started_at": utc_now(), "seed": event.seed, "prompt_tokens": event.prompt_tokens,
                                   "max_tokens": event.max_tokens, "n_ctx": event.n_ctx})
        if isinstance(event, Token):
            self.t_first = at if self.t_first is None else self.t_first
            out = sse("token", {"t": event.text, "i": event.index, "id": event.id})
            n = event.index + 1
            if n % METRICS_EVERY_TOKENS == 0:
                elapsed = at - self.t_first
                out += sse("metrics", {"tokens_out": n, "decode_time_ms": round(elapsed * 1000, 3),
                                       "tokens_per_second": round((n - 1) / elapsed, 3) if elapsed > 0 else None})
            return out
        return sse(*end_event(self.job, event, self.t_first, at))


def end_event(job, end: End, t_first: float | None, at: float) -> tuple[str, dict]:
    if end.stop_reason == ERROR_STOP:
        return "error", {"code": end.error_code or "INTERNAL", "message": end.error or "the job failed"}
    data = {"tokens_out": end.tokens_out, "decode_time_ms": end.decode_time_ms, "stop_reason": end.stop_reason,
            "prompt_tokens": end.prompt_tokens, "prefill_time_ms": end.prefill_time_ms,
            "time_to_first_token_ms": round((t_first - job.accepted_at) * 1000, 3) if t_first else None,
            "total_time_ms": round((at - job.accepted_at) * 1000, 3)}
    if end.stop_sequence is not None:
        data["stop_sequence"] = end.stop_sequence
    if end.text:
        data["text"] = end.text      # text released only at the end (docs/http-api.md)
    return "end", data


async def relay(job, queue, render):
    """`render(event, at)` for each of the job's events until its End; a consumer that stops
    early (the client went away) cancels the job."""
    finished = False
    try:
        while True:
            event, at = await queue.get()
            out = render(event, at)
            if out:
                yield out
            if isinstance(event, End):
                finished = True
                return
    finally:
        if not finished:
            job.cancel.set()
            narrate("client_disconnected", job_id=job.job_id, tokens_out=job.tokens_out)


# -- the app -----------------------------------------------------------------------------------

def create_app(state: WorkerState, *, max_body_bytes: int = MAX_BODY_BYTES) -> FastAPI:
    app = FastAPI(title="M0 inference worker", version="0.1.0", docs_url=None, redoc_url=None,
                  description="One GGUF model, one job at a time; docs/http-api.md is the contract.")

    @app.post("/execute", **api_schema.execute_route())
    async def execute(request: Request) -> Response:
        try:
            body = check_object(await read_json(request, max_body_bytes), REQUEST_FIELDS)
            job_id = need_string(body, "job_id", max_chars=MAX_JOB_ID_CHARS)
            prompt = need_string(body, "prompt")
            params = SamplingParams.from_dict({k: v for k, v in body.items() if k in SAMPLING_FIELDS})
            job = await admit(state, job_id, prompt, params)
        except WorkerError as exc:
            return refusal(exc)
        queue = start(state, job)
        return EventStreamResponse(relay(job, queue, ExecuteStream(state, job)))

    @app.post("/cancel", **api_schema.cancel_route())
    async def cancel(request: Request) -> Response:
        try:
            body = check_object(await read_json(request, max_body_bytes), ("job_id",))
            job_id = need_string(body, "job_id", max_chars=MAX_JOB_ID_CHARS)
        except WorkerError as exc:
            return refusal(exc)
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

    @app.get("/health", **api_schema.health_route())
    async def health() -> Response:
        return JSONResponse(state.health(), status_code=200 if state.status == "ready" else 503)

    async def http_error(request: Request, exc: HTTPException) -> Response:
        code = HTTP_CODES.get(exc.status_code, f"HTTP_{exc.status_code}")
        return JSONResponse(error_body(code, f"{request.method} {request.url.path}: {exc.detail}"),
                            status_code=exc.status_code, headers=exc.headers)

    from worker.openai_api import add_openai_routes

    add_openai_routes(app, state, max_body_bytes=max_body_bytes)
    app.add_exception_handler(HTTPException, http_error)
    app.add_middleware(CorrelationIdMiddleware)
    app.openapi = lambda: api_schema.openapi(app)
    app.state.worker = state
    return app
