"""The generation loop: prompt -> prefill -> sample / decode one token at a time -> events.

    engine = Engine(model, tokenizer, n_ctx=4096)
    for ev in engine.generate("Once upon a time", SamplingParams(max_tokens=16), cancel=threading.Event()):
        Started(seed, prompt_tokens, max_tokens, n_ctx, job_id)     # once, first
        Token(id, text, index)                                      # once per generated token
        End(stop_reason, tokens_out, prompt_tokens, ...)            # once, last

Rules (docs/sampling.md has the full statement):
- Bad input raises before Started (InvalidParamsError / PromptTooLongError, the field named):
  an empty prompt, a prompt of >= n_ctx tokens, or prompt tokens + max_tokens > n_ctx.
  Without max_tokens the job gets DEFAULT_MAX_TOKENS capped by the context, and ends with
  `context_full` when the context is what stopped it.
- After Started every failure ends the stream with End(stop_reason="error", error_code, error).
- Token.text holds whole UTF-8 characters only; a token may carry "" (its bytes wait for the
  next token, or its text is held back because it could be the start of a stop string).
  Every generated token still gets its Token event, so ids and indices are complete.
- Stop sequences are matched on the decoded text, across token boundaries; the stop text and
  anything after it are never emitted. The token that completes a stop string gets a Token
  event carrying the text before the stop string.
- EOS / end-of-turn tokens (tokenizer.eos_ids) end the job and are not emitted.
- End.text: text released only at the end (held-back text that turned out not to be a stop
  string, or U+FFFD for a dangling partial character). Almost always "".
- `cancel` is checked before every token, and during prefill between chunks of
  `backend.prefill_chunk_tokens` prompt tokens (64 on the CPU, 512 on the GPU): a long prompt's
  prefill stops within one chunk. A cancelled job ends with End("cancelled"). The KV cache is
  freed when the job ends, however it ends (also when the consumer closes the generator early).
  Its capacity is what the job needs rounded up to a power-of-two bucket (`cache_capacity`), so
  that jobs of different lengths share the GPU's captured graphs.
- End(stop_reason="error") is the error event: error_code and error say what failed. A
  WorkerError keeps its code (VRAM_OOM, ...); an InvalidParamsError raised after Started is a
  bug of ours, not the client's bad input, and so is INTERNAL; anything else is INFERENCE_FAILED.

`prepare(prompt, params)` runs every input check (tokenizing the prompt) without touching the
model, so a server can refuse a bad request before it claims the model; `run(prepared)` then
generates. `generate(prompt, params)` is the two in one.
"""
from __future__ import annotations

import threading
import time
import traceback
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np

from worker.backend.base import PREFILL_CHUNK  # noqa: F401 (the CPU chunk, named for tests and docs)
from worker.errors import DeviceOOMError, InvalidParamsError, PromptTooLongError, WorkerError
from worker.sampling import DEFAULT_MAX_TOKENS, Sampler, SamplingParams, random_seed

STOP_REASONS = ("max_tokens", "eos", "stop_sequence", "cancelled", "context_full")   # how a job ends well
ERROR_STOP = "error"        # End.stop_reason of a job that failed after Started
DEFAULT_CTX_CAP = 4096      # the engine's context when none is given: the model's, at most this
KV_BUCKET_MIN = 256         # a job's KV cache has at least this many positions (Engine.cache_capacity)


@dataclass(frozen=True)
class Started:
    seed: int
    prompt_tokens: int
    max_tokens: int            # the token budget this job runs with (after capping by the context)
    n_ctx: int
    job_id: str | None = None


@dataclass(frozen=True)
class Token:
    id: int
    text: str
    index: int


@dataclass(frozen=True)
class End:
    stop_reason: str
    tokens_out: int
    prompt_tokens: int
    decode_time_ms: float      # first sampled token to the end
    prefill_time_ms: float
    stop_sequence: str | None = None
    text: str = ""             # text released only at the end (see the module docstring)
    error_code: str | None = None
    error: str | None = None


Event = Started | Token | End


@dataclass(frozen=True)
class Prepared:
    """A job that passed every input check: its prompt ids and token budget."""

    ids: tuple[int, ...]
    params: SamplingParams
    budget: int                # how many tokens the job may generate
    limit_reason: str          # the stop reason when it uses them all


