"""LT-023 weight loading, quant formats, in a whole model: a tiny llama whose weights use every
format of the registry, each in some weight role (fixtures/every_format_model.py).

Acceptance: `python -m worker inspect` reads the file and lists every format with its tensor
count; every tensor dequantizes through the GGUF reader bit-exactly as gguf-py does; the model
loads on the NumPy backend and its logits and greedy tokens are identical to those of the same
model stored as F32 (gguf-py's dequantization of each weight), so no weight role mishandles any
format; on the GPU, CUDA's greedy tokens agree with the NumPy reference for 64 steps (FT-012's check).
"""
from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter

import gguf
import numpy as np
import pytest

from fixtures import every_format_model
from fixtures.engine_greedy import IdsOnly, engine_greedy
from fixtures.paths import REPO_ROOT
from worker.gguf import GGUFModelFile
from worker.quant import FORMATS, dequantize

pytestmark = pytest.mark.story("LT-023")


@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("every-format")
    return every_format_model.write(d / "every.gguf"), every_format_model.write(d / "every-f32.gguf", as_f32=True)


def test_every_registry_format_is_in_the_model():
    assert set(every_format_model.weight_types().values()) == set(FORMATS)


def test_inspect_lists_every_format(model_files):
    path, _ = model_files
    result = subprocess.run([sys.executable, "-m", "worker", "inspect", str(path), "--json"], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    info = json.loads(result.stdout)
    assert info["valid"] and info["architecture"] == "llama"
    expected = Counter(q.name for q in every_format_model.weight_types().values())
    expected["F32"] += 2 * every_format_model.DIMS["layers"] + 1          # norms
    assert {name: row["count"] for name, row in info["tensor_types"].items()} == dict(expected)
    for name, row in info["tensor_types"].items():
        assert row["bytes"] > 0, name


def test_every_tensor_read_through_the_reader_is_gguf_py_bit_exact(model_files):
    path, _ = model_files
    oracle = gguf.GGUFReader(str(path))
    with GGUFModelFile.open(path) as gf:
        for t in oracle.tensors:
            theirs = np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), np.float32)
            ours = dequantize(gf.tensor(t.name))
            assert ours.shape == theirs.shape, t.name
            assert np.array_equal(ours.view(np.uint32), theirs.view(np.uint32)), t.name


def test_logits_and_greedy_tokens_equal_the_f32_twin(model_files):
    from worker.backend.numpy import NumpyBackend
    from worker.models import load_model

    results = []
    for path in model_files:
        with GGUFModelFile.open(path) as gf:
            model = load_model(gf, NumpyBackend())
            prompt = np.array([1, 5, 9, 33, 60, 2, 17])
            cache = model.new_cache(16)
            logits = np.asarray(model.forward(prompt, cache, 0, logits="all"), np.float32)
            model.backend.free_kv_cache(cache)
            results.append((logits, engine_greedy(model, IdsOnly(), prompt, 8)))   # the file has no vocabulary
    (logits, tokens), (twin_logits, twin_tokens) = results
    assert np.isfinite(logits).all() and logits.std() > 0
    assert np.array_equal(logits, twin_logits)
    assert tokens == twin_tokens


@pytest.mark.gpu
def test_cuda_greedy_agrees_with_numpy_for_64_steps(model_files):
    """On the GPU: FT-012's whole-model check (token by token against the NumPy reference,
    logits NMSE and tie tolerance as stated there) on the every-format model."""
    from stories.foundation.test_ft012_cuda_end_to_end import agree_for_64_steps

    agree_for_64_steps(model_files[0], [1, 7, 3, 12, 5], "tiny-llama-every-format")
