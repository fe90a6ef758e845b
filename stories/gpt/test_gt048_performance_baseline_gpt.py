"""GT-048 performance baseline GPT: the baseline harness measures a GPT-OSS model beside a peer.

Acceptance, benchmarks/baseline.py --device cpu on the tiny GPT-OSS fixture (MXFP4 experts), with
transformers' GptOssForCausalLM holding the file's weights as the peer (--peer-hf; transformers
cannot read a GPT-OSS GGUF itself): the report is complete and well formed (every metric for both
sides, positive and finite, medians of the samples, ratios ours / peer), records architecture
`gpt-oss` and the file's majority tensor type as gguf-py reads them, and both sides decoded the
same greedy continuation. No check looks at how fast anything was.
"""
import pytest

from fixtures.perf_baseline import assert_complete_report, run_baseline

pytestmark = pytest.mark.story("GT-048")
PROMPT, DECODE, REPEATS = 12, 6, 2


def test_gpt_oss_report_is_complete_beside_a_peer(tmp_path):
    from fixtures.hf_reference import smollm2_hf_tokenizer
    from fixtures.tiny_gpt_oss import tiny_gpt_oss_hf, tiny_gpt_oss_path

    model, peer_dir = tiny_gpt_oss_path(), tiny_gpt_oss_hf("mxfp4").name_or_path
    report, proc = run_baseline(model, "cpu", tmp_path / "baseline.json",
                                ["--prompt-tokens", str(PROMPT), "--decode-tokens", str(DECODE),
                                 "--repeats", str(REPEATS), "--peer-hf", peer_dir])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_complete_report(report, model, "cpu", PROMPT, DECODE, REPEATS, tokenizer=smollm2_hf_tokenizer())
    assert report["architecture"] == "gpt-oss"
    assert "GptOss" in report["peer"]["name"]
    assert report["greedy_ids_agree_with_peer"] == report["greedy_ids_compared"] == DECODE + 1
