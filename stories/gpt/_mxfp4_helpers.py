"""Shared helpers for the MXFP4 / GPT-OSS stories (GT-033..GT-044).

Oracles are gguf-py (MXFP4 quantize and dequantize) and transformers' GPT-OSS modules; our code
only produces the values under test. Measured numbers are attached to the Allure result and
collected in reports/gpt_oss_numerics.json (one key per measurement) for the record.
"""
from __future__ import annotations

import functools
import json
import threading
from pathlib import Path

import gguf
import numpy as np

from gates.harness.attach import attach_json
from worker.quant import QuantTensor

MXFP4 = gguf.GGMLQuantizationType.MXFP4
REPORT = Path(__file__).resolve().parents[2] / "reports" / "gpt_oss_numerics.json"
_report_lock = threading.Lock()


def mxfp4_tensor(weights: np.ndarray, name: str = "w") -> QuantTensor:
    """`weights` [..., K] (K a multiple of 32) quantized by gguf-py, as the GGUF reader hands it over."""
    weights = np.ascontiguousarray(weights, np.float32)
    raw = gguf.quants.quantize(weights, MXFP4)
    return QuantTensor(name, MXFP4, tuple(weights.shape), np.ascontiguousarray(raw).reshape(-1))


def gguf_dequantized(tensor: QuantTensor) -> np.ndarray:
    """gguf-py's float values of a stored MXFP4 tensor: the oracle."""
    blocks = np.asarray(tensor.raw).reshape(-1, 17)
    return np.asarray(gguf.quants.dequantize(blocks, MXFP4), np.float32).reshape(tensor.shape)


def mxfp4_grid_weights(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Float weights that MXFP4 represents exactly (as GPT-OSS's experts are: trained in MXFP4).

    Every block of 32 holds E2M1 values (±0, 0.5, 1, 1.5, 2, 3, 4, 6) times one power of two.
    """
    e2m1 = np.array([0, 0.5, 1, 1.5, 2, 3, 4, 6], np.float32)
    values = e2m1[rng.integers(0, 8, shape)] * rng.choice(np.array([-1, 1], np.float32), shape)
    scales = np.exp2(rng.integers(-6, -1, (*shape[:-1], shape[-1] // 32, 1))).astype(np.float32)
    return (values.reshape(*shape[:-1], shape[-1] // 32, 32) * scales).reshape(shape)


def relative_error(ours, reference) -> float:
    """||ours - reference||_F / ||reference||_F in float64."""
    ours, reference = np.asarray(ours, np.float64), np.asarray(reference, np.float64)
    return float(np.linalg.norm(ours - reference) / np.linalg.norm(reference))


def record(key: str, **numbers) -> None:
    """Attach measured numbers to the test result and keep them in the JSON report."""
    attach_json(key, numbers)
    with _report_lock:
        REPORT.parent.mkdir(parents=True, exist_ok=True)
        try:
            data = json.loads(REPORT.read_text())
        except (OSError, ValueError):
            data = {}
        data[key] = numbers
        REPORT.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")


@functools.lru_cache(maxsize=1)
def tiny_worker_gpt_oss():
    """The tiny GPT-OSS fixture loaded by our registry on the NumPy reference backend."""
    from fixtures.tiny_gpt_oss import tiny_gpt_oss_path
    from worker.backend.numpy import NumpyBackend
    from worker.models import load_model

    return load_model(tiny_gpt_oss_path(), NumpyBackend())
