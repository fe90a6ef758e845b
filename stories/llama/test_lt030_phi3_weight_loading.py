"""LT-030 Phi-3 weight loading: every tensor of a Phi-3 GGUF is loaded, the fused ones split the
way transformers' Phi-3 code splits them.

Acceptance, for an F32 file and quantized ones (Q8_0, Q4_K):
- the adapter consumes exactly the file's tensors (none missing, none left over), each a name
  gguf-py defines for the PHI3 architecture; Phi-3 has no separate attn_q/k/v or ffn_gate;
- the fused blk.N.attn_qkv is split into Q, K, V whose values equal what transformers'
  Phi3Attention takes out of qkv_proj (holding gguf-py's dequantization of the stored tensor);
- the fused blk.N.ffn_up is split into gate and up equal to what transformers' Phi3MLP chunks
  out of gate_up_proj (gate first);
- the split parts keep the stored quant format and bytes (no re-quantization, no copy);
- every other tensor equals gguf-py's dequantization of it;
- progress is reported once per tensor, in stored bytes that add up to the file's tensor data;
- a fused tensor of the wrong shape, or a missing one, is refused naming the tensor.
"""
from __future__ import annotations

import functools

import gguf
import numpy as np
import pytest
import torch

from fixtures.tiny_models import gguf_py_reader, tiny_model_path, tiny_worker_model
from stories.llama.test_lt022_qwen_weight_mapping import WithoutTensor, gguf_py_names
from worker.backend.numpy import NumpyBackend
from worker.errors import UnsupportedModelError
from worker.gguf import GGUFModelFile
from worker.models import load_model

pytestmark = pytest.mark.story("LT-030")

QTYPES = ["F32", "Q8_0", "Q4_K"]


def _stored(qtype: str) -> dict:
    """name -> gguf-py ReaderTensor of the fixture file."""
    return {t.name: t for t in gguf_py_reader("phi3", qtype).tensors}


def _oracle(t) -> np.ndarray:
    """gguf-py's float32 values of a stored tensor, in NumPy (row-major) order."""
    values = np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), np.float32)
    return values.reshape(tuple(int(n) for n in reversed(t.shape)))


def _ours(model, weight) -> np.ndarray:
    """Our loaded weight's values W [n_out, n_in], read back through the backend: x = I gives
    I @ W.T = W.T exactly (every output is one product with 1 plus zeros)."""
    b = model.backend
    identity = np.eye(weight.shape[-1], dtype=np.float32)
    return b.to_host(b.matmul(identity, weight)).T


@functools.lru_cache(maxsize=1)
def _phi3config():
    """transformers' Phi3Config for the fixture, built by transformers from the GGUF file itself."""
    from transformers import AutoConfig

    path = tiny_model_path("phi3")
    config = AutoConfig.from_pretrained(str(path.parent), gguf_file=path.name)
    config._attn_implementation = "eager"
    return config


class _Captured(Exception):
    pass


def _transformers_qkv(fused: np.ndarray, monkeypatch):
    """(Q, K, V) weights [rows, hidden] as transformers' Phi3Attention slices them out of a
    qkv_proj holding `fused`: its forward runs on x = I and is stopped at the attention call."""
    from transformers.models.phi3 import modeling_phi3

    config = _phi3config()
    attention = modeling_phi3.Phi3Attention(config, layer_idx=0).eval()
    seen = {}

    def rope(q, k, cos, sin, *args, **kwargs):          # record Q and K before rotation
        seen["q"], seen["k"] = q, k
        return q, k

    def attend(module, q, k, v, *args, **kwargs):
        seen["v"] = v
        raise _Captured

    monkeypatch.setattr(modeling_phi3, "apply_rotary_pos_emb", rope)
    monkeypatch.setattr(modeling_phi3, "eager_attention_forward", attend)
    D = config.hidden_size
    with torch.no_grad():
        attention.qkv_proj.weight.copy_(torch.from_numpy(np.array(fused)))
        x = torch.eye(D).unsqueeze(0)                     # [1, T=D, D]
        with pytest.raises(_Captured):
            attention(x, position_embeddings=(None, None), attention_mask=None)
    # [1, heads, T, head_dim] -> [T, heads * head_dim] = W.T
    return tuple(seen[p][0].transpose(0, 1).reshape(D, -1).numpy().T for p in ("q", "k", "v"))