class StopMatcher:
    """Finds stop strings in streamed text and holds back what could still become one.

    push(text) -> (text safe to emit, stop string found or None). Text that ends with a proper
    prefix of some stop string is kept until later text decides; finish() releases it.
    """

    def __init__(self, stops: Sequence[str]):
        self.stops = tuple(stops)
        self.pending = ""

    def push(self, text: str) -> tuple[str, str | None]:
        if not self.stops:
            return text, None
        self.pending += text
        hit = None                                  # (position, stop), earliest position first
        for stop in self.stops:
            pos = self.pending.find(stop)
            if pos >= 0 and (hit is None or pos < hit[0]):
                hit = (pos, stop)
        if hit is not None:
            released, self.pending = self.pending[:hit[0]], ""
            return released, hit[1]
        hold = self._partial_stop_suffix()
        cut = len(self.pending) - hold
        released, self.pending = self.pending[:cut], self.pending[cut:]
        return released, None

    def _partial_stop_suffix(self) -> int:
        """Length of the longest end of `pending` that is a proper prefix of a stop string."""
        best = 0
        for stop in self.stops:
            for k in range(min(len(stop) - 1, len(self.pending)), best, -1):
                if self.pending.endswith(stop[:k]):
                    best = k
                    break
        return best

    def finish(self) -> str:
        released, self.pending = self.pending, ""
        return released


class Engine:
    """Runs one job at a time on one loaded model (the worker serves one job at a time)."""

    def __init__(self, model, tokenizer, n_ctx: int | None = None,
                 default_max_tokens: int = DEFAULT_MAX_TOKENS):
        self.model = model
        self.tokenizer = tokenizer
        model_ctx = int(getattr(model.config, "context_length", 0) or DEFAULT_CTX_CAP)
        self.n_ctx = int(n_ctx) if n_ctx else min(model_ctx, DEFAULT_CTX_CAP)
        if self.n_ctx < 2:
            raise InvalidParamsError(f"context must hold at least 2 tokens, got {self.n_ctx}", field="n_ctx")
        self.default_max_tokens = default_max_tokens
        self.eos_ids = frozenset(int(i) for i in (getattr(tokenizer, "eos_ids", None) or ()))
        if not self.eos_ids and getattr(tokenizer, "eos_id", None) is not None:
            self.eos_ids = frozenset({int(tokenizer.eos_id)})

    # -- input checks (raised before Started) ---------------------------------------------------
    def prompt_ids(self, prompt: str | Sequence[int]) -> list[int]:
        if isinstance(prompt, str):
            if not prompt:
                raise InvalidParamsError("prompt must be a non-empty string", field="prompt")
            ids = list(self.tokenizer.encode(prompt))
        else:
            ids = [int(i) for i in prompt]
        if not ids:
            raise InvalidParamsError("prompt has no tokens", field="prompt")
        vocab = int(getattr(self.tokenizer, "vocab_size", 0) or 0)
        if vocab and any(not 0 <= i < vocab for i in ids):
            raise InvalidParamsError(f"prompt token ids must be in 0..{vocab - 1}", field="prompt")
        return ids

    def token_budget(self, prompt_tokens: int, params: SamplingParams) -> tuple[int, str]:
        """(how many tokens the job may generate, the stop reason when it uses them all)."""
        room = self.n_ctx - prompt_tokens
        if room < 1:
            raise PromptTooLongError(
                f"prompt is {prompt_tokens} tokens; the context is {self.n_ctx} tokens and must leave room "
                f"for at least one generated token", field="prompt")
        if params.max_tokens is not None:
            if params.max_tokens > room:
                raise InvalidParamsError(
                    f"max_tokens={params.max_tokens} with a {prompt_tokens}-token prompt exceeds the "
                    f"{self.n_ctx}-token context (at most {room})", field="max_tokens")
            return params.max_tokens, "max_tokens"
        if self.default_max_tokens <= room:
            return self.default_max_tokens, "max_tokens"
        return room, "context_full"

    def prepare(self, prompt: str | Sequence[int], params: SamplingParams | None = None) -> Prepared:
        """Every input check, before the model is touched (InvalidParamsError / PromptTooLongError)."""
        params = params if params is not None else SamplingParams()
        ids = self.prompt_ids(prompt)
        budget, limit_reason = self.token_budget(len(ids), params)
        return Prepared(tuple(ids), params, budget, limit_reason)

    def cache_capacity(self, needed: int) -> int:
        """Positions of a job's KV cache: `needed` rounded up to a KV_BUCKET_MIN * 2^k bucket, at most the
        context (the engine's, and the model's where it has one), never less than needed. Jobs of
        different lengths then share a capacity, and the CUDA backend's captured graphs, which serve
        caches up to the capacity they were captured for (worker/backend/cuda_graph.py), with it."""
        limit = self.n_ctx
        model_ctx = int(getattr(self.model.config, "context_length", 0) or 0)
        if model_ctx:
            limit = min(limit, model_ctx)
        bucket = KV_BUCKET_MIN
        while bucket < needed:
            bucket *= 2
        return max(needed, min(bucket, limit))

    def new_job_cache(self, needed: int):
        """A job's KV cache of cache_capacity(needed) positions (the bytes reported are the bucket's); when
        the bucket does not fit the device, one of exactly `needed` positions, whose refusal is the job's."""
        capacity = self.cache_capacity(needed)
        if capacity == needed:
            return self.model.new_cache(needed)
        try:
            return self.model.new_cache(capacity)
        except DeviceOOMError:
            return self.model.new_cache(needed)

    # -- the loop --------------------------------------------------------------------------------
    def generate(self, prompt: str | Sequence[int], params: SamplingParams | None = None,
                 cancel: threading.Event | None = None, job_id: str | None = None) -> Iterator[Event]:
        yield from self.run(self.prepare(prompt, params), cancel=cancel, job_id=job_id)

    def run(self, job: Prepared, cancel: threading.Event | None = None, job_id: str | None = None) -> Iterator[Event]:
        cancel = cancel if cancel is not None else threading.Event()
        ids, params, budget, limit_reason = list(job.ids), job.params, job.budget, job.limit_reason
        seed = params.seed if params.seed is not None else random_seed()
        sampler = Sampler(params, seed)
        yield Started(seed=seed, prompt_tokens=len(ids), max_tokens=budget, n_ctx=self.n_ctx, job_id=job_id)

        run = _Run(len(ids))
        backend = self.model.backend
        cache = None
        try:
            if cancel.is_set():
                yield run.end("cancelled")
                return
            # The last generated token is never fed back: the cache needs prompt + budget - 1.
            cache = self.new_job_cache(len(ids) + budget - 1)
            t0 = time.perf_counter()
            prompt = np.asarray(ids, dtype=np.int64)
            chunk = backend.prefill_chunk_tokens
            for start in range(0, len(ids), chunk):
                if start and cancel.is_set():
                    run.prefill_s = time.perf_counter() - t0
                    yield run.end("cancelled")
                    return
                logits = self.model.forward(prompt[start:start + chunk], cache, start)
            row = backend.to_host(logits[-1])
            run.prefill_s = time.perf_counter() - t0
            run.decode_t0 = time.perf_counter()
            history = list(ids)
            decoder = self.tokenizer.stream_decoder()
            stops = StopMatcher(params.stop)
            n_past = len(ids)
            for index in range(budget):
                if cancel.is_set():
                    yield run.end("cancelled", text=_release_rest(decoder, stops))
                    return
                token = sampler.sample(row, history)
                if token in self.eos_ids:
                    yield run.end("eos", text=_release_rest(decoder, stops))
                    return
                last = index + 1 == budget
                piece = decoder.push(token)
                if last:                            # the job ends with this token: nothing waits
                    piece += decoder.flush()
                text, stop = stops.push(piece)
                if last and stop is None:
                    text += stops.finish()
                run.tokens_out += 1
                yield Token(id=token, text=text, index=index)
                if stop is not None:
                    yield run.end("stop_sequence", stop_sequence=stop)
                    return
                if last:
                    yield run.end(limit_reason)
                    return
                history.append(token)
                logits = self.model.forward(np.array([token], dtype=np.int64), cache, n_past)
                n_past += 1
                row = backend.to_host(logits[-1])
        except GeneratorExit:
            raise
        except Exception as exc:  # noqa: BLE001 — after Started, a failure is an End event
            code, message = _failure(exc)
            _narrate_failure(code, message, exc)
            yield run.end(ERROR_STOP, error_code=code, error=message)
        finally:
            if cache is not None:
                backend.free_kv_cache(cache)


