"""LT-022 Qwen weight mapping: every tensor of a qwen2 GGUF has its place in the adapter.

Acceptance: the adapter consumes exactly the file's tensors, all of them names that gguf-py
(llama.cpp's naming) defines for the QWEN2 architecture, including the Q/K/V biases; a file
that lacks a required tensor, or holds one of the wrong shape, is refused with an error that
names the tensor.
"""
import dataclasses

import gguf
import pytest

from fixtures.tiny_models import tiny_model_path, tiny_worker_model
from worker.backend.numpy import NumpyBackend
from worker.errors import UnsupportedModelError
from worker.gguf import GGUFModelFile
from worker.models import load_model


def gguf_py_names(arch, n_layers):
    """All tensor names llama.cpp defines for an architecture (from gguf-py's tables)."""
    names = set()
    for tensor in gguf.MODEL_TENSORS[arch]:
        template = gguf.TENSOR_NAMES[tensor]
        for suffix in (".weight", ".bias"):
            if "{bid}" in template:
                names |= {template.format(bid=i) + suffix for i in range(n_layers)}
            else:
                names.add(template + suffix)
    return names


@pytest.mark.story("LT-022")
def test_adapter_consumes_every_qwen2_tensor_by_llama_cpp_name():
    model = tiny_worker_model("qwen2")
    with GGUFModelFile.open(tiny_model_path("qwen2")) as gf:
        file_names = set(gf.tensors)
    assert set(model.tensor_names) == file_names
    assert file_names <= gguf_py_names(gguf.MODEL_ARCH.QWEN2, model.config.n_layers)
    for i in range(model.config.n_layers):
        for part in ("q", "k", "v"):
            assert f"blk.{i}.attn_{part}.bias" in model.tensor_names


class WithoutTensor:
    """A GGUFModelFile with one tensor hidden (or reshaped), to exercise the adapter's checks."""

    def __init__(self, gf, name, shape=None):
        self._gf, self.config = gf, gf.config
        self.tensors = dict(gf.tensors)
        if shape is None:
            del self.tensors[name]
        else:
            info = self.tensors[name]
            self.tensors[name] = dataclasses.replace(info, shape=shape)

    def tensor(self, name):
        return self._gf.tensor(name)


@pytest.mark.story("LT-022")
def test_missing_tensor_is_refused_by_name():
    with GGUFModelFile.open(tiny_model_path("qwen2")) as gf:
        with pytest.raises(UnsupportedModelError, match=r"blk\.1\.attn_k\.weight"):
            load_model(WithoutTensor(gf, "blk.1.attn_k.weight"), NumpyBackend())


@pytest.mark.story("LT-022")
def test_wrong_shape_is_refused_by_name():
    with GGUFModelFile.open(tiny_model_path("qwen2")) as gf:
        with pytest.raises(UnsupportedModelError, match=r"blk\.0\.ffn_down\.weight.*shape"):
            load_model(WithoutTensor(gf, "blk.0.ffn_down.weight", shape=(7, 7)), NumpyBackend())


@pytest.mark.slow
@pytest.mark.needs_model("qwen2.5")
def test_real_qwen25_file_every_tensor_is_mapped(record_model):
    """The real file (M0_QWEN25_GGUF, else the set-up's Qwen2.5-Coder Q4_K_M, with its Q5_0 /
    Q8_0 / Q4_K / Q6_K mixture): the adapter consumes exactly its tensors, all named as llama.cpp
    names QWEN2 tensors, with the 24 layers' Q/K/V biases."""
    from fixtures.paths import user_model

    path = user_model("M0_QWEN25_GGUF")
    record_model(path)
    with GGUFModelFile.open(path) as gf:
        file_names = set(gf.tensors)
        model = load_model(gf, NumpyBackend())
        assert set(model.tensor_names) == file_names
    assert file_names <= gguf_py_names(gguf.MODEL_ARCH.QWEN2, model.config.n_layers)
    assert model.config.n_layers == 24 and len(file_names) == 291
    for i in range(model.config.n_layers):
        for part in ("q", "k", "v"):
            assert f"blk.{i}.attn_{part}.bias" in model.tensor_names
