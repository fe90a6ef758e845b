"""The M0 HTTP contract (docs/http-api.md) served in front of llama-server."""
from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import datetime
import json
import re
import secrets
import sys
import time
import uuid

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from tools.llama_cpp_worker.contract import (
    DEFAULT_MAX_TOKENS,
    ContractError,
    Job,
    check_lengths,
    parse_cancel,
    parse_job,
    parse_json_object,
)
from tools.llama_cpp_worker.facts import FileFacts
from tools.llama_cpp_worker.textstream import TextStream
from tools.llama_cpp_worker.upstream import LlamaServer, UpstreamError
from tools.llama_cpp_worker.vocab import Vocabulary

METRICS_EVERY = 16
REMEMBERED_JOBS = 256
CORRELATION_ID = re.compile(r"[\x21-\x7e]{1,128}")


def narrate(event: str, correlation_id: str | None = None, **fields) -> None:
    """One JSON line on stderr, in the shape of the contract's narration."""
    record = {"ts": datetime.datetime.now(datetime.timezone.utc).isoformat(), "event": event,
              "correlation_id": correlation_id, **fields}
    print(json.dumps(record, default=str), file=sys.stderr, flush=True)


def sse(event: str, data: dict) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


@dataclasses.dataclass
class RunningJob:
    job: Job
    prompt_ids: list[int]
    budget: int
    seed: int
    correlation_id: str
    accepted_at: float
    tokens_out: int = 0
    cancel_requested: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)


class WorkerState:
    def __init__(self, facts: FileFacts, vocabulary: Vocabulary, upstream: LlamaServer, max_body_bytes: int):
        self.facts, self.vocabulary, self.upstream = facts, vocabulary, upstream
        self.max_body_bytes = max_body_bytes
        self.status, self.status_detail = "loading", None
        self.n_ctx: int | None = None
        self.engine = "llama.cpp llama-server"
        self.started = time.monotonic()
        self.job: RunningJob | None = None
        self.finished: collections.OrderedDict[str, str] = collections.OrderedDict()

    async def watch_loading(self) -> None:
        """`loading` until llama-server answers /health 200; then its context is the one served."""
        while self.status == "loading":
            if self.upstream.exited() is not None:
                self.status, self.status_detail = "unhealthy", f"llama-server exited ({self.upstream.exited()})"
                narrate("model_load_failed", code="MODEL_LOAD_FAILED", message=self.status_detail)
                return
            if await self.upstream.ready():
                props = await self.upstream.props()
                self.n_ctx = int(props["default_generation_settings"]["n_ctx"])
                build = props.get("build_info")
                self.engine = "llama.cpp llama-server" + (f" ({build})" if build else "")
                self.status = "ready"
                narrate("model_ready", model=self.facts.name, n_ctx=self.n_ctx, engine=self.engine)
                return
            await asyncio.sleep(0.1)

    def remember(self, job_id: str, outcome: str) -> None:
        self.finished[job_id] = outcome
        while len(self.finished) > REMEMBERED_JOBS:
            self.finished.popitem(last=False)


