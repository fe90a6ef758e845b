"""FT-040 performance baseline measurements (CPU side; the GPU recording is gate check
G4-PERF-BASELINE in gates/gate4/test_gate4_perf.py).

Acceptance, benchmarks/baseline.py --device cpu on the tiny llama fixture (3 repetitions):
- the report holds, for the worker and for the peer (transformers on CPU torch, same file), every
  metric (load time, first-token latency, prefill and decode tokens/s) as positive finite samples,
  one per repetition, and their medians;
- `ratios_ours_over_peer` is ours / peer for every metric;
- device, model file (and its size), architecture and majority tensor type (as gguf-py reads them),
  prompt length (as transformers' tokenizer counts the recorded prompt) and repetitions are recorded;
- both sides decoded the same greedy continuation (the measurements are of the same work).
No check looks at how fast anything was.
"""
import pytest

from fixtures.perf_baseline import METRICS, assert_complete_report, run_baseline

pytestmark = pytest.mark.story("FT-040")
PROMPT, DECODE, REPEATS = 16, 8, 3


@pytest.fixture(scope="module")
def cpu_report(tmp_path_factory):
    from fixtures.tiny_models import tiny_model_path

    model = tiny_model_path("llama")
    report, proc = run_baseline(model, "cpu", tmp_path_factory.mktemp("ft040") / "baseline.json",
                                ["--prompt-tokens", str(PROMPT), "--decode-tokens", str(DECODE),
                                 "--repeats", str(REPEATS)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return model, report


def test_cpu_report_is_complete_and_well_formed(cpu_report):
    from fixtures.hf_reference import smollm2_hf_tokenizer

    model, report = cpu_report
    assert_complete_report(report, model, "cpu", PROMPT, DECODE, REPEATS, tokenizer=smollm2_hf_tokenizer())
    assert report["ours"]["device"] == "cpu" and report["peer"]["device"] == "cpu"


def test_both_sides_measured_the_same_greedy_work(cpu_report):
    _, report = cpu_report
    assert report["greedy_ids_compared"] == DECODE + 1
    assert report["greedy_ids_agree_with_peer"] == DECODE + 1


def test_every_metric_says_how_it_was_measured(cpu_report):
    _, report = cpu_report
    assert all(report["method"][m] for m in METRICS)