class _Run:
    """Counters and clocks of one job, and its End event."""

    def __init__(self, prompt_tokens: int):
        self.prompt_tokens = prompt_tokens
        self.tokens_out = 0
        self.prefill_s = 0.0
        self.decode_t0: float | None = None

    def end(self, stop_reason: str, **extra) -> End:
        decode_s = time.perf_counter() - self.decode_t0 if self.decode_t0 is not None else 0.0
        return End(stop_reason=stop_reason, tokens_out=self.tokens_out, prompt_tokens=self.prompt_tokens,
                   decode_time_ms=round(decode_s * 1000, 3), prefill_time_ms=round(self.prefill_s * 1000, 3),
                   **extra)


def _failure(exc: Exception) -> tuple[str, str]:
    """(code, message) of a failure after Started. The input was checked before Started, so an
    InvalidParamsError now is an internal inconsistency, not the client's fault."""
    if isinstance(exc, InvalidParamsError):
        return "INTERNAL", f"internal error ({exc.code}: {exc.message})"
    if isinstance(exc, WorkerError):
        return exc.code, exc.message
    return "INFERENCE_FAILED", f"{type(exc).__name__}: {exc}"


def _release_rest(decoder, stops: StopMatcher) -> str:
    """At an end other than a stop string: the held-back text and any dangling bytes (as U+FFFD)."""
    text, stop = stops.push(decoder.flush())
    return text if stop is not None else text + stops.finish()


def _narrate_failure(code: str, message: str, exc: BaseException) -> None:
    try:
        from worker.narration import narrate

        narrate("inference_failed", code=code, message=message, error=type(exc).__name__,
                traceback=traceback.format_exc())
    except Exception:  # noqa: BLE001 — logging must never hide the failure itself
        pass