async def until_cancelled(call, cancel: asyncio.Event):
    """The upstream call's result, or None when `cancel` is set first: the call is then abandoned,
    which closes its connection, and llama-server stops a task whose client has gone (prefill
    included), so a cancel takes effect within one token even in a long prompt."""
    if cancel.is_set():
        call.close()
        return None
    work, stop = asyncio.ensure_future(call), asyncio.ensure_future(cancel.wait())
    try:
        done, _ = await asyncio.wait({work, stop}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:        # our own client went away: abandon the upstream call too
        work.cancel()
        stop.cancel()
        raise
    if work in done:
        stop.cancel()
        return work.result()
    work.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await work
    return None


def memory_bytes(logged: dict[str, int]) -> dict:
    weights, kv = logged.get("model", 0), logged.get("KV", 0)
    workspace = logged.get("compute", 0) + logged.get("output", 0)
    return {"weights": weights, "kv_cache": kv, "workspace": workspace, "total": weights + kv + workspace}


def error_response(err: ContractError, correlation_id: str | None = None) -> JSONResponse:
    headers = {"Retry-After": "1"} if err.code in ("WORKER_BUSY", "WORKER_LOADING") else {}
    narrate("request_rejected", correlation_id, status=err.status, code=err.code, field=err.field)
    return JSONResponse(err.body(), status_code=err.status, headers=headers)


async def read_body(request: Request, limit: int) -> bytes:
    length = request.headers.get("content-length")
    too_large = ContractError(413, "BODY_TOO_LARGE", f"the body is larger than {limit} bytes")
    if length is not None and length.isdigit() and int(length) > limit:
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


def make_app(state: WorkerState) -> Starlette:
    async def health(request: Request) -> JSONResponse:
        facts, ready = state.facts, state.status == "ready"
        logged = state.upstream.buffer_bytes        # what llama.cpp allocated, as it logs it
        body = {
            "status": state.status, "status_detail": state.status_detail,
            "model": facts.name, "model_path": facts.path, "architecture": facts.architecture,
            "quant_kind": facts.quant_kind, "tokenizer_kind": facts.tokenizer_kind, "vocab_size": facts.vocab_size,
            "context_length": state.n_ctx, "model_context_length": facts.context_length,
            "device": "cpu", "device_name": state.engine,
            "memory_bytes": memory_bytes(logged) if ready else None,
            "residency": {"status": "not_applicable", "checked_at": None,
                          "detail": "llama.cpp on the CPU: no device memory to watch"},
            "uptime_s": round(time.monotonic() - state.started, 3),
            "load": {"percent": 100.0 if ready else 0.0, "done_bytes": facts.weight_bytes if ready else 0,
                     "total_bytes": facts.weight_bytes},
            "job": ({"job_id": state.job.job.job_id, "tokens_out": state.job.tokens_out} if state.job else None),
        }
        return JSONResponse(body, status_code=200 if ready else 503)

    async def execute(request: Request):
        cid = request.scope["correlation_id"]
        try:
            job = parse_job(parse_json_object(await read_body(request, state.max_body_bytes)))
            if state.status == "loading":
                raise ContractError(503, "WORKER_LOADING", "the model is still loading")
            if state.status != "ready":
                raise ContractError(503, "WORKER_UNHEALTHY", f"the worker is unhealthy: {state.status_detail}")
            prompt_ids = await state.upstream.tokenize(job.prompt)
            budget = check_lengths(job, len(prompt_ids), state.n_ctx)
            if state.job is not None:     # no await between this check and the claim below
                raise ContractError(503, "WORKER_BUSY", f"job {state.job.job.job_id!r} is running; one job at a time")
        except ContractError as err:
            return error_response(err, cid)
        except UpstreamError as exc:
            return error_response(ContractError(500, "INTERNAL", str(exc)), cid)
        run = RunningJob(job, prompt_ids, budget, job.seed if job.seed is not None else secrets.randbits(64),
                         cid, time.monotonic())
        state.job = run
        narrate("job_accepted", cid, job_id=job.job_id, prompt_tokens=len(prompt_ids), max_tokens=budget)
        return StreamingResponse(generate(run), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})

    async def generate(run: RunningJob):
        job, n_prompt = run.job, len(run.prompt_ids)
        ids = list(run.prompt_ids)
        text = TextStream(list(job.stop))
        end: dict = {}
        first_token_at = prefill_ms = None
        terminal = None
        try:
            yield sse("started", {"job_id": job.job_id, "model": state.facts.name,
                                  "started_at": datetime.datetime.now(datetime.timezone.utc).isoformat(),
                                  "seed": run.seed, "prompt_tokens": n_prompt, "max_tokens": run.budget,
                                  "n_ctx": state.n_ctx})
            while True:
                step = await until_cancelled(state.upstream.step(ids, job, run.tokens_out, run.seed),
                                             run.cancel_requested)
                if step is None:
                    end["stop_reason"] = "cancelled"
                    break
                piece = step.piece if step.piece is not None else state.vocabulary.piece(step.token_id)
                if first_token_at is None:
                    first_token_at, prefill_ms = time.monotonic(), step.prompt_ms
                if step.eog:
                    end["stop_reason"] = "eos"
                    break
                ids.append(step.token_id)
                piece, stop = text.push(piece)
                last = stop is None and run.tokens_out + 1 == run.budget
                if last:
                    rest, stop = text.finish()
                    piece += rest
                run.tokens_out += 1
                yield sse("token", {"t": piece, "i": run.tokens_out - 1, "id": step.token_id})
                if stop is not None:
                    end.update(stop_reason="stop_sequence", stop_sequence=stop)
                    break
                if last:
                    # the default budget was capped by what the context leaves (docs/http-api.md)
                    capped = job.max_tokens is None and run.budget < DEFAULT_MAX_TOKENS
                    end["stop_reason"] = "context_full" if capped else "max_tokens"
                    break
                if run.tokens_out % METRICS_EVERY == 0:
                    decode_s = max(time.monotonic() - first_token_at, 1e-9)
                    yield sse("metrics", {"tokens_out": run.tokens_out, "decode_time_ms": round(decode_s * 1e3, 3),
                                          "tokens_per_second": round(run.tokens_out / decode_s, 3)})
            if end["stop_reason"] in ("eos", "cancelled"):
                rest, stop = text.finish()
                if stop is not None:
                    end.update(stop_reason="stop_sequence", stop_sequence=stop)
                if rest:
                    end["text"] = rest
            now = time.monotonic()
            decode_start = first_token_at or now
            end = {"tokens_out": run.tokens_out, "decode_time_ms": round((now - decode_start) * 1e3, 3), **end,
                   "prompt_tokens": n_prompt, "prefill_time_ms": round(prefill_ms or 0.0, 3),
                   "time_to_first_token_ms": round((decode_start - run.accepted_at) * 1e3, 3),
                   "total_time_ms": round((now - run.accepted_at) * 1e3, 3)}
            terminal = ("end", end, end["stop_reason"])
        except UpstreamError as exc:
            terminal = ("error", {"code": "INFERENCE_FAILED", "message": str(exc)}, "INFERENCE_FAILED")
        except asyncio.CancelledError:       # the client went away: the job is cancelled
            state.job = None
            state.remember(job.job_id, "cancelled")
            narrate("client_disconnected", run.correlation_id, job_id=job.job_id, tokens_out=run.tokens_out)
            raise
        finally:
            if state.job is run:
                state.job = None             # the slot is free before the terminal event is sent
        state.remember(job.job_id, terminal[2])
        narrate("job_finished", run.correlation_id, job_id=job.job_id, outcome=terminal[2],
                tokens_out=run.tokens_out)
        yield sse(terminal[0], terminal[1])

    async def cancel(request: Request) -> JSONResponse:
        cid = request.scope["correlation_id"]
        try:
            job_id = parse_cancel(parse_json_object(await read_body(request, state.max_body_bytes)))
        except ContractError as err:
            return error_response(err, cid)
        run = state.job
        if run is not None and run.job.job_id == job_id:
            run.cancel_requested.set()
            narrate("job_cancel_requested", cid, job_id=job_id)
            return JSONResponse({"job_id": job_id, "status": "cancelling", "tokens_out": run.tokens_out})
        if job_id in state.finished:
            return JSONResponse({"job_id": job_id, "status": "finished", "outcome": state.finished[job_id]})
        return JSONResponse({"job_id": job_id, "status": "unknown"})

    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        code = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED"}.get(exc.status_code, "INVALID_PARAMS")
        message = f"{request.method} {request.url.path}: " + ("no such endpoint" if exc.status_code == 404
                                                             else "method not allowed")
        return JSONResponse({"code": code, "message": message, "field": None}, status_code=exc.status_code,
                            headers=exc.headers)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        watcher = asyncio.create_task(state.watch_loading())
        yield
        watcher.cancel()
        if state.job is not None:
            state.job.cancel_requested.set()
        await state.upstream.close()
        narrate("shutdown")

    app = Starlette(routes=[Route("/health", health, methods=["GET"]),
                            Route("/execute", execute, methods=["POST"]),
                            Route("/cancel", cancel, methods=["POST"])],
                    exception_handlers={HTTPException: http_error}, lifespan=lifespan)
    return CorrelationId(app)


class CorrelationId:
    """Every answer carries X-Correlation-Id: the client's when it is 1-128 visible ASCII
    characters, else a new one (docs/http-api.md, "Every response")."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        sent = dict(scope["headers"]).get(b"x-correlation-id", b"").decode("latin-1")
        cid = sent if CORRELATION_ID.fullmatch(sent) else uuid.uuid4().hex
        scope["correlation_id"] = cid

        async def send_with_id(message):
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (b"x-correlation-id", cid.encode())]
            await send(message)

        return await self.app(scope, receive, send_with_id)
