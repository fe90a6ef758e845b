"""GT-039 GPT inference adapter: the model registry builds the GPT-OSS adapter for a GGUF file
whose general.architecture is gpt-oss; the adapter consumes every tensor of the file (llama.cpp's
gpt-oss names), reports load progress up to the file's total, uses the sliding window on the
layers transformers' GptOssConfig.layer_types marks sliding, NEOX YaRN rope, the clamped SwiGLU
constants of transformers' config; a file missing a tensor or with a tensor of the wrong shape is
refused with UnsupportedModelError naming the tensor; bad token ids are refused.
"""
import dataclasses
from types import SimpleNamespace

import numpy as np
import pytest

from fixtures.tiny_gpt_oss import tiny_gpt_oss_hf, tiny_gpt_oss_path
from worker.backend.numpy import NumpyBackend
from worker.errors import InvalidParamsError, UnsupportedModelError
from worker.gguf import GGUFModelFile
from worker.models import load_model, model_class, supported_architectures
from worker.models.gpt_oss import GptOssModel

pytestmark = pytest.mark.story("GT-039")


@pytest.fixture(scope="module")
def gguf_file():
    gf = GGUFModelFile.open(tiny_gpt_oss_path())
    yield gf
    gf.close()


def test_registry_returns_the_gpt_oss_adapter(gguf_file):
    assert gguf_file.metadata["general.architecture"] == "gpt-oss"
    assert "gpt-oss" in supported_architectures()
    assert model_class("gpt-oss") is GptOssModel
    model = load_model(gguf_file, NumpyBackend())
    assert isinstance(model, GptOssModel) and model.config.architecture == "gpt-oss"


def test_every_file_tensor_is_used_and_progress_reaches_the_total(gguf_file):
    calls = []
    model = load_model(gguf_file, NumpyBackend(), progress=lambda done, total, name: calls.append((done, total, name)))
    assert model.tensor_names == sorted(gguf_file.tensors)
    done = [c[0] for c in calls]
    assert done == sorted(done) and done[-1] == calls[-1][1] == sum(t.nbytes for t in gguf_file.tensors.values())
    assert {c[2] for c in calls} == set(gguf_file.tensors)


def test_layer_attention_kinds_follow_transformers_layer_types(gguf_file):
    model = load_model(gguf_file, NumpyBackend())
    hf_config = tiny_gpt_oss_hf().config
    expected = [hf_config.sliding_window if kind == "sliding_attention" else 0 for kind in hf_config.layer_types]
    assert [blk.sliding_window for blk in model.blocks] == expected
    assert 0 in expected and hf_config.sliding_window in expected


def test_rope_and_swiglu_settings_are_transformers_gpt_oss_settings(gguf_file):
    model = load_model(gguf_file, NumpyBackend())
    hf_config = tiny_gpt_oss_hf().config
    rope = hf_config.rope_parameters
    assert model.rope.style == "neox" and model.rope.scaling == rope["rope_type"] == "yarn"
    assert model.rope.factor == rope["factor"]
    assert model.rope.original_context == rope["original_max_position_embeddings"]
    assert model.rope.base == rope["rope_theta"] and model.rope.truncate == rope["truncate"]
    assert (model.swiglu_limit, model.swiglu_alpha) == (hf_config.swiglu_limit, hf_config.swiglu_alpha)


def _file_view(gf, tensors):
    return SimpleNamespace(config=gf.config, tensors=tensors, tensor=gf.tensor, path=gf.path)


@pytest.mark.parametrize("missing", ["blk.1.attn_sinks.weight", "blk.0.ffn_down_exps.bias",
                                     "blk.2.ffn_gate_inp.weight"])
def test_missing_tensor_is_refused_by_name(gguf_file, missing):
    tensors = {name: info for name, info in gguf_file.tensors.items() if name != missing}
    with pytest.raises(UnsupportedModelError) as info:
        GptOssModel(_file_view(gguf_file, tensors), NumpyBackend())
    assert missing in info.value.message and info.value.code == "UNSUPPORTED_MODEL"


def test_tensor_of_the_wrong_shape_is_refused_by_name(gguf_file):
    name = "blk.0.ffn_up_exps.weight"
    tensors = dict(gguf_file.tensors)
    tensors[name] = dataclasses.replace(tensors[name], shape=(2, 64, 64))
    with pytest.raises(UnsupportedModelError) as info:
        GptOssModel(_file_view(gguf_file, tensors), NumpyBackend())
    assert name in info.value.message


@pytest.mark.parametrize("ids", [np.array([]), np.array([[1, 2]]), np.array([1.5]), np.array([49152])])
def test_bad_token_ids_are_refused(gguf_file, ids):
    model = load_model(gguf_file, NumpyBackend())
    with pytest.raises(InvalidParamsError):
        model.forward(ids, model.new_cache(4), 0)
