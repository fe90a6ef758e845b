"""LT-002 GGUF metadata, seen by a third party: the fixture files we write are valid GGUF for
transformers too.

Acceptance: for every tiny fixture architecture transformers can read from GGUF (llama, qwen2,
phi3, gpt2), `AutoModelForCausalLM.from_pretrained(dir, gguf_file=...)` loads our file, reads the
shape we wrote (layers, width, heads, vocabulary), and computes the same logits as the oracle model
built from the weights the fixture was written from (max |difference| under 1e-5 of the logit
range). A fixture transformers misread would make every other comparison against it meaningless.

One transformers limitation, worked around in the open: its GGUF mapping for gpt2 writes
`gpt2.context_length` into `n_ctx`, which GPT2Config no longer uses for the position table
(`n_positions`, default 1024), so any GPT-2 GGUF with another context is misread; we pass
`n_positions` = the file's context length explicitly and check that `n_ctx` was read from the file.
"""
import numpy as np
import pytest

from fixtures.hf_reference import hf_logits, relative_logit_error
from fixtures.tiny_models import tiny_hf_model, tiny_model_path

pytestmark = pytest.mark.story("LT-002")

PROMPT = np.random.default_rng(2).integers(0, 49152, 12)


@pytest.mark.parametrize("qtype", ["F32", "Q8_0"])
@pytest.mark.parametrize("arch", ["llama", "qwen2", "phi3", "gpt2"])
def test_transformers_loads_our_fixture_as_the_model_we_wrote(arch, qtype):
    import torch
    import transformers as tf

    path = tiny_model_path(arch, qtype)
    oracle = tiny_hf_model(arch, qtype)
    extra = {"n_positions": oracle.config.n_positions} if arch == "gpt2" else {}
    theirs = tf.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32,
                                                     attn_implementation="eager", **extra).eval()
    if arch == "gpt2":
        assert theirs.config.n_ctx == oracle.config.n_positions   # what transformers read from our file
    for key in ("num_hidden_layers", "hidden_size", "num_attention_heads", "vocab_size"):
        assert getattr(theirs.config, key, None) == getattr(oracle.config, key, None), key
    error = relative_logit_error(hf_logits(theirs, PROMPT), hf_logits(oracle, PROMPT))
    assert error < 1e-5, f"{arch} {qtype}: transformers' reading of our file differs by {error:.2e} of the range"
