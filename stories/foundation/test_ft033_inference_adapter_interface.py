"""FT-033 inference adapter interface: every architecture's adapter offers the same surface.

Acceptance: each adapter exposes `config` (a ModelConfig that matches the file), `backend`,
`new_cache(n_ctx)` and `forward(ids, cache, start_pos, logits="last")` float32 logits on its
backend ([1, vocab] for the last token, [T, vocab] for every token with logits="all"); malformed
token ids are refused with InvalidParamsError naming `ids`.
"""
import inspect

import numpy as np
import pytest

from fixtures.tiny_models import ARCHS, tiny_worker_model
from worker.config import ModelConfig
from worker.errors import InvalidParamsError
from worker.models import model_class


@pytest.mark.story("FT-033")
@pytest.mark.parametrize("arch", ARCHS)
def test_adapter_surface(arch):
    cls = model_class(arch)
    assert list(inspect.signature(cls.forward).parameters) == ["self", "ids", "cache", "start_pos", "logits"]
    assert list(inspect.signature(cls.new_cache).parameters) == ["self", "n_ctx"]
    model = tiny_worker_model(arch)
    assert isinstance(model.config, ModelConfig) and model.config.architecture == arch
    logits = model.forward(np.array([1, 2, 3]), model.new_cache(8), 0, logits="all")
    host = model.backend.to_host(logits)
    assert host.shape == (3, model.config.vocab_size) and host.dtype == np.float32
    assert np.isfinite(host).all()


@pytest.mark.story("FT-033")
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("ids", [np.array([]), np.array([[1, 2]]), np.array([1.5, 2.0]), np.array([5, 49152]),
                                 np.array([-3])])
def test_bad_token_ids_are_refused(arch, ids):
    model = tiny_worker_model(arch)
    with pytest.raises(InvalidParamsError) as err:
        model.forward(ids, model.new_cache(8), 0)
    assert err.value.field == "ids"
