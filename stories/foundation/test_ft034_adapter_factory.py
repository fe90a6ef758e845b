"""FT-034 adapter factory: `load_model` picks the adapter from the file's architecture.

Acceptance: llama, qwen2 and phi3 share the Llama adapter, gpt2 gets the GPT-2 adapter; an
architecture without an adapter is refused with UnsupportedModelError that names it and lists
the supported ones; an adapter module that cannot be imported is reported the same way (it
does not break the others); a path and a device string are accepted as shortcuts.
"""
from types import SimpleNamespace

import pytest

import worker.models as registry
from fixtures.tiny_models import tiny_model_path
from worker.backend.numpy import NumpyBackend
from worker.errors import UnsupportedModelError
from worker.models import load_model, model_class
from worker.models.gpt2 import GPT2Model
from worker.models.llama import LlamaModel


@pytest.mark.story("FT-034")
@pytest.mark.parametrize("arch, cls", [("llama", LlamaModel), ("qwen2", LlamaModel), ("phi3", LlamaModel),
                                       ("gpt2", GPT2Model)])
def test_factory_maps_architecture_to_adapter(arch, cls):
    assert model_class(arch) is cls
    assert arch in registry.supported_architectures()


@pytest.mark.story("FT-034")
def test_unknown_architecture_is_refused_clearly():
    fake = SimpleNamespace(config=SimpleNamespace(architecture="mamba"), tensors={})
    with pytest.raises(UnsupportedModelError) as err:
        load_model(fake, NumpyBackend())
    assert "mamba" in err.value.message and "llama" in err.value.message
    assert err.value.code == "UNSUPPORTED_MODEL"


@pytest.mark.story("FT-034")
def test_missing_adapter_module_does_not_break_the_others(monkeypatch):
    monkeypatch.setitem(registry._ADAPTERS, "gpt-oss", ("worker.models.no_such_module", "GptOssModel"))
    with pytest.raises(UnsupportedModelError, match="gpt-oss"):
        model_class("gpt-oss")
    assert model_class("llama") is LlamaModel


@pytest.mark.story("FT-034")
def test_path_and_device_string_shortcuts():
    model = load_model(str(tiny_model_path("gpt2")), "cpu")
    assert isinstance(model, GPT2Model) and model.backend.name == "numpy"