def _transformers_gate_up(fused: np.ndarray):
    """(gate, up) weights as transformers' Phi3MLP chunks gate_up_proj: the activation is made to
    record its input (gate) and return 1, and down_proj is the identity, so the output is up."""
    from transformers.models.phi3 import modeling_phi3

    config = _phi3config()
    mlp = modeling_phi3.Phi3MLP(config).eval()
    seen = {}

    class RecordGate(torch.nn.Module):
        def forward(self, gate):
            seen["gate"] = gate
            return torch.ones_like(gate)

    mlp.activation_fn = RecordGate()
    mlp.down_proj = torch.nn.Identity()
    with torch.no_grad():
        mlp.gate_up_proj.weight.copy_(torch.from_numpy(np.array(fused)))
        up = mlp(torch.eye(config.hidden_size).unsqueeze(0))[0]
    return seen["gate"][0].numpy().T, up.numpy().T


# -- names ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("qtype", QTYPES)
def test_every_phi3_tensor_is_mapped_and_none_left_over(qtype):
    model = tiny_worker_model("phi3", qtype)
    stored = _stored(qtype)
    assert set(model.tensor_names) == set(stored)
    assert set(stored) <= gguf_py_names(gguf.MODEL_ARCH.PHI3, model.config.n_layers)
    for i in range(model.config.n_layers):
        assert f"blk.{i}.attn_qkv.weight" in stored and f"blk.{i}.ffn_up.weight" in stored
        assert not {f"blk.{i}.attn_q.weight", f"blk.{i}.ffn_gate.weight"} & set(stored)
    for name, t in stored.items():      # llama.cpp's rule: matrices quantized, vectors F32
        expected = qtype if len(t.shape) == 2 else "F32"
        assert t.tensor_type.name == expected, name


# -- the fused tensors split as transformers splits them -------------------------------------------

@pytest.mark.parametrize("qtype", QTYPES)
def test_fused_qkv_splits_as_transformers_phi3_attention_slices_it(qtype, monkeypatch):
    model = tiny_worker_model("phi3", qtype)
    stored = _stored(qtype)
    for i, blk in enumerate(model.blocks):
        fused = _oracle(stored[f"blk.{i}.attn_qkv.weight"])
        q, k, v = _transformers_qkv(fused, monkeypatch)
        cfg = model.config
        assert q.shape == (cfg.n_heads * cfg.head_dim, cfg.hidden_size)
        assert k.shape == v.shape == (cfg.n_kv_heads * cfg.head_dim, cfg.hidden_size)
        for part, ours, theirs in (("Q", blk.wq, q), ("K", blk.wk, k), ("V", blk.wv, v)):
            mismatches = np.count_nonzero(_ours(model, ours) != theirs)
            assert mismatches == 0, f"blk.{i} {part} ({qtype}): {mismatches} values differ"
        assert blk.bq is blk.bk is blk.bv is None        # Phi-3 has no QKV bias


@pytest.mark.parametrize("qtype", QTYPES)
def test_fused_gate_up_splits_as_transformers_phi3_mlp_chunks_it(qtype):
    model = tiny_worker_model("phi3", qtype)
    stored = _stored(qtype)
    for i, blk in enumerate(model.blocks):
        gate, up = _transformers_gate_up(_oracle(stored[f"blk.{i}.ffn_up.weight"]))
        assert gate.shape == up.shape == (model.config.ffn_size, model.config.hidden_size)
        for part, ours, theirs in (("gate", blk.w_gate, gate), ("up", blk.w_up, up)):
            mismatches = np.count_nonzero(_ours(model, ours) != theirs)
            assert mismatches == 0, f"blk.{i} {part} ({qtype}): {mismatches} values differ"


