"""The OpenAPI description of the worker's HTTP API (served at GET /openapi.json).

The handlers validate bodies themselves (worker/jobs.py, worker/sampling.py), because every
refusal must carry the worker's own code and field (docs/errors.md) rather than a framework's;
these pydantic models only describe the same rules for the schema, so that clients and API
fuzzers (schemathesis, in stories/foundation/test_ft037_api_documentation.py) know the shapes.
"""
from __future__ import annotations

from typing import Literal, Union

from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import models_json_schema

from worker.jobs import MAX_JOB_ID_CHARS
from worker.sampling import MAX_STOP_CHARS, MAX_STOP_SEQUENCES, U64_MAX

Stop = list[str]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SamplingFields(_Strict):
    max_tokens: int | None = Field(None, ge=1, description="tokens to generate; prompt + max_tokens <= context")
    temperature: float | None = Field(None, ge=0.0, le=2.0, description="0 = greedy; default 1.0")
    top_p: float | None = Field(None, gt=0.0, le=1.0, description="nucleus mass; 1 = off")
    top_k: int | None = Field(None, ge=0, description="0 = off")
    min_p: float | None = Field(None, ge=0.0, lt=1.0, description="0 = off")
    repetition_penalty: float | None = Field(None, gt=0.0, description="llama.cpp semantics; 1 = off")
    repeat_last_n: int | None = Field(None, ge=-1, description="penalty window; -1 = all, 0 = off")
    seed: int | None = Field(None, ge=0, le=U64_MAX, description="default: chosen and reported in `started`")


class ExecuteRequest(SamplingFields):
    job_id: str = Field(min_length=1, max_length=MAX_JOB_ID_CHARS)
    prompt: str = Field(min_length=1, description="raw text; no chat template is applied")
    stop: list[str] | None = Field(None, max_length=MAX_STOP_SEQUENCES,
                                   description=f"each 1-{MAX_STOP_CHARS} characters")


class CancelRequest(_Strict):
    job_id: str = Field(min_length=1, max_length=MAX_JOB_ID_CHARS)


class ErrorBody(BaseModel):
    code: str
    message: str
    field: str | None


class CancelAnswer(BaseModel):
    job_id: str
    status: Literal["cancelling", "finished", "unknown"]
    tokens_out: int | None = None
    outcome: str | None = None


class StreamOptions(_Strict):
    include_usage: bool | None = None


class _OpenAIFields(SamplingFields):
    model: str = Field(min_length=1, description="any name: the worker serves one model (GET /v1/models)")
    stop: Union[str, list[str], None] = Field(None, description=f"at most {MAX_STOP_SEQUENCES}")
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    n: Literal[1] | None = None
    presence_penalty: Literal[0] | None = None
    frequency_penalty: Literal[0] | None = None
    logit_bias: dict[str, float] | None = Field(None, max_length=0)
    user: str | None = None


class CompletionRequest(_OpenAIFields):
    prompt: Union[str, list[str]] = Field(description="one prompt (a list must hold exactly one string)")
    echo: Literal[False] | None = None
    logprobs: Literal[0] | None = None
    best_of: Literal[1] | None = None


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class ChatMessage(_Strict):
    role: Literal["system", "user", "assistant"]
    content: Union[str, list[TextPart]]
    name: str | None = None


class ChatCompletionRequest(_OpenAIFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: Literal[False] | None = None


class OpenAIErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str


class OpenAIError(BaseModel):
    error: OpenAIErrorDetail


REQUEST_MODELS = {"/execute": ExecuteRequest, "/cancel": CancelRequest, "/v1/completions": CompletionRequest,
                  "/v1/chat/completions": ChatCompletionRequest}
SSE = {"text/event-stream": {"schema": {"type": "string"}}}


def _errors(model, *statuses: int) -> dict:
    names = {400: "invalid request", 413: "body too large", 503: "loading, unhealthy or busy (Retry-After)",
             500: "internal error"}
    return {s: {"model": model, "description": names[s]} for s in statuses}


def execute_route() -> dict:
    return {"summary": "Run one job; its tokens stream as Server-Sent Events",
            "responses": {200: {"description": "started, token*, metrics*, end | error", "content": SSE},
                          **_errors(ErrorBody, 400, 413, 503)}}


def cancel_route() -> dict:
    return {"summary": "Cancel a job by id (idempotent)", "response_model": CancelAnswer,
            "responses": _errors(ErrorBody, 400, 413)}


def health_route() -> dict:
    return {"summary": "Status, model facts, memory, residency, load progress, running job",
            "responses": {503: {"description": "loading or unhealthy (same body)"}}}


def openai_route(summary: str, streams: bool) -> dict:
    ok = {"description": "the completion (JSON), or chunks as Server-Sent Events when stream is true"}
    if streams:
        ok["content"] = {"application/json": {"schema": {"type": "object"}}, **SSE}
    return {"summary": summary, "responses": {200: ok, **_errors(OpenAIError, 400, 413, 500, 503)}}


def openapi(app) -> dict:
    """FastAPI's schema of the routes, plus the request bodies the handlers parse themselves."""
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    _, defs = models_json_schema([(m, "validation") for m in REQUEST_MODELS.values()],
                                 ref_template="#/components/schemas/{model}")
    schema.setdefault("components", {}).setdefault("schemas", {}).update(defs.get("$defs", {}))
    for path, model in REQUEST_MODELS.items():
        operation = schema["paths"][path]["post"]
        operation["requestBody"] = {"required": True, "content": {"application/json": {
            "schema": {"$ref": f"#/components/schemas/{model.__name__}"}}}}
    app.openapi_schema = schema
    return schema
