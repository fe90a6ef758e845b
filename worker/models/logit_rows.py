"""Which rows of logits a forward pass computes: the last token's only, or every token's.

Generation needs the logits of the last position alone; at a 2,048-token prompt and a
152k-token vocabulary the output product over every row would cost more than the rest of the
prefill. Like llama.cpp (`llm_graph_input_out_ids`: only the rows it outputs go through the last
layer's feed-forward, the final norm and the output product), `logits="last"` drops the other
rows after the last layer's attention, whose K/V rows must still reach the cache.
"""
from __future__ import annotations

from worker.errors import InvalidParamsError

LOGIT_ROWS = ("last", "all")


def last_row_only(logits: str, n_tokens: int) -> bool:
    """True when the pass may drop every row but the last (a one-token pass has nothing to drop)."""
    if logits not in LOGIT_ROWS:
        raise InvalidParamsError(f"logits must be one of {LOGIT_ROWS}, got {logits!r}", field="logits")
    return logits == "last" and n_tokens > 1
