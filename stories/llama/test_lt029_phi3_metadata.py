"""LT-029 Phi-3 metadata analysis: the phi3.* GGUF keys become worker.config.ModelConfig.

Acceptance:
- every phi3.* key of the tiny Phi-3 file (context length, embedding length, block count, head
  counts, feed-forward length, RoPE dimension count and base, RMS norm epsilon, vocabulary)
  lands in ModelConfig with the value gguf-py's GGUFReader reads, and no phi3.* key goes unread;
- the config equals transformers' Phi3Config, both the one transformers builds from the same
  GGUF file (AutoConfig.from_pretrained(..., gguf_file=...)) and the original one the file was
  converted from;
- keys transformers' GGUF loader ignores are read as llama.cpp's converter
  (convert_hf_to_gguf.py, Phi3MiniModel) writes them from a Phi3Config: attention.sliding_window
  (0 = none), rope.scaling.original_context_length, rope.dimension_count for a partial rotary
  factor (checked against transformers' own rotary embedding width);
- LongRoPE (the 128k models: rope_factors_long/short tensors) is refused with
  UNSUPPORTED_ROPE_SCALING instead of being read as plain RoPE;
- missing, wrongly typed or contradicting keys are refused with GGUF_MISSING_METADATA,
  GGUF_BAD_METADATA or GGUF_INCONSISTENT_CONFIG and a message naming the key.
"""
from __future__ import annotations

import functools

import numpy as np
import pytest
from gguf import GGUFValueType as V

import fixtures.gguf_corrupt as corrupt
from fixtures.gguf_corrupt import TINY, write_tiny_model
from fixtures.tiny_models import gguf_py_reader, tiny_hf_model, tiny_model_path
from worker.errors import GGUFError, UnsupportedModelError
from worker.gguf import GGUFModelFile

pytestmark = pytest.mark.story("LT-029")

# phi3.* key (without the prefix) -> how ModelConfig exposes it
CONFIG_FIELD = {
    "context_length": lambda c: c.context_length,
    "embedding_length": lambda c: c.hidden_size,
    "block_count": lambda c: c.n_layers,
    "feed_forward_length": lambda c: c.ffn_size,
    "attention.head_count": lambda c: c.n_heads,
    "attention.head_count_kv": lambda c: c.n_kv_heads,
    "attention.layer_norm_rms_epsilon": lambda c: c.norm_eps,
    "rope.dimension_count": lambda c: c.rope.dim,
    "rope.freq_base": lambda c: c.rope.base,
    "rope.scaling.original_context_length": lambda c: c.rope.original_context,
    "rope.scaling.attn_factor": lambda c: c.rope.attn_factor,
    "attention.sliding_window": lambda c: c.sliding_window,
    "vocab_size": lambda c: c.vocab_size,
}


@functools.lru_cache(maxsize=None)
def _config(path):
    with GGUFModelFile.open(path) as gf:
        return gf.config


@functools.lru_cache(maxsize=None)
def _transformers_config_from_gguf(path):
    """transformers' own reading of the GGUF file (its GGUF loader supports phi3)."""
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(str(path.parent), gguf_file=path.name)


def _phi3_fields(reader) -> dict:
    """phi3.* key (prefix removed) -> value, as gguf-py reads it."""
    return {key[len("phi3."):]: field.contents() for key, field in reader.fields.items()
            if key.startswith("phi3.")}


def _open(path):
    with GGUFModelFile.open(path) as gf:
        return gf.config


# -- the tiny Phi-3 file: every key read as gguf-py and transformers read it -------------------------

def test_every_phi3_key_is_read_as_gguf_py_reads_it():
    reader = gguf_py_reader("phi3")
    assert reader.fields["general.architecture"].contents() == "phi3"
    fields = _phi3_fields(reader)
    unread = set(fields) - set(CONFIG_FIELD)
    assert not unread, f"phi3 keys with no place in ModelConfig: {sorted(unread)}"
    cfg = _config(tiny_model_path("phi3"))
    assert cfg.architecture == "phi3"
    for key, value in fields.items():
        assert CONFIG_FIELD[key](cfg) == value, f"phi3.{key}: gguf-py reads {value!r}"
    # the keys the file must hold for a Phi-3 model are all there (so the loop above checked them)
    assert {"context_length", "embedding_length", "block_count", "feed_forward_length",
            "attention.head_count", "attention.head_count_kv", "attention.layer_norm_rms_epsilon",
            "rope.dimension_count", "rope.freq_base"} <= set(fields)


