"""FT-035 architecture detection integration: file -> detected architecture -> adapter.

Acceptance: for each fixture file, the architecture our reader detects equals the
`general.architecture` gguf-py reads, and load_model builds that architecture's adapter with a
config matching the file's hyper-parameters; a file of an architecture we do not run is
refused with UnsupportedModelError before any weight is loaded.
"""
import gguf
import numpy as np
import pytest

from fixtures.paths import cache_dir
from fixtures.tiny_models import ARCHS, gguf_py_reader, tiny_model_path
from worker.backend.numpy import NumpyBackend
from worker.errors import UnsupportedModelError
from worker.gguf import GGUFModelFile
from worker.models import load_model, model_class


def gguf_py_fields(arch):
    reader = gguf_py_reader(arch)
    return {k: f.contents() for k, f in reader.fields.items() if not k.startswith("tokenizer.")}


@pytest.mark.story("FT-035")
@pytest.mark.parametrize("arch", ARCHS)
def test_detected_architecture_selects_the_adapter(arch):
    path = tiny_model_path(arch)
    fields = gguf_py_fields(arch)
    assert fields["general.architecture"] == arch
    backend = NumpyBackend()
    model = load_model(GGUFModelFile.open(path), backend)
    assert type(model) is model_class(arch)
    cfg = model.config
    assert cfg.architecture == arch
    assert cfg.n_layers == fields[f"{arch}.block_count"]
    assert cfg.hidden_size == fields[f"{arch}.embedding_length"]
    assert cfg.n_heads == fields[f"{arch}.attention.head_count"]
    assert cfg.n_kv_heads == fields.get(f"{arch}.attention.head_count_kv", cfg.n_heads)
    assert cfg.ffn_size == fields[f"{arch}.feed_forward_length"]
    assert backend.memory_report()["weights"] > 0


@pytest.mark.story("FT-035")
def test_unrunnable_architecture_is_refused_before_loading():
    path = cache_dir("tiny_models") / "tiny-mamba.gguf"
    writer = gguf.GGUFWriter(path, "mamba")
    writer.add_block_count(1)
    writer.add_embedding_length(8)
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    backend = NumpyBackend()
    with pytest.raises(UnsupportedModelError, match="mamba"):
        load_model(GGUFModelFile.open(path), backend)
    assert backend.memory_report()["weights"] == 0
