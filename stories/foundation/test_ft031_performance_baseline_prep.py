"""FT-031 performance baseline prep: the baseline harness (benchmarks/baseline.py) is ready to record.

Acceptance:
- run on a model file it writes a JSON report with load time, first-token latency, prefill and
  decode tokens/s for the worker and for a peer measured in the same run (transformers on CPU),
  ratios ours / peer, the device, model file, prompt length and repetitions (checked on a tiny
  qwen2 fixture; the prompt has the recorded length under transformers' tokenizer);
- a missing model file is a clear error (exit 2, one line, no traceback) and writes no report.
No check looks at how fast anything was.
"""
import pytest

from fixtures.perf_baseline import assert_complete_report, run_baseline

pytestmark = pytest.mark.story("FT-031")


def test_the_harness_records_a_complete_report_with_a_peer(tmp_path):
    from fixtures.hf_reference import smollm2_hf_tokenizer
    from fixtures.tiny_models import tiny_model_path

    model = tiny_model_path("qwen2")
    report, proc = run_baseline(model, "cpu", tmp_path / "baseline.json",
                                ["--prompt-tokens", "12", "--decode-tokens", "6", "--repeats", "2"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_complete_report(report, model, "cpu", 12, 6, 2, tokenizer=smollm2_hf_tokenizer())
    assert "transformers" in report["peer"]["name"]


def test_a_missing_model_is_a_clear_error(tmp_path):
    out = tmp_path / "baseline.json"
    report, proc = run_baseline(tmp_path / "no-such-model.gguf", "cpu", out)
    assert proc.returncode == 2 and report is None and not out.exists()
    assert "error: model file not found" in proc.stderr and "Traceback" not in proc.stderr
