"""FT-019 / FT-020 the sampler's fast path (worker/sampling_fast.py) changes no draw.

Acceptance:
- on random logits with ties and -inf, for any temperature, top-k, top-p and min-p, the fast path
  keeps exactly the tokens a plain sort-based statement of the filters keeps (written below: sort
  everything, softmax over the whole vocabulary after each filter), with exactly the same float64
  probabilities, and the draw over them picks the id the draw over the whole vocabulary picks for
  any u (the last double below 1 included); its top-p rounds and its top-k sampling stride are
  shrunk here so that small rows go through every branch, and the settings the worker uses run
  on 49,152- and 151,936-token rows;
- Sampler.sample draws the same ids, seed for seed, as the pipeline of worker/sampling.py whose
  filters FT-019 checks against transformers (filtered softmax, then the inverse CDF over token
  ids) — the reproducibility of a seed (FT-020, LT-026) is unchanged.
The speed is measured by benchmarks/bench_sampler.py, not here.
"""
from __future__ import annotations

from unittest import mock

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stories.foundation._sampling_oracle import logit_rows, temperatures
from worker import sampling_fast
from worker.sampling import Sampler, SamplingParams, inverse_cdf_pick, sampling_distribution
from worker.sampling_fast import kept_distribution


def softmax_over_vocab(s: np.ndarray) -> np.ndarray:
    e = np.exp(s - s.max())
    return e / e.sum()


def plain_kept(scores: np.ndarray, top_k: int, top_p: float, min_p: float):
    """The filters as docs/sampling.md states them, on the whole vocabulary, with full sorts."""
    s = np.array(scores, dtype=np.float64)
    if 0 < top_k < s.size:
        kth = np.sort(s)[::-1][top_k - 1]                    # ties at the k-th are kept
        s[s < kth] = -np.inf
    if top_p < 1.0:
        probs = softmax_over_vocab(s)
        order = np.argsort(-s, kind="stable")                # descending score, then ascending id
        before = np.cumsum(probs[order]) - probs[order]
        s[order[1:][before[1:] >= top_p]] = -np.inf          # the most likely token always stays
    if min_p > 0.0:
        probs = softmax_over_vocab(s)
        s[probs < min_p * probs.max()] = -np.inf
    ids = np.flatnonzero(s > -np.inf)
    return ids, softmax_over_vocab(s)[ids]


@st.composite
def rows_with_minus_inf(draw):
    row = np.array(draw(logit_rows(min_size=2, max_size=200)), dtype=np.float64)
    holes = draw(st.lists(st.integers(0, row.size - 1), max_size=row.size - 1))
    row[holes] = -np.inf
    if not np.isfinite(row).any():
        row[draw(st.integers(0, row.size - 1))] = draw(st.sampled_from([0.0, 1.0, -3.0]))
    return row


FILTERS = dict(
    t=temperatures(),
    top_k=st.one_of(st.just(0), st.integers(1, 220)),
    top_p=st.one_of(st.just(1.0), st.sampled_from([0.1, 0.5, 0.9, 0.95, 0.999]), st.floats(1e-6, 1.0)),
    min_p=st.one_of(st.just(0.0), st.sampled_from([0.01, 0.05, 0.3]), st.floats(0.0, 0.999)),
    rounds=st.sampled_from([sampling_fast.TOP_P_ROUNDS, (1,), (2, 5, 17), (3, 40)]),
    stride=st.sampled_from([sampling_fast.SAMPLE_STRIDE, 1, 2, 3]),
)


@pytest.mark.story("FT-019")
@settings(max_examples=600, deadline=None)
@given(row=rows_with_minus_inf(), u=st.one_of(st.floats(0.0, 1.0, exclude_max=True), st.just(1.0 - 2.0**-53)),
       **FILTERS)
def test_fast_path_keeps_the_plain_candidates_with_the_same_probabilities(row, u, t, top_k, top_p, min_p, rounds,
                                                                          stride):
    scores = row / t
    want_ids, want_probs = plain_kept(scores, top_k, top_p, min_p)
    with mock.patch.object(sampling_fast, "TOP_P_ROUNDS", rounds), mock.patch.object(sampling_fast, "SAMPLE_STRIDE",
                                                                                      stride):
        ids, probs = kept_distribution(scores, top_k, top_p, min_p)
    np.testing.assert_array_equal(ids, want_ids)
    np.testing.assert_array_equal(probs, want_probs)
    over_vocab = np.zeros(row.size)                          # the draw over the whole vocabulary
    over_vocab[want_ids] = want_probs
    assert ids[inverse_cdf_pick(probs, u)] == inverse_cdf_pick(over_vocab, u)


@pytest.mark.story("FT-019")
@pytest.mark.parametrize("vocab", [49_152, 151_936])
@pytest.mark.parametrize("scale, top_k, top_p, min_p", [
    (3.0, 0, 0.9, 0.0), (0.5, 0, 0.99, 0.0), (3.0, 40, 0.95, 0.05), (1.0, 0, 1.0, 0.05), (10.0, 5000, 0.5, 1e-4),
])
def test_fast_path_on_real_vocabulary_sizes(vocab, scale, top_k, top_p, min_p):
    row = np.random.default_rng(vocab).normal(0.0, scale, vocab)
    row = np.round(row * 256) / 256                          # many exact ties
    want_ids, want_probs = plain_kept(row / 0.8, top_k, top_p, min_p)
    ids, probs = kept_distribution(row / 0.8, top_k, top_p, min_p)
    np.testing.assert_array_equal(ids, want_ids)
    np.testing.assert_array_equal(probs, want_probs)


@pytest.mark.story("FT-019")
@pytest.mark.parametrize("top_k", [1, 40, 700])
def test_top_k_when_the_strided_sample_misleads(top_k):
    """Every 16th score high, the rest low: the bound read off the sample has fewer than k tokens
    above it, so the k-th largest must come from all the scores."""
    row = np.random.default_rng(top_k).normal(0.0, 1.0, 151_936)
    row[::sampling_fast.SAMPLE_STRIDE] += 10.0
    want_ids, want_probs = plain_kept(row, top_k, 1.0, 0.0)
    ids, probs = kept_distribution(row, top_k, 1.0, 0.0)
    np.testing.assert_array_equal(ids, want_ids)
    np.testing.assert_array_equal(probs, want_probs)


def pipeline_draws(params: SamplingParams, seed: int, rows, history) -> list[int]:
    """How Sampler.sample drew before the fast path: the filtered softmax over the vocabulary and one
    uniform per token from PCG64(seed), inverse CDF over ascending ids."""
    rng = np.random.Generator(np.random.PCG64(seed))
    return [inverse_cdf_pick(sampling_distribution(row, params, history), float(rng.random())) for row in rows]


@pytest.mark.story("FT-020")
@pytest.mark.parametrize("params", [
    dict(temperature=0.8), dict(temperature=1.3, top_k=40), dict(temperature=0.7, top_p=0.9),
    dict(temperature=1.0, min_p=0.05), dict(temperature=0.9, top_k=50, top_p=0.95, min_p=0.02,
                                             repetition_penalty=1.3, repeat_last_n=16),
])
def test_seeded_draws_are_the_pipelines(params):
    rng = np.random.default_rng(20)
    rows = [rng.normal(0.0, 2.0, 49_152).astype(np.float32) for _ in range(24)]
    history = [int(i) for i in rng.integers(0, 49_152, 40)]
    sp = SamplingParams(**params)
    for seed in (0, 42, 2**64 - 1):
        sampler = Sampler(sp, seed)
        assert [sampler.sample(row, history) for row in rows] == pipeline_draws(sp, seed, rows, history)
