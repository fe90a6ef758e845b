"""The sampling oracle: transformers' logits processors (CPU torch, float64), and hypothesis
strategies for logits with ties.

transformers' order for sampling is: processors (RepetitionPenaltyLogitsProcessor), then
warpers TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper, MinPLogitsWarper; removed
tokens get -inf. Our pipeline (worker/sampling.py) keeps that order.
"""
from __future__ import annotations

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

TIE_POOL = [-3.0, -1.0, 0.0, 0.5, 1.0, 1.0, 2.0, 4.0]     # few values: many exact ties


def hf_process(logits: np.ndarray, *, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
               min_p: float = 0.0, repetition_penalty: float = 1.0, history=()) -> np.ndarray:
    """transformers' processed scores for one row (float64); -inf where a token was removed.
    A processor is only added when its parameter is on, as transformers' generate() does."""
    import torch
    from transformers import (
        LogitsProcessorList,
        MinPLogitsWarper,
        RepetitionPenaltyLogitsProcessor,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    chain = LogitsProcessorList()
    if repetition_penalty != 1.0 and len(history):
        chain.append(RepetitionPenaltyLogitsProcessor(penalty=repetition_penalty))
    if temperature != 1.0:
        chain.append(TemperatureLogitsWarper(temperature))
    if top_k:
        chain.append(TopKLogitsWarper(top_k=top_k))
    if top_p < 1.0:
        chain.append(TopPLogitsWarper(top_p=top_p))
    if min_p > 0.0:
        chain.append(MinPLogitsWarper(min_p=min_p))
    ids = torch.tensor([list(history) or [0]], dtype=torch.long)
    scores = torch.tensor(np.asarray(logits, np.float64)[None])
    return chain(ids, scores)[0].numpy()


def hf_probs(logits: np.ndarray, **kw) -> np.ndarray:
    import torch

    return torch.softmax(torch.tensor(hf_process(logits, **kw)), dim=-1).numpy()


def logit_rows(min_size: int = 2, max_size: int = 64):
    """Rows of logits: continuous float32 values, or values from a small pool (exact ties)."""
    size = st.integers(min_size, max_size)
    smooth = size.flatmap(lambda n: arrays(np.float64, n, elements=st.floats(-30, 30, width=32)))
    tied = size.flatmap(lambda n: arrays(np.float64, n, elements=st.sampled_from(TIE_POOL)))
    return st.one_of(smooth, tied)


def temperatures():
    return st.one_of(st.sampled_from([0.1, 0.5, 1.0, 1.5, 2.0]), st.floats(0.05, 2.0))
