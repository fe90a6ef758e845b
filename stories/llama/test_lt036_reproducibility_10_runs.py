"""LT-036 Reproducibility tests, 10 runs: the reproducibility run (`python -m worker repro`)
generates a fixed prompt with 10 seeds, twice each, every run in its own process, and reports.

Acceptance:
- 20 separate `python -m worker generate --json` processes (10 seeds x 2) at temperature 1;
- for every seed the two processes produce identical token ids (same SHA-256 of the ids);
- different seeds produce different continuations;
- the report (JSON) names model, device, prompt, parameters and, per seed, the ids' hashes and
  whether they match. The tiny-model run writes reports/reproducibility-tiny.json; the run on
  the real SmolLM2 (slow on the CPU reference) writes reports/reproducibility.json.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from worker.repro import ids_digest, run_reproducibility, write_report

pytestmark = pytest.mark.story("LT-036")

REPORTS = Path(__file__).resolve().parents[2] / "reports"


def check_report(report: dict, seeds: int = 10) -> None:
    assert report["seeds_count"] == seeds and report["runs_per_seed"] == 2
    assert report["processes"] == 2 * seeds
    pids = [r["pid"] for s in report["seeds"] for r in s["runs"]]
    assert len(set(pids)) == len(pids), "runs shared a process"
    errors = [r["error"] for s in report["seeds"] for r in s["runs"] if "error" in r]
    assert not errors, errors
    for s in report["seeds"]:
        assert len(s["ids"]) == report["params"]["max_tokens"] or s["runs"][0]["stop_reason"] == "eos"
        assert s["runs"][0]["ids_sha256"] == ids_digest(s["ids"])
    mismatched = [s["seed"] for s in report["seeds"] if not s["identical"]]
    assert not mismatched, f"seeds whose two processes generated different ids: {mismatched}"
    assert report["different_seeds_differ"], "all seeds generated the same ids"
    assert report["passed"]


def test_tiny_model_10_seeds_twice_each_in_separate_processes(device, record_model):
    from fixtures.tiny_models import tiny_model_path

    path = tiny_model_path("qwen2")
    record_model(path)
    report = run_reproducibility(str(path), device=device, jobs=2)
    write_report(report, REPORTS / "reproducibility-tiny.json")
    check_report(report)
    assert report["all_seeds_distinct"]


@pytest.mark.slow
@pytest.mark.needs_model("smollm2")
def test_real_smollm2_10_seeds_twice_each_in_separate_processes(device, model_path):
    report = run_reproducibility(str(model_path), device=device, jobs=1)
    write_report(report, REPORTS / "reproducibility.json")
    check_report(report)


def test_repro_command_writes_its_report_and_exit_status(tmp_path, record_model):
    """The CLI end to end, small: 2 seeds x 2 runs, 4 tokens."""
    import subprocess
    import sys

    from fixtures.tiny_models import tiny_model_path

    path = tiny_model_path("qwen2")
    record_model(path)
    out = tmp_path / "repro.json"
    proc = subprocess.run([sys.executable, "-m", "worker", "repro", "--model", str(path), "--seeds", "2",
                           "--max-tokens", "4", "--jobs", "2", "--out", str(out)],
                          capture_output=True, text=True, timeout=600, cwd=Path(__file__).resolve().parents[2])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(out.read_text())
    check_report(report, seeds=2)
    assert "PASS" in proc.stdout
