"""Every error the worker reports carries a stable machine-readable code.

Codes are part of the public contract (HTTP bodies, CLI --json output, SSE `error` events).
Every error class lives here, so that one table documents them all (docs/errors.md).
"""
from __future__ import annotations

import reprlib

# How much of an offending value an error message quotes: a client that sends 800 KB of junk
# gets a short message naming the field, not its junk echoed back (and into the log).
QUOTE_CHARS = 80
_QUOTE = reprlib.Repr()
_QUOTE.maxlevel, _QUOTE.maxstring, _QUOTE.maxlong, _QUOTE.maxother = 3, QUOTE_CHARS, 40, QUOTE_CHARS
_QUOTE.maxtuple = _QUOTE.maxlist = _QUOTE.maxdict = _QUOTE.maxset = _QUOTE.maxfrozenset = 4


def quote(value) -> str:
    """repr(value), cut to a bounded length (nested containers shown 3 levels deep)."""
    text = _QUOTE.repr(value)
    return text if len(text) <= 2 * QUOTE_CHARS else text[:2 * QUOTE_CHARS] + "..."


class WorkerError(Exception):
    """Base error: `code` is stable and machine-readable, `message` names the problem.

    `http_status` is the answer an HTTP request gets when this error refuses it; the base class
    is a bug of ours (INTERNAL, 500), never the client's fault."""

    code = "INTERNAL"
    http_status = 500

    def __init__(self, message: str, *, code: str | None = None, field: str | None = None):
        super().__init__(message)
        if code is not None:
            self.code = code
        self.message = message
        self.field = field

    def to_dict(self) -> dict:
        d = {"code": self.code, "message": self.message}
        if self.field is not None:
            d["field"] = self.field
        return d


class GGUFError(WorkerError):
    """A model file was refused before anything was allocated (codes GGUF_*)."""

    code = "GGUF_INVALID"


class UnsupportedModelError(WorkerError):
    """A well-formed file whose architecture, config or tensor type we do not run."""

    code = "UNSUPPORTED_MODEL"


class InvalidParamsError(WorkerError):
    """A request or sampling parameter out of range; `field` names it."""

    code = "INVALID_PARAMS"
    http_status = 400


class PromptTooLongError(InvalidParamsError):
    code = "PROMPT_TOO_LONG"


class InvalidJSONError(WorkerError):
    """A request body that is not one RFC 8259 JSON text in UTF-8."""

    code = "INVALID_JSON"
    http_status = 400


class BodyTooLargeError(WorkerError):
    code = "BODY_TOO_LARGE"
    http_status = 413


class WorkerBusyError(WorkerError):
    """One job at a time, no queue: a second job is refused while one runs."""

    code = "WORKER_BUSY"
    http_status = 503


class WorkerNotReadyError(WorkerError):
    """The model is still loading (WORKER_LOADING) or the worker is unhealthy (WORKER_UNHEALTHY)."""

    code = "WORKER_LOADING"
    http_status = 503


class CudaUnavailableError(WorkerError):
    """CuPy, the driver or the requested device is missing (codes CUDA_UNAVAILABLE, CUDA_DEVICE_NOT_FOUND)."""

    code = "CUDA_UNAVAILABLE"


class TokenizerJSONError(WorkerError):
    """A tokenizer.json that is missing, not UTF-8, not JSON, or refused by the tokenizers library."""

    code = "TOKENIZER_JSON_INVALID"


class DeviceOOMError(WorkerError):
    """Device memory does not suffice (model at start-up, or a request's KV cache)."""

    code = "VRAM_OOM"

    def __init__(self, message: str, *, required_bytes: int, available_bytes: int, device: str):
        super().__init__(message)
        self.required_bytes = required_bytes
        self.available_bytes = available_bytes
        self.device = device


class StartupError(WorkerError):
    """`serve` refused to start: the code, the message, the exit status and narration fields."""

    def __init__(self, code: str, message: str, exit_status: int, **fields):
        super().__init__(message, code=code)
        self.exit_status = exit_status
        self.fields = fields
