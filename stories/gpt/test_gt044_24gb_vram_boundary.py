"""GT-044 24 GB VRAM boundary: GPT-OSS-20B in its published MXFP4 GGUF fits a 24 GB GPU with
its KV cache.

The real file is not available here, so its tensor table is rebuilt from the published shapes
(openai/gpt-oss-20b config: 24 layers, hidden 2880, 64 query / 8 KV heads of 64, 32 experts of
2880 (top 4), vocab 201088, untied LM head) in the types of ggml-org's gpt-oss-20b-mxfp4.gguf:
experts MXFP4, other 2-D weights Q8_0 except the router (F32, llama.cpp never quantizes
ffn_gate_inp), 1-D tensors F32. Byte sizes per type come from gguf-py's GGML_QUANT_SIZES; the
same rule must reproduce the tensor table of a real file (the tiny fixture) byte for byte, and
the total must match the published file size (12.1 GB) and parameter count (20.9 B in 459
tensors) within 1 %.

Budget: 24e9 bytes (decimal, below the 24 GiB a "24 GB" card has, leaving room for the CUDA
context). Checks, with worker.memory_estimate (KV in float16 as the CUDA backend stores it):
- weights + KV cache at the full 131072-token context fit;
- weights + KV + workspace fit at 32768 tokens; the largest context that fits is recorded, and
  one more token past it does not fit (the boundary is where the estimate says).
"""
import gguf
import numpy as np
import pytest

from fixtures.tiny_gpt_oss import tiny_gpt_oss_path
from stories.gpt._mxfp4_helpers import record
from worker.config import ModelConfig, RopeConfig
from worker.gguf import GGUFModelFile
from worker.memory_estimate import estimate_device_bytes, kv_cache_bytes

pytestmark = pytest.mark.story("GT-044")
Q = gguf.GGMLQuantizationType
BUDGET = 24 * 10**9
PUBLISHED_FILE_BYTES = 12.1e9          # gpt-oss-20b-mxfp4.gguf as listed by ggml-org / bartowski
PUBLISHED_PARAMETERS = 20.9e9          # Hugging Face's count for the GGUF (459 tensors)

VOCAB, D, LAYERS, HEADS, KV_HEADS, HEAD_DIM, EXPERTS, TOP_K, FFN, CONTEXT = \
    201088, 2880, 24, 64, 8, 64, 32, 4, 2880, 131072

GPT_OSS_20B = ModelConfig(
    architecture="gpt-oss", vocab_size=VOCAB, context_length=CONTEXT, hidden_size=D, n_layers=LAYERS,
    n_heads=HEADS, n_kv_heads=KV_HEADS, head_dim=HEAD_DIM, ffn_size=FFN, norm_eps=1e-5,
    rope=RopeConfig(dim=HEAD_DIM, base=150000.0, style="neox", scaling="yarn", factor=32.0, original_context=4096),
    sliding_window=128, n_experts=EXPERTS, n_experts_per_token=TOP_K, tokenizer_model="gpt2")


def stored_bytes(shape, qtype) -> int:
    block, type_size = gguf.GGML_QUANT_SIZES[qtype]
    n = int(np.prod(shape))
    assert shape[-1] % block == 0
    return n // block * type_size


