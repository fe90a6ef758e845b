"""FT-040: the side-by-side benchmark with llama.cpp (benchmarks/bench_vs_llama_cpp.py) measures
what it says, on the models it says (the timed run itself is scripts/gpu-bench.sh on the GPU machine).

Acceptance:
- the GPT-OSS-20B-shaped file has GPT-OSS-20B's size: with the published vocabulary (201,088) its
  tensor table holds 20.9 billion parameters (the model card's "21B"), 24 layers of 32 MXFP4
  experts of 2880 x 2880, 64 query and 8 KV heads of 64;
- written at a small size, the same writer gives a file that gguf-py and our loader both read, whose
  experts are MXFP4 and whose other matrices are Q8_0, with the tokenizer it was given, and on which
  the reference forward pass is finite;
- its quantized weights are signed and centred, of about 1 / sqrt(width), and its router spreads a
  prompt's tokens over the experts in every layer, as a trained model's does (the expert products
  then do a real prefill's work, not one expert set's);
- llama-bench's JSON (its `-o json` fields) becomes tokens/s per test, and the table divides ours by
  llama.cpp's for speeds and llama.cpp's TTFT by ours, leaving a ratio empty when a side is missing.
No check looks at how fast anything was.
"""
import json
import types

import numpy as np
import pytest

pytestmark = pytest.mark.story("FT-040")


def test_the_gpt_oss_file_has_gpt_oss_20b_size():
    import gguf

    from benchmarks.bench_vs_llama_cpp import GPT_OSS_20B, gpt_oss_20b_tensors

    tensors = gpt_oss_20b_tensors(201088)
    params = sum(int(np.prod(shape)) for _, shape, _, _ in tensors)
    assert 20.8e9 < params < 21.0e9
    experts = [(n, s, q) for n, s, q, _ in tensors if n.endswith("_exps.weight")]
    assert len(experts) == 3 * 24 and all(q == gguf.GGMLQuantizationType.MXFP4 for _, _, q in experts)
    assert all(s == (32, 2880, 2880) for _, s, _ in experts)
    assert (GPT_OSS_20B["heads"], GPT_OSS_20B["kv_heads"], GPT_OSS_20B["head_dim"]) == (64, 8, 64)
    assert dict((n, s) for n, s, _, _ in tensors)["blk.0.attn_k.weight"] == (8 * 64, 2880)


def test_a_small_gpt_oss_file_from_the_same_writer_loads_in_gguf_py_and_in_ours(tmp_path, monkeypatch):
    import gguf

    import benchmarks.bench_vs_llama_cpp as bench
    from fixtures.paths import smollm2_path
    from worker.backend import base
    from worker.gguf import GGUFModelFile
    from worker.models import load_model

    if smollm2_path() is None:
        pytest.skip("SmolLM2 GGUF (the tokenizer source) not installed")
    for key, value in dict(layers=2, hidden=128, heads=4, kv_heads=2, head_dim=32, experts=8,
                           expert_ffn=64).items():
        monkeypatch.setitem(bench.GPT_OSS_20B, key, value)
    path = bench.write_gpt_oss_20b_shaped(tmp_path / "oss.gguf", smollm2_path())
    reader = gguf.GGUFReader(path)
    tensors = {t.name: t for t in reader.tensors}
    Q = gguf.GGMLQuantizationType
    assert tensors["blk.1.ffn_down_exps.weight"].tensor_type == Q.MXFP4
    assert tensors["blk.0.attn_q.weight"].tensor_type == tensors["output.weight"].tensor_type == Q.Q8_0
    assert len(reader.fields["tokenizer.ggml.tokens"].data) == 49152
    for name in ("blk.0.attn_q.weight", "blk.1.ffn_gate_exps.weight", "token_embd.weight"):
        t = tensors[name]
        values = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type)
        assert abs(values.mean()) < 0.02 * values.std() and 0.5 < values.std() * np.sqrt(128) < 2, name

    model = load_model(GGUFModelFile.open(path), "cpu")
    assert model.config.architecture == "gpt-oss" and model.config.n_experts == 8
    chosen = []
    top_k = base.top_k_softmax

    def recording_top_k(logits, k):
        experts, weights = top_k(logits, k)
        chosen.append(experts)
        return experts, weights

    monkeypatch.setattr(base, "top_k_softmax", recording_top_k)
    logits = model.forward(np.arange(100, 132), model.new_cache(32), 0, logits="all")
    assert logits.shape == (32, 49152) and np.isfinite(logits).all()
    assert len(chosen) == 2
    for layer in chosen:                 # 32 tokens, 4 experts each, of 8: more than one expert set
        assert len({tuple(sorted(e)) for e in layer}) > 4 and len(np.unique(layer)) == 8


