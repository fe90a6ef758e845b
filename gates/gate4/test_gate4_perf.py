"""Gate 4 — G4-PERF-BASELINE: the performance baseline is recorded on the GPU beside a peer.

benchmarks/baseline.py --device cuda on SmolLM2-135M-Instruct (or --model) writes
reports/perf-baseline-gpu.json: worker (CUDA backend, over HTTP) beside eager torch float16 on the
same GPU; the report must be complete and well formed. Skipped with a reason without a GPU (the
CPU report of the same shape is checked under FT-040). Never checks how fast anything was.
"""
import pytest

from fixtures.paths import REPO_ROOT
from fixtures.perf_baseline import assert_complete_report, run_baseline

PROMPT, DECODE, REPEATS = 64, 32, 3


@pytest.mark.gpu
@pytest.mark.story("FT-040")
@pytest.mark.gate_check("G4-PERF-BASELINE")
def test_performance_baseline_is_recorded_on_the_gpu(model_path):
    out = REPO_ROOT / "reports" / "perf-baseline-gpu.json"
    report, proc = run_baseline(model_path, "cuda", out, ["--prompt-tokens", str(PROMPT), "--decode-tokens",
                                                          str(DECODE), "--repeats", str(REPEATS)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_complete_report(report, model_path, "cuda", PROMPT, DECODE, REPEATS)
    assert report["ours"]["device"].startswith("cuda") and report["peer"]["device"] == "cuda"
