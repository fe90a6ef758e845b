"""Sharing one GPU between pytest-xdist workers: a readers-writer lock across processes.

Most tests that use the device under test only need it to themselves in the sense that their results must not
depend on what else runs: kernel checks, models against their references. They may run on several workers at once
(shared). A few measure the whole device (its free memory, before and after; filling it to the cap) or its speed,
and another worker's allocations in the middle would falsify them: they run alone (exclusive), every other test
that uses the device waits, and they wait until the shared ones in progress are done.

The lock is two files, named by the xdist run's id, in a folder the workers share (the plugin takes the parent of
their temporary folders, the system's temporary folder by default), locked with flock(2):
`room` (shared by the shared tests, exclusive for an exclusive one) and `turnstile`, which an exclusive test holds
while it waits for the room and runs, so that shared tests arriving after it queue behind it instead of keeping the
room busy forever (writer preference). flock locks go with the process: a worker that dies frees them.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from pathlib import Path

SHARED, EXCLUSIVE = "shared", "exclusive"


def lock_paths(run_id: str, folder: str | None = None) -> tuple[Path, Path]:
    """(turnstile, room) of one test run."""
    base = Path(folder or tempfile.gettempdir()) / f"m0-device-{run_id}"
    return base.with_suffix(".turnstile"), base.with_suffix(".room")


@contextlib.contextmanager
def _locked(path: Path, operation: int):
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, operation)
        yield
    finally:
        os.close(fd)                      # closing the descriptor releases its lock


@contextlib.contextmanager
def device_lock(run_id: str, kind: str, folder: str | None = None):
    """Hold the device shared or exclusive (see the module docstring) for the block."""
    if kind not in (SHARED, EXCLUSIVE):
        raise ValueError(f"device lock kind {kind!r}: {SHARED!r} or {EXCLUSIVE!r}")
    turnstile, room = lock_paths(run_id, folder)
    if kind == EXCLUSIVE:
        with _locked(turnstile, fcntl.LOCK_EX), _locked(room, fcntl.LOCK_EX):
            yield
        return
    fd = os.open(room, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        with _locked(turnstile, fcntl.LOCK_EX):   # passes at once unless an exclusive test holds or waits for it
            fcntl.flock(fd, fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)
