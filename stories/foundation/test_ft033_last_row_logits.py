"""FT-033 inference adapter interface: which rows of logits a forward pass computes.

Acceptance: `forward(ids, cache, start_pos)` gives the last token's logits [1, vocab] (what
generation needs; llama.cpp likewise computes only the rows it outputs) and `logits="all"` gives
every token's [T, vocab]. On every tiny fixture architecture, with a product that rounds each row
independently of the others, the last row alone equals the last row of all rows exactly; with the
NumPy backend's BLAS product (whose rounding may depend on how many rows it multiplies) it agrees
to float32 rounding. Every row of "all" is checked against transformers by the adapter stories
(LT-024, LT-031, LT-033, GT-026, GT-040, FT-036); the engine's prefill multiplies the output
matrix with one row only; anything but "last"/"all" is refused naming `logits`.
"""
import numpy as np
import pytest

from fixtures.hf_reference import relative_logit_error
from fixtures.tiny_gpt_oss import tiny_gpt_oss_path
from fixtures.tiny_models import ARCHS, tiny_model_path
from worker.backend.numpy import NumpyBackend
from worker.errors import InvalidParamsError
from worker.gguf import GGUFModelFile
from worker.models import load_model

pytestmark = pytest.mark.story("FT-033")
IDS = np.random.default_rng(33).integers(0, 49152, 11)
FIXTURES = [(a, "F32") for a in ARCHS] + [("llama", "Q4_K"), ("qwen2", "Q8_0"), ("gpt2", "Q6_K"), ("gpt-oss", "")]


class RowByRowProducts(NumpyBackend):
    """The NumPy reference with each row of a product computed on its own, so that a row's value
    cannot depend on which other rows share the call."""

    def matmul(self, x, w, bias=None, expert=None):
        x = np.asarray(x, np.float32)
        rows = [super(RowByRowProducts, self).matmul(x[i:i + 1], w, bias, expert) for i in range(len(x))]
        return np.concatenate(rows) if rows else super().matmul(x, w, bias, expert)


class CountingOutputRows(NumpyBackend):
    """The NumPy reference recording how many rows each product with the output matrix has."""

    def __init__(self):
        super().__init__()
        self.output = None
        self.output_rows: list[int] = []

    def matmul(self, x, w, bias=None, expert=None):
        if w is self.output:
            self.output_rows.append(len(x))
        return super().matmul(x, w, bias, expert)


def _load(arch: str, qtype: str, backend):
    path = tiny_gpt_oss_path() if arch == "gpt-oss" else tiny_model_path(arch, qtype)
    return load_model(GGUFModelFile.open(path), backend)


def _logits(model, ids, **rows):
    return model.backend.to_host(model.forward(ids, model.new_cache(len(ids)), 0, **rows))


@pytest.mark.parametrize("arch, qtype", FIXTURES)
def test_last_row_equals_the_last_of_all_rows_exactly(arch, qtype):
    model = _load(arch, qtype, RowByRowProducts())
    every = _logits(model, IDS, logits="all")
    last = _logits(model, IDS)
    assert every.shape == (len(IDS), model.config.vocab_size)
    assert last.shape == (1, model.config.vocab_size)
    np.testing.assert_array_equal(last, every[-1:])
    assert not np.array_equal(every[-2], every[-1])       # the rows differ: taking a wrong one would show


@pytest.mark.parametrize("arch, qtype", FIXTURES)
def test_last_row_agrees_with_all_rows_on_the_reference_backend(arch, qtype):
    model = _load(arch, qtype, NumpyBackend())
    every, last = _logits(model, IDS, logits="all"), _logits(model, IDS, logits="last")
    assert relative_logit_error(last, every[-1:]) < 1e-6
    assert int(last.argmax()) == int(every[-1].argmax())


def test_one_token_gives_its_row_either_way():
    model = _load("qwen2", "F32", RowByRowProducts())
    cache_a, cache_b = model.new_cache(len(IDS)), model.new_cache(len(IDS))
    model.forward(IDS[:-1], cache_a, 0, logits="all")
    model.forward(IDS[:-1], cache_b, 0)
    step_all = model.backend.to_host(model.forward(IDS[-1:], cache_a, len(IDS) - 1, logits="all"))
    step_last = model.backend.to_host(model.forward(IDS[-1:], cache_b, len(IDS) - 1))
    np.testing.assert_array_equal(step_all, step_last)    # the cache holds every row's K/V either way
    np.testing.assert_array_equal(step_last, _logits(model, IDS)[-1:])


@pytest.mark.parametrize("rows", ["first", "ALL", "", None])
def test_other_row_choices_are_refused(rows):
    model = _load("llama", "F32", NumpyBackend())
    with pytest.raises(InvalidParamsError) as err:
        model.forward(IDS, model.new_cache(len(IDS)), 0, logits=rows)
    assert err.value.field == "logits"


def test_engine_prefill_multiplies_the_output_matrix_with_one_row():
    from fixtures.engine_greedy import IdsOnly, engine_greedy

    backend = CountingOutputRows()
    model = _load("llama", "F32", backend)
    backend.output = model.output
    tokens = engine_greedy(model, IdsOnly(), IDS, 3)
    assert len(tokens) == 3
    assert backend.output_rows == [1, 1, 1]                # the prompt's last row, then two decode steps


@pytest.mark.gpu
@pytest.mark.parametrize("arch, qtype", FIXTURES)
def test_cuda_last_row_agrees_with_the_reference(arch, qtype):
    """On the GPU the last row comes from one-row products (the decode kernels) instead of the
    prefill tiles: it stays within FT-012's logits NMSE bound of the NumPy reference's last row, as
    does the last row of "all", and a single-token step (a captured decode graph) too."""
    from stories.foundation._cuda_conformance import cuda_backend

    model = _load(arch, qtype, cuda_backend())
    reference = _logits(_load(arch, qtype, NumpyBackend()), IDS, logits="all").astype(np.float64)
    b = model.backend
    cache = model.new_cache(len(IDS))
    try:
        last = b.to_host(model.forward(IDS[:-1], cache, 0))
        step = b.to_host(model.forward(IDS[-1:], cache, len(IDS) - 1))
    finally:
        b.free_kv_cache(cache)
    every = _logits(model, IDS, logits="all")
    assert last.shape == step.shape == (1, model.config.vocab_size) and every.shape == reference.shape
    for ours, ref in ((last, reference[-2:-1]), (step, reference[-1:]), (every[-1:], reference[-1:])):
        nmse = float(np.sum((ours - ref) ** 2) / np.sum(ref ** 2))
        assert nmse < 1e-5, f"{arch} {qtype}: last-row logits NMSE {nmse:.2e} against the NumPy reference"
