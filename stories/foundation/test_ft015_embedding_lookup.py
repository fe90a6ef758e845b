"""FT-015 embedding lookup: rows of the token table for a batch of ids.

Acceptance: equals torch.nn.functional.embedding on float tables; on quantized tables equals the
rows of gguf-py's dequantization; repeated and boundary ids work; an id outside the vocabulary
is refused with InvalidParamsError, not an IndexError.
"""
import gguf
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.backend.numpy import NumpyBackend
from worker.errors import InvalidParamsError
from worker.quant import FORMATS, QuantTensor

B = NumpyBackend()


@pytest.mark.story("FT-015")
@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31), V=st.integers(1, 3000), D=st.sampled_from([1, 64, 576]),
       ids=st.lists(st.integers(0, 10**9), min_size=1, max_size=40))
def test_embedding_matches_torch(seed, V, D, ids):
    table = np.random.default_rng(seed).standard_normal((V, D)).astype(np.float32)
    ids = np.array([i % V for i in ids] + [0, V - 1])
    ours = B.embedding(table, ids)
    assert ours.dtype == np.float32 and ours.shape == (len(ids), D)
    theirs = torch.nn.functional.embedding(torch.from_numpy(ids), torch.from_numpy(table)).numpy()
    np.testing.assert_array_equal(ours, theirs)


@pytest.mark.story("FT-015")
@pytest.mark.parametrize("qtype", [f.name for f in FORMATS.values() if f.name != "F32"])   # the registry
def test_embedding_of_a_quantized_table_matches_gguf_py(qtype):
    from fixtures.gguf_corrupt import random_blocks
    from fixtures.tiny_models import _quantize

    q = gguf.GGMLQuantizationType[qtype]
    table = np.random.default_rng(15).standard_normal((300, 256)).astype(np.float32)
    try:
        raw = table.astype(np.float16).view(np.uint8) if qtype == "F16" else _quantize(table, q)
    except NotImplementedError:    # no encoder for this format here: random valid blocks of the same size
        n_blocks = table.size // FORMATS[q].block_size
        raw = random_blocks(q, n_blocks, np.random.default_rng(15))
    weight = B.load_weight(QuantTensor("token_embd.weight", q, (300, 256), np.ascontiguousarray(raw).reshape(-1)))
    ids = np.array([0, 299, 17, 17, 150])
    reference = gguf.quants.dequantize(raw, q).reshape(300, 256)[ids]
    np.testing.assert_array_equal(B.embedding(weight, ids), reference)


@pytest.mark.story("FT-015")
@pytest.mark.parametrize("bad", [-1, 100, 10**6])
def test_out_of_vocabulary_id_is_refused(bad):
    table = np.zeros((100, 8), np.float32)
    with pytest.raises(InvalidParamsError, match=str(bad)):
        B.embedding(table, np.array([3, bad]))
