"""GT-005 GPT GGUF metadata parsing: the keys of GPT-2 and GPT-OSS files (llama.cpp's names:
layer-norm epsilon, learned positions, experts, key length, sliding window, YaRN scaling) are read
with their values and types exactly as gguf-py reads them and as the writer was given them."""
from __future__ import annotations

import gguf
import numpy as np
import pytest
from gguf import GGUFValueType as V

from fixtures.gguf_corrupt import TINY, tiny_model_path
from worker.gguf import GGUFModelFile

pytestmark = pytest.mark.story("GT-005")


@pytest.mark.parametrize("arch", ["gpt2", "gpt-oss"])
def test_every_key_matches_gguf_py(arch):
    path = tiny_model_path(arch)
    oracle = gguf.GGUFReader(str(path))
    with GGUFModelFile.open(path) as gf:
        for key, field in oracle.fields.items():
            if key.startswith("GGUF."):
                continue
            expected = field.contents()
            if field.types[0] == V.ARRAY and field.types[1] != V.STRING:
                np.testing.assert_array_equal(gf.metadata[key], expected)
            else:
                assert gf.metadata[key] == expected, key
            assert gf.metadata_types[key] == (field.types[0] if field.types[0] != V.ARRAY
                                              else (V.ARRAY, field.types[1]))


def test_gpt2_keys():
    with GGUFModelFile.open(tiny_model_path("gpt2")) as gf:
        m, t = gf.metadata, gf.metadata_types
        assert m["general.architecture"] == "gpt2"
        assert m["gpt2.context_length"] == TINY["ctx"] and t["gpt2.context_length"] == V.UINT32
        assert m["gpt2.embedding_length"] == TINY["hidden"]
        assert m["gpt2.attention.head_count"] == TINY["heads"]
        assert m["gpt2.attention.layer_norm_epsilon"] == pytest.approx(1e-5)
        assert t["gpt2.attention.layer_norm_epsilon"] == V.FLOAT32
        assert "gpt2.attention.layer_norm_rms_epsilon" not in m
        assert gf.tensors["position_embd.weight"].shape == (TINY["ctx"], TINY["hidden"])


def test_gpt_oss_keys():
    with GGUFModelFile.open(tiny_model_path("gpt-oss")) as gf:
        m = gf.metadata
        p = "gpt-oss."
        assert m["general.architecture"] == "gpt-oss"
        assert m[p + "expert_count"] == TINY["experts"] and m[p + "expert_used_count"] == TINY["experts_used"]
        assert m[p + "expert_feed_forward_length"] == TINY["expert_ffn"]
        assert m[p + "attention.key_length"] == m[p + "attention.value_length"] == TINY["oss_head_dim"]
        assert m[p + "attention.sliding_window"] == TINY["window"]
        assert m[p + "rope.scaling.type"] == "yarn" and gf.metadata_types[p + "rope.scaling.type"] == V.STRING
        assert m[p + "rope.scaling.factor"] == 32.0
        assert m[p + "rope.scaling.original_context_length"] == 4096
        assert m[p + "rope.freq_base"] == 150000.0
        assert gf.tensors["blk.0.attn_sinks.weight"].shape == (TINY["heads"],)