def gpt_oss_20b_tensors() -> dict[str, tuple[tuple[int, ...], Q]]:
    q_dim, kv_dim = HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM
    table = {"token_embd.weight": ((VOCAB, D), Q.Q8_0), "output.weight": ((VOCAB, D), Q.Q8_0),
             "output_norm.weight": ((D,), Q.F32)}
    for i in range(LAYERS):
        p = f"blk.{i}."
        table.update({
            p + "attn_norm.weight": ((D,), Q.F32), p + "post_attention_norm.weight": ((D,), Q.F32),
            p + "attn_q.weight": ((q_dim, D), Q.Q8_0), p + "attn_q.bias": ((q_dim,), Q.F32),
            p + "attn_k.weight": ((kv_dim, D), Q.Q8_0), p + "attn_k.bias": ((kv_dim,), Q.F32),
            p + "attn_v.weight": ((kv_dim, D), Q.Q8_0), p + "attn_v.bias": ((kv_dim,), Q.F32),
            p + "attn_output.weight": ((D, q_dim), Q.Q8_0), p + "attn_output.bias": ((D,), Q.F32),
            p + "attn_sinks.weight": ((HEADS,), Q.F32),
            p + "ffn_gate_inp.weight": ((EXPERTS, D), Q.F32), p + "ffn_gate_inp.bias": ((EXPERTS,), Q.F32),
            p + "ffn_gate_exps.weight": ((EXPERTS, FFN, D), Q.MXFP4), p + "ffn_gate_exps.bias": ((EXPERTS, FFN), Q.F32),
            p + "ffn_up_exps.weight": ((EXPERTS, FFN, D), Q.MXFP4), p + "ffn_up_exps.bias": ((EXPERTS, FFN), Q.F32),
            p + "ffn_down_exps.weight": ((EXPERTS, D, FFN), Q.MXFP4), p + "ffn_down_exps.bias": ((EXPERTS, D), Q.F32),
        })
    return table


WEIGHTS = sum(stored_bytes(shape, qtype) for shape, qtype in gpt_oss_20b_tensors().values())


def test_byte_rule_reproduces_a_real_gpt_oss_file():
    with GGUFModelFile.open(tiny_gpt_oss_path()) as gf:
        for name, info in gf.tensors.items():
            assert stored_bytes(info.shape, info.qtype) == info.nbytes, name
        assert estimate_device_bytes(gf, 16)["weights"] == sum(i.nbytes for i in gf.tensors.values())
        assert set(gf.tensors) <= {n.replace("blk.0.", f"blk.{i}.") for n in gpt_oss_20b_tensors()
                                   for i in range(gf.config.n_layers)}   # same tensor names


def test_rebuilt_table_matches_the_published_file_size():
    table = gpt_oss_20b_tensors()
    experts = sum(stored_bytes(s, q) for s, q in table.values() if q == Q.MXFP4)
    record("GT-044 GPT-OSS-20B weights", total_bytes=WEIGHTS, mxfp4_expert_bytes=experts, tensors=len(table),
           parameters=int(sum(np.prod(s) for s, _ in table.values())))
    assert len(table) == 3 + 19 * LAYERS == 459
    assert abs(sum(np.prod(s) for s, _ in table.values()) - PUBLISHED_PARAMETERS) / PUBLISHED_PARAMETERS < 0.01
    assert abs(WEIGHTS - PUBLISHED_FILE_BYTES) / PUBLISHED_FILE_BYTES < 0.01


def test_weights_and_kv_cache_fit_at_full_context():
    kv = kv_cache_bytes(GPT_OSS_20B, CONTEXT)               # float16 K and V, every layer, every position
    assert kv == 2 * LAYERS * CONTEXT * KV_HEADS * HEAD_DIM * 2
    record("GT-044 weights + KV at 131072 tokens", weights=WEIGHTS, kv_cache_f16=kv, total=WEIGHTS + kv,
           budget=BUDGET, kv_cache_f32_total=WEIGHTS + 2 * kv)
    assert WEIGHTS + kv <= BUDGET


def test_full_estimate_fits_and_the_boundary_is_where_the_estimate_says():
    def total(n_ctx):
        return estimate_device_bytes(GPT_OSS_20B, n_ctx, weights_bytes=WEIGHTS)["total"]

    assert total(32768) <= BUDGET
    low, high = 1, CONTEXT + 1                              # total(low) fits; find the last that does
    if total(CONTEXT) <= BUDGET:
        low = CONTEXT
    else:
        while high - low > 1:
            mid = (low + high) // 2
            low, high = (mid, high) if total(mid) <= BUDGET else (low, mid)
        assert total(low + 1) > BUDGET
    record("GT-044 largest context within 24e9 bytes (weights + KV + workspace)", n_ctx=low,
           total_at_n_ctx=total(low), total_at_32768=total(32768), total_at_131072=total(CONTEXT))
    assert low >= 32768
