"""Sub-commands of `python -m worker`: each module here defines register(subparsers).

register() adds its parser and sets `func=run` (run(args) -> int exit status). Modules import
their heavy dependencies inside run(), so `python -m worker --help` stays fast. Every command
reports a refusal the same way, through `run_guarded` / `report_failure`: `error CODE: message`
on stderr (with --json, also `{"error": {"code", "message"}}` on stdout), never a traceback.
"""
from __future__ import annotations

import json
import sys
from typing import Callable

EXIT_INVALID = 2      # bad input (a WorkerError): its code says why
EXIT_FAILED = 1       # a failure of ours, or a job that ended in an error


def report_failure(args, code: str, message: str, status: int, field: str | None = None, **json_fields) -> int:
    if getattr(args, "json", False):
        error = {"code": code, "message": message, **({"field": field} if field else {})}
        print(json.dumps({**json_fields, "error": error}))
    print(f"error {code}: {message}", file=sys.stderr)
    return status


def run_guarded(args, body: Callable[[], int], **json_fields) -> int:
    """body() -> exit status. A WorkerError is bad input (exit 2); any other exception is a bug of
    ours, still reported without a traceback (exit 1, code INTERNAL). `json_fields` join the JSON."""
    from worker.errors import WorkerError

    try:
        return body()
    except WorkerError as e:
        return report_failure(args, e.code, e.message, EXIT_INVALID, e.field, **json_fields)
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # noqa: BLE001 - reported, not raised: the command's contract
        return report_failure(args, "INTERNAL", f"{type(e).__name__}: {e}", EXIT_FAILED, **json_fields)
