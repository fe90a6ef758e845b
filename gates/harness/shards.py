"""Splitting one gate run into N shards that run as separate pytest sessions (one per GPU, or one per
device call), so that a run longer than one call can still give one board (gates/harness/run_results.py
merges the shards' result files).

The split is a pure function of the collection: every shard collects the same items and keeps its own.
A test module stays in one shard (its module-scoped fixtures are built once), unless it alone holds more
device tests than a shard's fair share: then it is cut into contiguous runs of tests. The tests that use
the device under test share one device (some run alone on it: plugin.runs_alone), so they are the run's
critical path: they are balanced first, the other tests second.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

# pytest-xdist's --dist loadgroup appends "@<group>" to the node id of a grouped test (xdist/remote.py);
# the board and the results files name tests by their plain pytest node id, with or without workers.
DEVICE_GROUP = "device"
_GROUP_SUFFIX = re.compile(r"[\w.-]+")


def plain_nodeid(nodeid: str) -> str:
    """The node id without an xdist group suffix ("...::test_x[a]@device" -> "...::test_x[a]"); an "@" inside a
    parameter id ("test[user@host]") is not one."""
    head, at, tail = nodeid.rpartition("@")
    return head if at and "::" in head and _GROUP_SUFFIX.fullmatch(tail) else nodeid


@dataclass(frozen=True)
class Shard:
    index: int      # 1-based
    count: int

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    @property
    def tag(self) -> str:
        return f"shard-{self.index}-of-{self.count}"


def parse_shard(text: str) -> Shard:
    """'I/N' with 1 <= I <= N -> Shard; anything else is a ValueError that says what is expected."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text or "")
    if not match:
        raise ValueError(f"shard {text!r}: expected I/N, e.g. 1/2")
    index, count = int(match[1]), int(match[2])
    if not 1 <= index <= count:
        raise ValueError(f"shard {text!r}: I must be between 1 and N")
    return Shard(index, count)


@dataclass
class _Unit:
    name: str
    nodeids: list[str]
    device: int
    other: int


def _units(tests: list[tuple[str, bool]], count: int) -> list[_Unit]:
    """Test modules in collection order; a module with more device tests than a shard's fair share is cut
    into contiguous pieces of at most that share."""
    modules: dict[str, list[tuple[str, bool]]] = {}
    for nodeid, uses_device in tests:
        modules.setdefault(nodeid.split("::")[0], []).append((nodeid, uses_device))
    share = max(1, math.ceil(sum(d for _, d in tests) / count))
    units = []
    for module, members in modules.items():
        piece: list[tuple[str, bool]] = []
        pieces, device_in_piece = [], 0
        for member in members:
            if member[1] and device_in_piece == share:
                pieces.append(piece)
                piece, device_in_piece = [], 0
            piece.append(member)
            device_in_piece += member[1]
        pieces.append(piece)
        for n, piece in enumerate(pieces):
            device = sum(d for _, d in piece)
            units.append(_Unit(f"{module}#{n:05d}", [t for t, _ in piece], device, len(piece) - device))
    return units


def assign_shards(tests: list[tuple[str, bool]], count: int) -> dict[str, int]:
    """(node id, uses the device) in collection order -> node id -> its shard (1..count).

    Longest-processing-time-first packing: the pieces with the most device tests go first, each to the
    shard with the fewest device tests so far; pieces without device tests go to the shard with the
    fewest other tests. Ties break by name and shard number, so the answer depends on the collection only."""
    device_load, other_load = [0] * count, [0] * count
    shard_of: dict[str, int] = {}
    units = sorted(_units(tests, count), key=lambda u: (-u.device, -u.other, u.name))
    for unit in units:
        if unit.device:
            best = min(range(count), key=lambda s: (device_load[s], other_load[s], s))
        else:
            best = min(range(count), key=lambda s: (other_load[s], device_load[s], s))
        device_load[best] += unit.device
        other_load[best] += unit.other
        for nodeid in unit.nodeids:
            shard_of[nodeid] = best + 1
    return shard_of
