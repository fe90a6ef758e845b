"""The CUDA conformance table (reports/cuda_conformance.json) when pytest-xdist workers record at
once: each worker keeps its own part, and the table is every part of the run merged (shapes and
failures summed, the worst NMSE kept), written under a lock (one shared temporary file renamed by
each worker lost rows and failed checks on the GPU machine)."""
from __future__ import annotations

import json
import multiprocessing

import pytest

from stories.foundation import _cuda_conformance as conformance

pytestmark = pytest.mark.story("FT-023")


def _worker(path: str, run: str, name: str, records: list) -> None:
    import os

    os.environ["PYTEST_XDIST_TESTRUNUID"], os.environ["PYTEST_XDIST_WORKER"] = run, name
    conformance.RESULTS_PATH = type(conformance.RESULTS_PATH)(path)
    conformance._table.clear()
    conformance._device_name = lambda: "test device"
    for op, value in records:
        conformance.record(op, f"{name} {value}", value, threshold=1e-6)


def test_workers_recording_at_once_leave_one_merged_table(tmp_path):
    path = tmp_path / "cuda_conformance.json"
    work = {"gw0": [("matmul", 1e-9)] * 40 + [("rope", 2e-7)],
            "gw1": [("matmul", 3e-9)] * 40 + [("rope", float("nan"))],
            "gw2": [("attention", 5e-6)] + [("matmul", 2e-9)] * 40}
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_worker, args=(str(path), "run-a", name, recs)) for name, recs in work.items()]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    rows = {r["op"]: r for r in json.loads(path.read_text())["rows"]}
    assert rows["matmul"]["shapes_tried"] == 120 and rows["matmul"]["failures"] == 0
    assert rows["matmul"]["worst_nmse"] == 3e-9 and rows["matmul"]["worst_shape"] == "gw1 3e-09"
    assert rows["rope"]["shapes_tried"] == 2 and rows["rope"]["failures"] == 1 and rows["rope"]["worst_nmse"] == "nan"
    assert rows["attention"]["failures"] == 1


def test_a_later_run_starts_a_table_of_its_own(tmp_path):
    path = tmp_path / "cuda_conformance.json"
    ctx = multiprocessing.get_context("fork")
    for run, value in (("run-a", 1e-9), ("run-b", 2e-9)):
        p = ctx.Process(target=_worker, args=(str(path), run, "gw0", [("matmul", value)]))
        p.start()
        p.join(60)
        assert p.exitcode == 0
    rows = json.loads(path.read_text())["rows"]
    assert [(r["op"], r["shapes_tried"], r["worst_nmse"]) for r in rows] == [("matmul", 1, 2e-9)]
