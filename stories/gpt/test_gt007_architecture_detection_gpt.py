"""GT-007 architecture detection for GPT models: gpt2 (LayerNorm, learned absolute positions,
MHA, no RoPE) matches the config transformers reads from the same file; gpt-oss (RMSNorm, NEOX
RoPE with YaRN, GQA with a head size from attention.key_length, attention sinks, alternating
sliding window, MoE with top-k experts) follows llama.cpp's GGUF conventions."""
from __future__ import annotations

import pytest
from gguf import GGUFValueType as V

from fixtures.gguf_corrupt import TINY, tiny_model_path, write_tiny_model
from worker.errors import GGUFError
from worker.gguf import GGUFModelFile

pytestmark = pytest.mark.story("GT-007")


def test_gpt2_is_detected_like_transformers_reads_it():
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    path = tiny_model_path("gpt2")
    hf = load_gguf_checkpoint(str(path), return_tensors=False)["config"]
    with GGUFModelFile.open(path) as gf:
        cfg = gf.config
    assert hf["model_type"] == cfg.architecture == "gpt2"
    assert (cfg.hidden_size, cfg.n_layers, cfg.n_heads, cfg.context_length) == (
        hf["n_embd"], hf["n_layer"], hf["n_head"], hf["n_ctx"])
    assert cfg.norm_eps == hf["layer_norm_epsilon"]
    assert cfg.vocab_size == hf["vocab_size"] and cfg.tied_embeddings == hf["tie_word_embeddings"]
    assert cfg.ffn_size == TINY["ffn"]
    assert cfg.n_kv_heads == cfg.n_heads and cfg.head_dim == cfg.hidden_size // cfg.n_heads   # MHA
    assert cfg.rope is None                                   # learned absolute positions


def test_gpt2_with_grouped_kv_heads_is_refused(tmp_path):
    path = write_tiny_model(tmp_path / "g.gguf", "gpt2", set_keys={"attention.head_count_kv": (2, V.UINT32)})
    with pytest.raises(GGUFError) as e:
        GGUFModelFile.open(path)
    assert e.value.code == "GGUF_INCONSISTENT_CONFIG"


def test_gpt_oss_config_follows_llama_cpp_conventions():
    with GGUFModelFile.open(tiny_model_path("gpt-oss")) as gf:
        cfg = gf.config
    assert cfg.architecture == "gpt-oss"
    assert (cfg.hidden_size, cfg.n_layers, cfg.n_heads, cfg.n_kv_heads) == (
        TINY["hidden"], TINY["layers"], TINY["heads"], TINY["kv_heads"])
    # head size from attention.key_length, not width / heads (real model: 2880 wide, 64 heads of 64)
    assert cfg.head_dim == TINY["oss_head_dim"] != cfg.hidden_size // cfg.n_heads
    assert cfg.ffn_size == TINY["expert_ffn"]                 # expert_feed_forward_length
    assert (cfg.n_experts, cfg.n_experts_per_token) == (TINY["experts"], TINY["experts_used"])
    assert cfg.sliding_window == TINY["window"] and cfg.sliding_window_pattern == 2
    assert cfg.attention_sinks is True and cfg.fused_gate_up_exps is False
    rope = cfg.rope
    assert (rope.style, rope.scaling, rope.factor, rope.original_context, rope.base) == (
        "neox", "yarn", 32.0, 4096, 150000.0)
    assert rope.dim == cfg.head_dim
    assert not cfg.tied_embeddings


def test_gpt_oss_fused_gate_up_experts_are_recognised(tmp_path):
    """Newer llama.cpp converters write gate and up experts as one ffn_gate_up_exps tensor."""
    import gguf
    import numpy as np

    from fixtures.gguf_corrupt import random_blocks
    writer_path = tmp_path / "fused.gguf"
    base = write_tiny_model(tmp_path / "base.gguf", "gpt-oss")
    reader = gguf.GGUFReader(str(base))
    writer = gguf.GGUFWriter(str(writer_path), "gpt-oss")
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        vtype = field.types[0]
        writer.add_key_value(key, field.contents(), vtype, sub_type=field.types[1] if len(field.types) > 1 else None)
    E, FE, D = TINY["experts"], TINY["expert_ffn"], TINY["hidden"]
    for t in reader.tensors:
        if "ffn_gate_exps" in t.name or "ffn_up_exps.weight" in t.name:
            continue
        writer.add_tensor(t.name, np.asarray(t.data), raw_dtype=t.tensor_type)
    for i in range(TINY["layers"]):
        fused = random_blocks(gguf.GGMLQuantizationType.MXFP4, E * 2 * FE * D // 32, np.random.default_rng(i))
        writer.add_tensor(f"blk.{i}.ffn_gate_up_exps.weight", fused.reshape(E, 2 * FE, -1),
                          raw_dtype=gguf.GGMLQuantizationType.MXFP4)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with GGUFModelFile.open(writer_path) as gf:
        assert gf.config.fused_gate_up_exps is True
        assert gf.tensors["blk.0.ffn_gate_up_exps.weight"].shape == (E, 2 * FE, D)


@pytest.mark.parametrize("keys,code", [
    ({"expert_used_count": (8, V.UINT32)}, "GGUF_INCONSISTENT_CONFIG"),      # more used than exist
    ({"expert_count": (0, V.UINT32)}, "GGUF_BAD_METADATA"),
])
def test_gpt_oss_inconsistent_experts_are_refused(tmp_path, keys, code):
    path = write_tiny_model(tmp_path / "x.gguf", "gpt-oss", set_keys=keys)
    with pytest.raises(GGUFError) as e:
        GGUFModelFile.open(path)
    assert e.value.code == code


@pytest.mark.parametrize("key", ["expert_count", "expert_used_count", "expert_feed_forward_length",
                                 "attention.sliding_window", "rope.scaling.original_context_length"])
def test_gpt_oss_required_keys(tmp_path, key):
    path = write_tiny_model(tmp_path / "x.gguf", "gpt-oss", drop_keys=(key,))
    with pytest.raises(GGUFError) as e:
        GGUFModelFile.open(path)
    assert e.value.code == "GGUF_MISSING_METADATA" and key in e.value.message
