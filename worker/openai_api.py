"""An OpenAI-compatible API on the worker's one engine: the routes real clients already speak.

    GET  /v1/models              the one model served
    POST /v1/completions         prompt -> text (streamed as `data: {chunk}` lines, then `data: [DONE]`)
    POST /v1/chat/completions    messages -> the model's chat template -> reply

Same engine, same validation and busy rules as /execute (worker/jobs.py `admit`): a bad request
gets 400 even while a job runs, a good one gets 503 WORKER_BUSY (Retry-After) while one runs.
Errors have OpenAI's shape, {"error": {"message", "type", "param", "code"}}, with the worker's
code (docs/errors.md) as `code`. Field semantics follow OpenAI's API reference
(platform.openai.com/docs/api-reference/completions, /chat); what differs is in docs/http-api.md:
n, best_of, echo, logprobs, logit_bias and the two penalties are accepted only at their neutral
values; top_k, min_p, repetition_penalty and repeat_last_n are accepted as extensions (as
llama.cpp's server does); without max_tokens the engine's default applies.

Each request's job id is its response id (`cmpl-…` / `chatcmpl-…`), so POST /cancel works on it;
closing a stream cancels the job as it does for /execute.
"""
from __future__ import annotations

import asyncio
import json
import os
import time
import uuid

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from worker import api_schema
from worker.engine import ERROR_STOP, End, Token
from worker.errors import InvalidParamsError, WorkerError, quote
from worker.jobs import WorkerState, admit, check_object, read_json, start
from worker.narration import narrate
from worker.sampling import SamplingParams

# OpenAI's finish_reason: "stop" (a natural end or a stop sequence), "length" (the token limit).
# A cancelled job (POST /cancel) has no OpenAI spelling; it is reported as "cancelled".
FINISH_REASONS = {"eos": "stop", "stop_sequence": "stop", "max_tokens": "length", "context_full": "length",
                  "cancelled": "cancelled"}
EXTENSIONS = ("top_k", "min_p", "repetition_penalty", "repeat_last_n")
COMMON_FIELDS = ("model", "max_tokens", "temperature", "top_p", "stop", "seed", "stream", "stream_options", "n",
                 "presence_penalty", "frequency_penalty", "logit_bias", "user") + EXTENSIONS
COMPLETION_FIELDS = COMMON_FIELDS + ("prompt", "echo", "logprobs", "best_of")
CHAT_FIELDS = COMMON_FIELDS + ("messages", "max_completion_tokens", "logprobs")
# Accepted only at the value that changes nothing (the worker samples one sequence, no logprobs).
NEUTRAL = {"n": (1,), "best_of": (1,), "presence_penalty": (0,), "frequency_penalty": (0,), "echo": (False,),
           "logit_bias": ({},)}
LOGPROBS_OFF = {False: 0, True: False}      # chat: logprobs is a flag; completions: a count
CHAT_ROLES = ("system", "user", "assistant")
ERROR_TYPES = {400: "invalid_request_error", 413: "invalid_request_error", 503: "server_error",
               500: "server_error"}


