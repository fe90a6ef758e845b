"""The sampler's candidate set without sorting the vocabulary: the same tokens and the same float64
probabilities as the step-by-step pipeline of worker/sampling.py (filtered_scores, then softmax),
bit for bit, so a seed draws the same ids as before.

The pipeline's statement (docs/sampling.md) sorts all the vocabulary for top-p and takes a softmax
over all of it for every filter; with a 151,936-token vocabulary that costs tens of milliseconds a
token. Here:
- top-k: the k-th largest score by a partition (of the scores above a bound read off every 16th
  score, when enough reach it), then the tokens at or above it (ties kept);
- top-p: sort only the best m candidates (all ties at the m-th score included, so they are the
  first m of the pipeline's stable order), growing m until the cumulative probability is past p
  with a margin larger than the rounding of the running sum; the tokens beyond are out;
- min-p, when top-p is off: a threshold on exp(score - max), no sort at all;
- softmax sums: the probabilities of the pipeline divide by a sum over the whole vocabulary
  (numpy's pairwise summation, whose rounding depends on where each term sits), so each sum is
  taken over a vocabulary-sized array holding the kept terms at their ids and zeros elsewhere (one
  such array per thread, reused: a fresh one would cost page faults on every token);
- the draw's cumulative sum runs over the kept tokens in ascending id order: the zeros of the
  removed tokens add nothing, so its values equal the pipeline's at every kept token.
"""
from __future__ import annotations

import threading
from typing import Sequence

import numpy as np

_scratch = threading.local()         # per thread: a [V] array of zeros for _vocab_sum

TOP_P_ROUNDS = (64, 512, 4096, 32768)    # candidates sorted in each top-p round, then all of them
SAMPLE_STRIDE = 16           # top-k: every 16th score bounds the k-th largest from below
CUMSUM_SLACK = 1e-15         # > the rounding of a running float64 sum of probabilities (<= 2.3e-16)
MIN_P_SLACK = 1e-9           # relative: far above the rounding of the pipeline's min-p comparison


def kept_distribution(scores: np.ndarray, top_k: int, top_p: float, min_p: float, *,
                      overwrite: bool = False) -> tuple[Sequence[int], np.ndarray]:
    """(ids, probs) for scores [V] float64 (penalised logits / temperature; -inf allowed, one
    finite score at least): the ids the filters keep, ascending (an int array, or range(V) when
    every token is kept), and their probabilities, equal to worker.sampling's softmax(filtered
    scores) at those ids. overwrite: `scores` is scratch the caller no longer needs (fresh
    vocabulary-sized arrays cost page faults on every token)."""
    scores = np.asarray(scores, dtype=np.float64)
    V = scores.size
    if 0 < top_k < V:
        kth = _kth_largest(scores, top_k)
        ids = np.flatnonzero(scores >= kth)
        ids = ids[scores[ids] > -np.inf]
    elif scores.min() > -np.inf:
        ids = None                                   # every token: no gather, no scatter
    else:
        ids = np.flatnonzero(scores > -np.inf)
    s = scores if ids is None else scores[ids]
    in_place = overwrite and ids is None and top_p >= 1.0        # s is not needed after e
    e = np.subtract(s, s.max(), out=s if in_place else None)
    np.exp(e, out=e)                                 # the pipeline's exp(score - max) at each kept id

    if top_p < 1.0:
        keep = _top_p_positions(s, e, _vocab_sum(e, ids, V), top_p)
        ids, s, e = (keep if ids is None else ids[keep]), s[keep], e[keep]
    if min_p > 0.0:
        if top_p >= 1.0:                             # certainly below the pipeline's threshold: drop unsorted
            near = np.flatnonzero(e >= min_p * (1.0 - MIN_P_SLACK))
            total = _vocab_sum(e, ids, V)            # the pipeline's sum still holds every kept term
            ids, e = (near if ids is None else ids[near]), e[near]
            probs = e / total
        else:
            probs = e / _vocab_sum(e, ids, V)
        keep = np.flatnonzero(probs >= min_p * probs.max())
        ids, e = (keep if ids is None else ids[keep]), e[keep]
    e /= _vocab_sum(e, ids, V)                       # e is this function's own array: divided in place
    return (range(V) if ids is None else ids), e     # a range: no [V] array of ids to build


def _kth_largest(scores: np.ndarray, k: int) -> float:
    """The k-th largest score: partitioned among the scores at or above a bound taken from every
    SAMPLE_STRIDE-th score when at least k reach it (the k-th largest of all is then among them),
    else among all scores."""
    n = scores.size
    j = 2 * (k // SAMPLE_STRIDE) + 8                 # about twice k of all scores should reach the bound
    if 4 * j * SAMPLE_STRIDE < n:
        sample = scores[::SAMPLE_STRIDE]
        bound = np.partition(sample, sample.size - j)[sample.size - j]
        high = scores[scores >= bound]
        if high.size >= k:
            return np.partition(high, high.size - k)[high.size - k]
    return np.partition(scores, n - k)[n - k]


def _vocab_sum(terms: np.ndarray, ids: np.ndarray | None, V: int) -> float:
    """sum() of a [V] array holding `terms` at `ids` (None: all of them) and 0 elsewhere."""
    if ids is None:
        return terms.sum()
    full = getattr(_scratch, "zeros", None)
    if full is None or full.size != V:
        full = _scratch.zeros = np.zeros(V)
    full[ids] = terms
    try:
        return full.sum()
    finally:
        full[ids] = 0.0                              # all zeros again for the next sum


def _top_p_positions(s: np.ndarray, e: np.ndarray, total: float, p: float) -> np.ndarray:
    """Positions (ascending) of the candidates the pipeline's top_p_keep keeps: walking in stable
    descending-score order, each while the probability (e / total) before it is below p (the
    first always)."""
    n = s.size
    for m in [m for m in TOP_P_ROUNDS if m < n] + [n]:
        if m < n:
            head = np.flatnonzero(s >= _kth_largest(s, m))              # every tie at the m-th score
        else:
            head = np.arange(n)
        order = head[np.argsort(-s[head], kind="stable")]
        in_order = e[order] / total
        cumulative = np.cumsum(in_order)
        if cumulative[-1] >= p + CUMSUM_SLACK:
            break            # any later token has at least cumulative[-1] - rounding > p before it
    kept = cumulative - in_order < p
    kept[0] = True
    return np.sort(order[kept])
