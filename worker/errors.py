"""Every error the worker reports carries a stable machine-readable code.

Codes are part of the public contract (HTTP bodies, CLI --json output, SSE `error` events).
Subsystems define their codes here so that one table documents them all.
"""
from __future__ import annotations


class WorkerError(Exception):
    """Base error: `code` is stable and machine-readable, `message` names the problem."""

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


class DeviceOOMError(WorkerError):
    """Device memory does not suffice (model at start-up, or a request's KV cache)."""

    code = "VRAM_OOM"

    def __init__(self, message: str, *, required_bytes: int, available_bytes: int, device: str):
        super().__init__(message)
        self.required_bytes = required_bytes
        self.available_bytes = available_bytes
        self.device = device