def openai_error(status: int, code: str, message: str, param: str | None = None, headers=None) -> JSONResponse:
    narrate("request_rejected", status=status, code=code, field=param, message=message)
    body = {"error": {"message": message, "type": ERROR_TYPES.get(status, "server_error"), "param": param,
                      "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


def openai_refusal(exc: WorkerError) -> JSONResponse:
    headers = {"Retry-After": "1"} if exc.http_status == 503 else None
    return openai_error(exc.http_status, exc.code, exc.message, exc.field, headers=headers)


# -- request parsing ---------------------------------------------------------------------------

def _neutral(body: dict, name: str) -> None:
    value = body.get(name)
    if value is None or any(value == v and isinstance(value, bool) == isinstance(v, bool) for v in NEUTRAL[name]):
        return
    raise InvalidParamsError(f"{name} is supported only as {json.dumps(NEUTRAL[name][0])} (or null), "
                             f"got {quote(value)}", field=name)


def _flag(body: dict, name: str) -> bool:
    value = body.get(name)
    if value is not None and not isinstance(value, bool):
        raise InvalidParamsError(f"{name} must be true or false, got {quote(value)}", field=name)
    return bool(value)


def _common(body: dict, accepted: tuple[str, ...]) -> tuple[SamplingParams, bool, bool]:
    """(sampling parameters, stream, include_usage) from the fields both endpoints share."""
    check_object(body, accepted)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidParamsError(f"model must be a non-empty string, got {quote(model)}", field="model")
    for name in NEUTRAL:
        if name in accepted:
            _neutral(body, name)
    logprobs, off = body.get("logprobs"), LOGPROBS_OFF["messages" in accepted]
    if logprobs is not None and not (logprobs == off and isinstance(logprobs, bool) == isinstance(off, bool)):
        raise InvalidParamsError(f"logprobs is supported only as {json.dumps(off)} (or null), got {quote(logprobs)}",
                                 field="logprobs")
    user = body.get("user")
    if user is not None and not isinstance(user, str):
        raise InvalidParamsError(f"user must be a string, got {quote(user)}", field="user")
    stream = _flag(body, "stream")
    options = body.get("stream_options")
    include_usage = False
    if options is not None:
        if not stream:
            raise InvalidParamsError("stream_options is only allowed when stream is true", field="stream_options")
        if not isinstance(options, dict) or set(options) - {"include_usage"}:
            raise InvalidParamsError("stream_options must be {\"include_usage\": true|false}", field="stream_options")
        include_usage = options.get("include_usage")
        if include_usage is not None and not isinstance(include_usage, bool):
            raise InvalidParamsError("stream_options.include_usage must be true or false", field="stream_options")
        include_usage = bool(include_usage)
    sampling = {name: body.get(name) for name in ("max_tokens", "temperature", "top_p", "seed") + EXTENSIONS}
    stop = body.get("stop")
    sampling["stop"] = [stop] if isinstance(stop, str) else stop
    return SamplingParams.from_dict(sampling), stream, include_usage


def parse_completion(body) -> tuple[str, SamplingParams, bool, bool]:
    params, stream, include_usage = _common(body, COMPLETION_FIELDS)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if not isinstance(prompt, str) or not prompt:
        raise InvalidParamsError("prompt must be a non-empty string (or a list of exactly one; one prompt per "
                                 f"request), got {quote(body.get('prompt'))}", field="prompt")
    return prompt, params, stream, include_usage


def parse_chat(body, tokenizer) -> tuple[str, SamplingParams, bool, bool]:
    if isinstance(body, dict) and body.get("max_completion_tokens") is not None:
        if body.get("max_tokens") not in (None, body["max_completion_tokens"]):
            raise InvalidParamsError("max_tokens and max_completion_tokens differ; give one", field="max_tokens")
        body = {**body, "max_tokens": body["max_completion_tokens"]}
        del body["max_completion_tokens"]
    params, stream, include_usage = _common(body, CHAT_FIELDS)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidParamsError("messages must be a non-empty list of {role, content}", field="messages")
    plain = [_message(m, n) for n, m in enumerate(messages)]
    return tokenizer.apply_chat_template(plain, add_generation_prompt=True), params, stream, include_usage


def _message(message, n: int) -> dict:
    where = f"messages[{n}]"
    if not isinstance(message, dict) or set(message) - {"role", "content", "name"}:
        raise InvalidParamsError(f"{where} must be an object with role and content (and optionally name)",
                                 field="messages")
    role, content = message.get("role"), message.get("content")
    if role not in CHAT_ROLES:
        raise InvalidParamsError(f"{where}.role must be one of {', '.join(CHAT_ROLES)}, got {quote(role)}",
                                 field="messages")
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text" and set(p) == {"type", "text"}
                                         and isinstance(p["text"], str) for p in content):
        content = "".join(p["text"] for p in content)
    if not isinstance(content, str):
        raise InvalidParamsError(f"{where}.content must be a string or a list of text parts, got {quote(content)}",
                                 field="messages")
    if message.get("name") is not None and not isinstance(message["name"], str):
        raise InvalidParamsError(f"{where}.name must be a string", field="messages")
    return {"role": role, "content": content}


# -- answers -----------------------------------------------------------------------------------

class Answer:
    """Builds the JSON objects of one completion, plain (`object`) or chat (`chat`)."""

    def __init__(self, chat: bool, model: str):
        self.chat = chat
        self.id = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.model = model
        self.object = "chat.completion" if chat else "text_completion"

    def _envelope(self, obj: str, choices: list, usage: dict | None = None) -> dict:
        out = {"id": self.id, "object": obj, "created": self.created, "model": self.model, "system_fingerprint": None,
               "choices": choices}
        if usage is not None:
            out["usage"] = usage
        return out

    def whole(self, text: str, finish_reason: str, usage: dict) -> dict:
        if self.chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish_reason,
                      "logprobs": None}
        else:
            choice = {"index": 0, "text": text, "finish_reason": finish_reason, "logprobs": None}
        return self._envelope(self.object, [choice], usage)

    def chunk(self, text: str | None, finish_reason: str | None = None, role: bool = False) -> dict:
        if self.chat:
            delta = {"role": "assistant", "content": ""} if role else ({"content": text} if text else {})
            choice = {"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}
            return self._envelope("chat.completion.chunk", [choice])
        return self._envelope("text_completion", [{"index": 0, "text": text or "", "finish_reason": finish_reason,
                                                   "logprobs": None}])

    def usage_chunk(self, usage: dict) -> dict:
        return self._envelope("chat.completion.chunk" if self.chat else "text_completion", [], usage)


def usage(end: End) -> dict:
    return {"prompt_tokens": end.prompt_tokens, "completion_tokens": end.tokens_out,
            "total_tokens": end.prompt_tokens + end.tokens_out}


def _data(obj) -> bytes:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n".encode("utf-8")


class StreamChunks:
    """The engine's events as OpenAI stream chunks (`data: {...}` lines, then `data: [DONE]`)."""

    def __init__(self, answer: Answer, include_usage: bool):
        self.answer, self.include_usage = answer, include_usage

    def __call__(self, event, at: float) -> bytes:
        if isinstance(event, Token):
            return _data(self.answer.chunk(event.text)) if event.text else b""
        if not isinstance(event, End):            # Started
            return _data(self.answer.chunk(None, role=True)) if self.answer.chat else b""
        if event.stop_reason == ERROR_STOP:       # the headers are sent: the error is a chunk of its own
            error = {"message": event.error or "the job failed", "type": "server_error", "param": None,
                     "code": event.error_code or "INTERNAL"}
            return _data({"error": error}) + b"data: [DONE]\n\n"
        out = _data(self.answer.chunk(event.text or None, FINISH_REASONS[event.stop_reason]))
        if self.include_usage:
            out += _data(self.answer.usage_chunk(usage(event)))
        return out + b"data: [DONE]\n\n"


# -- routes ------------------------------------------------------------------------------------

async def _collect(queue) -> tuple[list[str], End]:
    text = []
    while True:
        event, _ = await queue.get()
        if isinstance(event, Token):
            text.append(event.text)
        elif isinstance(event, End):
            return text, event


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


def add_openai_routes(app: FastAPI, state: WorkerState, *, max_body_bytes: int) -> None:
    from worker.server import EventStreamResponse, relay

    def model_id() -> str:
        return str(state.info.get("name") or os.path.basename(state.model_path))

    @app.get("/v1/models", summary="The one model this worker serves (OpenAI's list shape)")
    async def models() -> Response:
        created = int(os.path.getmtime(state.model_path)) if os.path.exists(state.model_path) else 0
        return JSONResponse({"object": "list", "data": [{"id": model_id(), "object": "model", "created": created,
                                                         "owned_by": "worker"}]})

    async def complete(request: Request, chat: bool) -> Response:
        try:
            body = await read_json(request, max_body_bytes)
            state.require_ready()
            prompt, params, stream, include_usage = (parse_chat(body, state.tokenizer) if chat
                                                     else parse_completion(body))
            answer = Answer(chat, model_id())
            job = await admit(state, answer.id, prompt, params)
        except WorkerError as exc:
            return openai_refusal(exc)
        queue = start(state, job)
        if stream:
            return EventStreamResponse(relay(job, queue, StreamChunks(answer, include_usage)))
        return await _whole(request, job, queue, answer)

    async def _whole(request: Request, job, queue, answer: Answer) -> Response:
        """Wait for the end; a client that goes away meanwhile cancels the job."""
        collect = asyncio.ensure_future(_collect(queue))
        gone = asyncio.ensure_future(_disconnected(request))
        try:
            await asyncio.wait({collect, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not collect.done():
                job.cancel.set()
                narrate("client_disconnected", job_id=job.job_id, tokens_out=job.tokens_out)
            gone.cancel()
        text, event = await collect
        if event.stop_reason == ERROR_STOP:
            return openai_error(500, event.error_code or "INTERNAL", event.error or "the job failed")
        text.append(event.text)
        return JSONResponse(answer.whole("".join(text), FINISH_REASONS[event.stop_reason], usage(event)))

    @app.post("/v1/completions", **api_schema.openai_route("Complete a prompt (OpenAI completions API)", True))
    async def completions(request: Request) -> Response:
        return await complete(request, chat=False)

    @app.post("/v1/chat/completions", **api_schema.openai_route("Reply to messages with the model's chat "
                                                                   "template (OpenAI chat completions API)", True))
    async def chat_completions(request: Request) -> Response:
        return await complete(request, chat=True)
