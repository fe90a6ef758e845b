"""Plain greedy generation: prefill the prompt, then one token at a time through the KV cache."""
from __future__ import annotations

from typing import Callable

import numpy as np


def greedy_generate(model, prompt_ids, n_tokens: int, *, n_ctx: int | None = None,
                    on_token: Callable[[int], None] | None = None) -> list[int]:
    """The `n_tokens` most likely next tokens, each fed back in (no stop rule, no sampling).

    The cache holds `n_ctx` positions (default: exactly prompt + n_tokens - 1, the last token
    is never fed back). `on_token(id)` is called as each token is chosen, for streaming.
    """
    prompt = np.asarray(prompt_ids, dtype=np.int64).reshape(-1)
    if n_tokens <= 0:
        return []
    backend = model.backend
    cache = model.new_cache(n_ctx or len(prompt) + n_tokens - 1)
    try:
        tokens: list[int] = []
        logits = model.forward(prompt, cache, 0)
        n_past = len(prompt)
        while True:
            next_id = int(backend.argmax(logits[-1]))
            tokens.append(next_id)
            if on_token is not None:
                on_token(next_id)
            if len(tokens) == n_tokens:
                return tokens
            logits = model.forward(np.array([next_id]), cache, n_past)
            n_past += 1
    finally:
        backend.free_kv_cache(cache)