def test_vocabulary_and_tokenizer_come_from_the_tokenizer_keys_gguf_py_reads():
    reader = gguf_py_reader("phi3")
    cfg = _config(tiny_model_path("phi3"))
    assert cfg.vocab_size == len(reader.fields["tokenizer.ggml.tokens"].contents())
    assert cfg.tokenizer_model == reader.fields["tokenizer.ggml.model"].contents()
    tensors = {t.name: t for t in reader.tensors}
    # gguf-py reports ggml's dimension order (ne): token_embd is [hidden, vocab]
    assert tuple(int(n) for n in tensors["token_embd.weight"].shape) == (cfg.hidden_size, cfg.vocab_size)
    assert cfg.tied_embeddings == ("output.weight" not in tensors)


def _assert_same_as_phi3config(cfg, hf):
    head_dim = getattr(hf, "head_dim", None) or hf.hidden_size // hf.num_attention_heads
    rope = hf.rope_parameters
    assert type(hf).__name__ == "Phi3Config"
    assert cfg.architecture == hf.model_type == "phi3"
    assert cfg.hidden_size == hf.hidden_size
    assert cfg.n_layers == hf.num_hidden_layers
    assert cfg.n_heads == hf.num_attention_heads
    assert cfg.n_kv_heads == hf.num_key_value_heads
    assert cfg.head_dim == head_dim
    assert cfg.ffn_size == hf.intermediate_size
    assert cfg.context_length == hf.max_position_embeddings
    assert cfg.vocab_size == hf.vocab_size
    assert cfg.tied_embeddings == hf.tie_word_embeddings
    # GGUF stores epsilon as float32: compare at that precision
    assert np.float32(cfg.norm_eps) == np.float32(hf.rms_norm_eps)
    assert cfg.rope.base == rope["rope_theta"]
    assert cfg.rope.dim == int(rope.get("partial_rotary_factor", 1.0) * head_dim)
    assert cfg.rope.style == "neox"                  # Phi-3 rotates halves (rotate_half)
    assert cfg.rope.scaling == "none" and rope.get("rope_type", "default") == "default"
    assert cfg.sliding_window == (hf.sliding_window or 0)


def test_config_equals_phi3config_transformers_builds_from_the_same_gguf():
    path = tiny_model_path("phi3")
    _assert_same_as_phi3config(_config(path), _transformers_config_from_gguf(path))


def test_config_equals_the_phi3config_the_file_was_converted_from():
    _assert_same_as_phi3config(_config(tiny_model_path("phi3")), tiny_hf_model("phi3").config)


def test_phi3_is_read_as_llama_family_with_fused_projections():
    cfg = _config(tiny_model_path("phi3"))
    assert cfg.rope is not None and cfg.n_experts == 0 and cfg.n_experts_per_token == 0
    assert cfg.fused_qkv is True


# -- keys transformers' GGUF loader ignores: llama.cpp's converter mapping --------------------------

def _phi3config(**overrides):
    """A transformers Phi3Config with the hand-made tiny model's shape (fixtures.gguf_corrupt.TINY)."""
    from transformers import Phi3Config

    args = dict(hidden_size=TINY["hidden"], intermediate_size=TINY["ffn"], num_hidden_layers=TINY["layers"],
                num_attention_heads=TINY["heads"], num_key_value_heads=TINY["kv_heads"],
                max_position_embeddings=TINY["ctx"], original_max_position_embeddings=TINY["ctx"],
                vocab_size=TINY["vocab"], rms_norm_eps=1e-5)
    args.update(overrides)
    return Phi3Config(**args)


