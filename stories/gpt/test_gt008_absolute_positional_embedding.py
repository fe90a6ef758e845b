"""GT-008 absolute positional embedding: x = token_embd[ids] + position_embd[positions].

Acceptance: the backend's two lookups and add equal transformers' GPT-2 input embedding
(wte(ids) + wpe(positions)) for the tiny GPT-2, at offset positions too (decode); a position
beyond the learned table is refused with PromptTooLongError.
"""
import numpy as np
import pytest
import torch

from fixtures.tiny_models import tiny_hf_model, tiny_worker_model
from worker.errors import PromptTooLongError


@pytest.mark.story("GT-008")
@pytest.mark.parametrize("start", [0, 1, 100, 250])
def test_token_plus_position_embedding_matches_transformers(start):
    model = tiny_worker_model("gpt2")
    hf = tiny_hf_model("gpt2").transformer
    ids = np.random.default_rng(start).integers(0, 49152, 6)
    positions = np.arange(start, start + 6)
    b = model.backend
    ours = b.to_host(b.add(b.embedding(model.token_embd, ids), b.embedding(model.position_embd, positions)))
    with torch.no_grad():
        ref = (hf.wte(torch.from_numpy(ids)) + hf.wpe(torch.from_numpy(positions))).numpy()
    np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-6)


@pytest.mark.story("GT-008")
def test_positions_beyond_the_table_are_refused():
    model = tiny_worker_model("gpt2")
    n_positions = model.config.context_length
    with pytest.raises(PromptTooLongError):
        model.new_cache(n_positions + 1)
    cache = model.new_cache(n_positions)
    with pytest.raises(PromptTooLongError, match=str(n_positions)):
        model.forward(np.array([1, 2]), cache, n_positions - 1)