@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_K"])
def test_split_parts_keep_the_stored_format_and_bytes(qtype):
    """Rows of a GGUF tensor are whole quant blocks: each part is the stored bytes of its rows
    (NumPy reference backend: a weight keeps the QuantTensor it was given)."""
    model = tiny_worker_model("phi3", qtype)
    stored = _stored(qtype)
    for i, blk in enumerate(model.blocks):
        for fused_name, parts in ((f"blk.{i}.attn_qkv.weight", (blk.wq, blk.wk, blk.wv)),
                                  (f"blk.{i}.ffn_up.weight", (blk.w_gate, blk.w_up))):
            raw = np.asarray(stored[fused_name].data).reshape(-1)
            start = 0
            for part in parts:
                assert part.tensor.qtype == stored[fused_name].tensor_type, fused_name
                n = part.tensor.raw.size
                assert bytes(part.tensor.raw) == raw[start:start + n].tobytes(), fused_name
                start += n
            assert start == raw.size


@pytest.mark.parametrize("qtype", QTYPES)
def test_every_other_tensor_equals_gguf_py_dequantization(qtype):
    model = tiny_worker_model("phi3", qtype)
    stored = _stored(qtype)
    weights = {"token_embd.weight": model.token_embd, "output_norm.weight": model.output_norm,
               "output.weight": model.output}
    for i, blk in enumerate(model.blocks):
        p = f"blk.{i}."
        weights.update({p + "attn_norm.weight": blk.attn_norm, p + "attn_output.weight": blk.wo,
                        p + "ffn_norm.weight": blk.ffn_norm, p + "ffn_down.weight": blk.w_down})
    assert set(weights) | {n for n in stored if n.endswith(("attn_qkv.weight", "ffn_up.weight"))} == set(stored)
    for name, weight in weights.items():
        theirs = _oracle(stored[name])
        ours = weight.dense()                  # the NumPy backend's float32 copy of the weight
        assert ours.shape == theirs.shape, name
        assert np.count_nonzero(ours != theirs) == 0, f"{name} ({qtype}) differs from gguf-py"


# -- progress ---------------------------------------------------------------------------------------

@pytest.mark.story("LT-030", "FT-049")
@pytest.mark.parametrize("qtype", ["F32", "Q4_K"])
def test_progress_is_reported_once_per_tensor_in_stored_bytes(qtype):
    stored = _stored(qtype)
    calls = []
    with GGUFModelFile.open(tiny_model_path("phi3", qtype)) as gf:
        load_model(gf, NumpyBackend(), progress=lambda done, total, name: calls.append((done, total, name)))
    names = [name for _, _, name in calls]
    assert sorted(names) == sorted(stored), "each tensor reported exactly once"
    total = sum(int(t.n_bytes) for t in stored.values())
    assert {t for _, t, _ in calls} == {total}
    previous = 0
    for done, _, name in calls:
        assert done - previous == int(stored[name].n_bytes), name
        previous = done
    assert previous == total


# -- refusals ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,shape", [("blk.1.attn_qkv.weight", (256, 256)), ("blk.0.ffn_up.weight", (512, 256))])
def test_fused_tensor_of_the_wrong_shape_is_refused_by_name(name, shape):
    with GGUFModelFile.open(tiny_model_path("phi3")) as gf:
        with pytest.raises(UnsupportedModelError) as e:
            load_model(WithoutTensor(gf, name, shape=shape), NumpyBackend())
    assert name in e.value.message and "shape" in e.value.message


# without attn_qkv the adapter looks for separate attn_q/k/v, and names the first one it lacks
MISSING = {"blk.1.attn_qkv.weight": "blk.1.attn_q.weight", "blk.0.ffn_up.weight": "blk.0.ffn_up.weight",
           "output_norm.weight": "output_norm.weight"}


@pytest.mark.parametrize("name", sorted(MISSING))
def test_missing_tensor_is_refused_by_name(name):
    with GGUFModelFile.open(tiny_model_path("phi3")) as gf:
        with pytest.raises(UnsupportedModelError) as e:
            load_model(WithoutTensor(gf, name), NumpyBackend())
    assert repr(MISSING[name]) in e.value.message, e.value.message
