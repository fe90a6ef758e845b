"""LT-023 weight loading on real files written by llama.cpp itself, in every weight format.

Files (fixtures.llama_quantized, built once with llama.cpp's own `llama-quantize`):
- SmolLM2-135M-Instruct requantized to each format with llama.cpp's default mixture; its rows are
  576 wide, so 256-block types land only in ffn_down and fall back elsewhere (the counts say so).
  The IQ types only with M0_SMOLLM2_IQ=1: minutes each on 2 cores (fixtures.llama_quantized);
- a model whose every width is a multiple of 256 quantized with --pure, so each format is in
  every tensor role (token_embd, attention, FFN, output);
- the real Qwen2.5 file (the suite's "qwen2.5" model).

Each file is built just before its checks and removed after them (fixtures.llama_quantized.release;
M0_KEEP_QUANTIZED=1 keeps them): the module-scoped `quantized_file` fixture makes pytest run a file's
four checks one after another, and its xdist group keeps them on one pytest-xdist worker.

Acceptance, per file: its tensor type counts are reported (gguf-py reads them); `python -m worker
inspect` reads it; our NumPy dequantization equals gguf-py's bit for bit on every tensor; it
generates a few greedy tokens on the CPU backend. A file holding a format our registry
(worker.quant.FORMATS) does not have yet fails each check, reported as XFAIL naming the format.
"""
from __future__ import annotations

import subprocess
import sys
from contextlib import contextmanager

import gguf
import numpy as np
import pytest

from fixtures.engine_greedy import engine_greedy
from fixtures.llama_quantized import (
    EMBEDDING_TYPE,
    FORMATS,
    SMOLLM2_FORMATS,
    release,
    smollm2_file,
    tensor_types,
    type_counts,
    wide_file,
)
from fixtures.paths import REPO_ROOT
from worker.quant import FORMATS as REGISTRY

pytestmark = pytest.mark.story("LT-023")

SOURCES = {"smollm2": smollm2_file, "wide": wide_file}


def _case(source: str, fmt: str, *marks):
    return pytest.param((source, fmt), id=f"{source}-{fmt}",
                        marks=(*marks, pytest.mark.xdist_group(f"llama-quantized-{source}-{fmt}")))


def _cases():
    return [_case("smollm2", fmt, pytest.mark.slow) for fmt in SMOLLM2_FORMATS] + \
        [_case("wide", fmt) for fmt in FORMATS]


@contextmanager
def formats_not_yet_supported_fail_expectedly(path):
    """A file holding a type our registry lacks must fail the check: reported as XFAIL naming
    the types (and the error), so the missing format shows instead of hiding as a skip."""
    missing = sorted(n for n in type_counts(path) if gguf.GGMLQuantizationType[n] not in REGISTRY)
    if not missing:
        yield
        return
    try:
        yield
    except Exception as exc:
        pytest.xfail(f"{path.name} holds {missing}, not in worker.quant's format registry yet: "
                     f"{type(exc).__name__}: {str(exc)[:200]}")
    pytest.fail(f"{path.name} holds {missing}, which the registry lacks, yet the check passed")


def _file(source: str, fmt: str):
    from fixtures import llama_cpp

    try:
        return SOURCES[source](fmt)
    except llama_cpp.LlamaCppUnavailable as exc:
        pytest.skip(f"llama.cpp tools unavailable: {exc}")
    except FileNotFoundError as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module", params=_cases())
def quantized_file(request):
    """(source, format, path): the file exists for its four checks only."""
    source, fmt = request.param
    path = _file(source, fmt)
    yield source, fmt, path
    release(path)


def _bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)


def assert_every_tensor_matches_gguf_py(path) -> dict[str, int]:
    """Our dequantization of every tensor equals gguf-py's bit for bit; returns the type counts."""
    from worker.gguf import GGUFModelFile
    from worker.quant import dequantize

    oracle = gguf.GGUFReader(str(path))
    counts: dict[str, int] = {}
    with GGUFModelFile.open(path, detect=False) as gf:
        for t in oracle.tensors:
            theirs = np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32)
            ours = dequantize(gf.tensor(t.name))
            assert ours.shape == theirs.shape, t.name
            differ = np.count_nonzero(_bits(ours) != _bits(theirs))
            assert differ == 0, f"{t.name} ({t.tensor_type.name}): {differ} of {ours.size} values differ from gguf-py"
            counts[t.tensor_type.name] = counts.get(t.tensor_type.name, 0) + 1
    return counts


def test_file_in_each_format_holds_it_and_reports_its_types(quantized_file, record_property):
    source, fmt, path = quantized_file
    counts = type_counts(path)
    record_property("tensor_types", counts)
    print(f"\n{path.name}: {counts}")
    if source == "wide":   # --pure: every 2-D weight is the format; only norms and biases stay F32
        embedding = EMBEDDING_TYPE.get(fmt, fmt)
        assert set(counts) <= {fmt, embedding, "F32"} and counts.get(fmt, 0) >= 15 - (embedding != fmt), counts
        assert tensor_types(path)["token_embd.weight"] == embedding
    with formats_not_yet_supported_fail_expectedly(path):
        assert gguf.GGMLQuantizationType[fmt] in REGISTRY, f"{fmt} is not in worker.quant's format registry"


def test_worker_inspect_reads_the_file(quantized_file):
    _, _, path = quantized_file
    with formats_not_yet_supported_fail_expectedly(path):
        result = subprocess.run([sys.executable, "-m", "worker", "inspect", str(path)], capture_output=True,
                                text=True, cwd=REPO_ROOT, timeout=120)
        assert result.returncode == 0, (result.stdout + result.stderr)[-2000:]
        for name in type_counts(path):
            assert name in result.stdout, f"inspect does not list {name}:\n{result.stdout}"


def test_every_tensor_dequantizes_like_gguf_py(quantized_file):
    _, _, path = quantized_file
    with formats_not_yet_supported_fail_expectedly(path):
        assert_every_tensor_matches_gguf_py(path)


def test_file_generates_on_the_cpu_backend(quantized_file):
    from worker.backend.numpy import NumpyBackend
    from worker.gguf import GGUFModelFile
    from worker.models import load_model
    from worker.tokenizer import load_tokenizer

    _, _, path = quantized_file
    with formats_not_yet_supported_fail_expectedly(path), GGUFModelFile.open(path) as gf:
        tokenizer = load_tokenizer(gf)
        model = load_model(gf, NumpyBackend())
        ids = engine_greedy(model, tokenizer, tokenizer.encode("The capital of France is"), 4)
        assert len(ids) == 4 and all(0 <= i < model.config.vocab_size for i in ids)


@pytest.mark.slow
@pytest.mark.needs_model("qwen2.5")
def test_every_tensor_of_the_real_qwen25_file_dequantizes_like_gguf_py(record_model, record_property):
    from fixtures.paths import user_model

    path = user_model("M0_QWEN25_GGUF")
    record_model(path)
    counts = assert_every_tensor_matches_gguf_py(path)
    record_property("tensor_types", counts)
    print(f"\n{path.name}: {counts}")


@pytest.mark.parametrize("keep", ["", "1"])
def test_a_released_file_is_removed_unless_kept(tmp_path, monkeypatch, keep):
    path = tmp_path / "smollm2-Q4_0.gguf"
    path.write_bytes(b"GGUF")
    monkeypatch.setenv("M0_KEEP_QUANTIZED", keep)
    release(path)
    assert path.exists() == (keep == "1")