LLAMA_BENCH_JSON = [   # the fields benchmarks/bench_vs_llama_cpp.py reads, as llama-bench -o json writes them
    {"build_commit": "unknown", "build_number": 0, "gpu_info": "NVIDIA H200", "n_prompt": 128, "n_gen": 0,
     "avg_ts": 20000.0},
    {"build_commit": "unknown", "build_number": 0, "gpu_info": "NVIDIA H200", "n_prompt": 512, "n_gen": 0,
     "avg_ts": 40000.0},
    {"build_commit": "unknown", "build_number": 0, "gpu_info": "NVIDIA H200", "n_prompt": 0, "n_gen": 128,
     "avg_ts": 900.0},
]


def test_llama_bench_results_become_the_side_by_side_table(monkeypatch, tmp_path):
    import benchmarks.bench_vs_llama_cpp as bench

    calls = []

    def fake_run(cmd, **kwargs):
        calls.append(cmd)
        return types.SimpleNamespace(returncode=0, stdout=json.dumps(LLAMA_BENCH_JSON), stderr="")

    monkeypatch.setattr(bench.subprocess, "run", fake_run)
    peer = bench.bench_peer("smollm2", tmp_path / "m.gguf", "llama-bench", 3)
    assert calls[0][:3] == ["llama-bench", "-m", str(tmp_path / "m.gguf")]
    assert "-fa" in calls[0] and calls[0][calls[0].index("-fa") + 1] == "1"
    assert peer["prefill_tok_s"] == {"pp128": 20000.0, "pp512": 40000.0}
    assert peer["decode_tok_s"] == {"tg128": 900.0}
    assert peer["ttft_ms_at_128"] == pytest.approx(6.4)             # 128 tokens at 20,000 tok/s
    ours = {"model": "smollm2", "prefill_tok_s": {"pp128": 5000.0, "pp512": 20000.0, "pp2048": 30000.0},
            "decode_tok_s": {"tg128": 1800.0}, "ttft_ms_at_128": 3.2}
    report = bench.side_by_side({"rows": [ours]}, {"rows": [peer]}, {"device": "NVIDIA H200"})
    ratios = report["rows"][0]["ratios_ours_over_llama_cpp"]
    assert ratios["tg128"] == pytest.approx(2.0) and ratios["pp128"] == pytest.approx(0.25)
    assert ratios["pp512"] == pytest.approx(0.5) and ratios["pp2048"] is None
    assert ratios["ttft_speedup_at_128"] == pytest.approx(2.0)
    assert report["device"] == "NVIDIA H200"


def test_a_failed_llama_bench_run_is_reported_not_raised(monkeypatch, tmp_path):
    import benchmarks.bench_vs_llama_cpp as bench

    monkeypatch.setattr(bench.subprocess, "run",
                        lambda cmd, **kw: types.SimpleNamespace(returncode=1, stdout="", stderr="failed to load model"))
    row = bench.bench_peer("gpt-oss-20b", tmp_path / "m.gguf", "llama-bench", 1)
    assert row["status"].startswith("FAILED") and "failed to load model" in row["status"]


def test_the_prefill_paths_benchmark_reads_its_configurations():
    """benchmarks/bench_prefill_paths.py: Q8:MOE[:ROWS] per configuration; a path, variant or tile height the
    backend does not have is refused before any GPU work."""
    from benchmarks.bench_prefill_paths import parse_configs

    assert parse_configs("auto:v4, tf32x3:v5:16/32/64") == [
        {"prefill_q8": "auto", "moe": "v4", "tile_rows": None},
        {"prefill_q8": "tf32x3", "moe": "v5", "tile_rows": (16, 32, 64)}]
    for bad, message in (("int4:v4", "M0_CUDA_PREFILL_Q8"), ("auto:v9", "M0_CUDA_MOE_GEMM"),
                         ("auto:v4:48", "tile heights"), ("auto", "expected Q8:MOE"), ("", "no configuration")):
        with pytest.raises(ValueError, match=message):
            parse_configs(bad)