def _converter_keys(hf) -> dict:
    """The keys convert_hf_to_gguf.py (Phi3MiniModel.set_gguf_parameters) writes beyond the basic
    shape, from a Phi3Config: the documented mapping."""
    rope = hf.rope_parameters
    n_embd, n_head = hf.hidden_size, hf.num_attention_heads
    return {
        "context_length": (hf.max_position_embeddings, V.UINT32),
        "rope.scaling.original_context_length": (hf.original_max_position_embeddings, V.UINT32),
        "rope.dimension_count": (int(rope.get("partial_rotary_factor", 1.0) * n_embd) // n_head, V.UINT32),
        "rope.freq_base": (rope["rope_theta"], V.FLOAT32),
        "attention.sliding_window": (hf.sliding_window or 0, V.UINT32),   # None -> 0 (Phi-4's convention)
    }


def _rotary_width(hf) -> int:
    """How many dimensions per head transformers' Phi-3 rotary embedding rotates."""
    from transformers.models.phi3.modeling_phi3 import Phi3RotaryEmbedding

    return 2 * int(Phi3RotaryEmbedding(hf).inv_freq.shape[0])


CONVERTED = [
    ("phi3_mini_4k_window", dict(sliding_window=2047, max_position_embeddings=4096,
                                 original_max_position_embeddings=4096)),
    ("no_window", dict(sliding_window=None)),
    ("partial_rotary", dict(partial_rotary_factor=0.75)),
    ("rope_theta", dict(rope_theta=250000.0)),
]


@pytest.mark.parametrize("label,overrides", CONVERTED, ids=[c[0] for c in CONVERTED])
def test_converter_keys_are_read_as_the_phi3config_they_came_from(tmp_path, label, overrides):
    hf = _phi3config(**overrides)
    path = write_tiny_model(tmp_path / "m.gguf", "phi3", set_keys=_converter_keys(hf))
    cfg = _open(path)
    assert cfg.sliding_window == (hf.sliding_window or 0)
    assert cfg.context_length == hf.max_position_embeddings
    assert cfg.rope.original_context == hf.original_max_position_embeddings
    assert cfg.rope.base == np.float32(hf.rope_parameters["rope_theta"])
    assert cfg.rope.dim == _rotary_width(hf)
    assert cfg.rope.scaling == "none" and cfg.rope.factor == 1.0


def test_rope_dimension_count_defaults_to_the_head_size_when_absent(tmp_path):
    """transformers ignores rope.dimension_count; without it the whole head is rotated."""
    path = write_tiny_model(tmp_path / "m.gguf", "phi3", drop_keys=("rope.dimension_count",))
    assert _open(path).rope.dim == _rotary_width(_phi3config()) == TINY["hidden"] // TINY["heads"]


def _with_longrope_tensors(monkeypatch):
    """write_tiny_model with llama.cpp's LongRoPE factor tensors (rope_dims / 2 floats each) added."""
    shapes = corrupt._tensor_shapes
    half = TINY["hidden"] // TINY["heads"] // 2

    def with_factors(arch, tied):
        return {**shapes(arch, tied), "rope_factors_long.weight": (half,), "rope_factors_short.weight": (half,)}

    monkeypatch.setattr(corrupt, "_tensor_shapes", with_factors)


@pytest.mark.story("LT-029", "LT-005")
def test_longrope_factor_tensors_are_refused_as_unsupported_rope_scaling(tmp_path, monkeypatch):
    """Phi-3-mini-128k as llama.cpp converts it: factors as tensors, attn_factor as a key."""
    _with_longrope_tensors(monkeypatch)
    keys = {"context_length": (131072, V.UINT32), "rope.scaling.original_context_length": (4096, V.UINT32),
            "rope.scaling.attn_factor": (1.19, V.FLOAT32)}
    path = write_tiny_model(tmp_path / "m.gguf", "phi3", set_keys=keys)
    with pytest.raises(UnsupportedModelError) as e:
        GGUFModelFile.open(path)
    assert e.value.code == "UNSUPPORTED_ROPE_SCALING"
    assert "rope_factors_long" in e.value.message and "longrope" in e.value.message.lower()


# -- refusals --------------------------------------------------------------------------------------

REQUIRED = ["context_length", "embedding_length", "block_count", "feed_forward_length",
            "attention.head_count", "attention.layer_norm_rms_epsilon"]


@pytest.mark.story("LT-029", "LT-005")
@pytest.mark.parametrize("key", REQUIRED)
def test_missing_required_key_is_refused_naming_it(tmp_path, key):
    path = write_tiny_model(tmp_path / "m.gguf", "phi3", drop_keys=(key,))
    with pytest.raises(GGUFError) as e:
        GGUFModelFile.open(path)
    assert e.value.code == "GGUF_MISSING_METADATA"
    assert f"phi3.{key}" in e.value.message


@pytest.mark.story("LT-029", "LT-005")
def test_missing_kv_head_count_means_multi_head_attention(tmp_path):
    """llama.cpp's default for head_count_kv is head_count; then the fused QKV is 3 x hidden rows,
    which the tiny file's attn_qkv (GQA) contradicts only once weights load, not in the config."""
    from worker.backend.numpy import NumpyBackend
    from worker.models import load_model

    path = write_tiny_model(tmp_path / "m.gguf", "phi3", drop_keys=("attention.head_count_kv",))
    assert _open(path).n_kv_heads == TINY["heads"]
    with pytest.raises(UnsupportedModelError, match=r"blk\.0\.attn_qkv\.weight.*shape"):
        load_model(path, NumpyBackend())


BAD_VALUES = [
    ("context_length_is_a_string", {"context_length": ("4096", V.STRING)}, "phi3.context_length"),
    ("block_count_is_zero", {"block_count": (0, V.UINT32)}, "phi3.block_count"),
    ("head_count_is_a_float", {"attention.head_count": (4.0, V.FLOAT32)}, "phi3.attention.head_count"),
    ("epsilon_is_negative", {"attention.layer_norm_rms_epsilon": (-1e-5, V.FLOAT32)},
     "phi3.attention.layer_norm_rms_epsilon"),
    ("epsilon_is_nan", {"attention.layer_norm_rms_epsilon": (float("nan"), V.FLOAT32)},
     "phi3.attention.layer_norm_rms_epsilon"),
    ("rope_base_is_zero", {"rope.freq_base": (0.0, V.FLOAT32)}, "phi3.rope.freq_base"),
    ("sliding_window_is_a_float", {"attention.sliding_window": (2047.0, V.FLOAT32)}, "phi3.attention.sliding_window"),
    ("absurd_context_length", {"context_length": (1 << 30, V.UINT32)}, "phi3.context_length"),
]


@pytest.mark.story("LT-029", "LT-005")
@pytest.mark.parametrize("label,keys,words", BAD_VALUES, ids=[c[0] for c in BAD_VALUES])
def test_wrongly_typed_or_out_of_range_key_is_refused_naming_it(tmp_path, label, keys, words):
    path = write_tiny_model(tmp_path / "m.gguf", "phi3", set_keys=keys)
    with pytest.raises(GGUFError) as e:
        GGUFModelFile.open(path)
    assert e.value.code == "GGUF_BAD_METADATA" and words in e.value.message


INCONSISTENT = [
    ("kv_heads_do_not_divide_heads", {"attention.head_count_kv": (3, V.UINT32)}, "KV heads"),
    ("heads_do_not_divide_width", {"attention.head_count": (6, V.UINT32), "attention.head_count_kv": (6, V.UINT32)},
     "not divisible"),
    ("rope_dims_beyond_head", {"rope.dimension_count": (TINY["hidden"] // TINY["heads"] + 2, V.UINT32)},
     "rope.dimension_count"),
    ("rope_dims_odd", {"rope.dimension_count": (7, V.UINT32)}, "even"),
    ("embedding_length_disagrees_with_token_embd", {"embedding_length": (2 * TINY["hidden"], V.UINT32)},
     "token_embd.weight"),
    ("vocab_size_disagrees_with_token_list", {"vocab_size": (TINY["vocab"] + 1, V.UINT32)}, "tokenizer.ggml.tokens"),
    ("block_count_smaller_than_the_blocks_stored", {"block_count": (TINY["layers"] - 1, V.UINT32)}, "block_count"),
]


@pytest.mark.story("LT-029", "LT-005")
@pytest.mark.parametrize("label,keys,words", INCONSISTENT, ids=[c[0] for c in INCONSISTENT])
def test_contradicting_keys_are_refused(tmp_path, label, keys, words):
    path = write_tiny_model(tmp_path / "m.gguf", "phi3", set_keys=keys)
    with pytest.raises(GGUFError) as e:
        GGUFModelFile.open(path)
    assert e.value.code == "GGUF_INCONSISTENT_CONFIG" and words in e.value.message, e.value.message


@pytest.mark.story("LT-029", "LT-005")
def test_per_layer_head_counts_are_refused_as_unsupported(tmp_path):
    path = write_tiny_model(tmp_path / "m.gguf", "phi3",
                            set_keys={"attention.head_count_kv": ([2] * TINY["layers"], V.ARRAY)})
    with pytest.raises(UnsupportedModelError) as e:
        GGUFModelFile.open(path)
    assert e.value.code == "UNSUPPORTED_MODEL" and "phi3.attention.head_count_kv" in e.value.message


def test_refusals_are_errors_with_a_code_not_tracebacks(tmp_path):
    """The error serialises to the {code, message} body the HTTP and CLI layers report."""
    path = write_tiny_model(tmp_path / "m.gguf", "phi3", drop_keys=("embedding_length",))
    with pytest.raises(GGUFError) as e:
        GGUFModelFile.open(path)
    body = e.value.to_dict()
    assert body["code"] == "GGUF_MISSING_METADATA" and "phi3.embedding_length" in body["message"]
