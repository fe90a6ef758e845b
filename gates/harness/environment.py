"""The run's environment for Allure's environment.properties: device, GPU, driver, CUDA, model."""
from __future__ import annotations

import hashlib
import platform
from functools import lru_cache
from pathlib import Path


@lru_cache(maxsize=8)
def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def cuda_versions() -> dict:
    try:
        import cupy

        rt = cupy.cuda.runtime
        return {"cuda.driver_version": rt.driverGetVersion(), "cuda.runtime_version": rt.runtimeGetVersion(),
                "cupy": cupy.__version__}
    except Exception as exc:  # no CuPy or no driver: say so rather than guess
        return {"cuda": f"unavailable ({type(exc).__name__})"}


def environment_properties(device: str, gpu: str | None, model) -> dict:
    props = {"device": device, "gpu": gpu or "none", "python": platform.python_version(),
             "platform": platform.platform()}
    props.update(cuda_versions())
    if model and Path(model).is_file():
        props["model.file"] = str(model)
        props["model.sha256"] = file_sha256(str(model))
    props.update(real_model_properties())
    return props


def real_model_properties() -> dict:
    """Name each real model file the checks use by file name, sha256 and general.name, so that
    e.g. the Qwen2.5-Coder file is not mistaken for Qwen2.5-0.5B-Instruct."""
    from fixtures.real_models import describe_model_file
    from gates.harness.plugin import MODEL_ENV, model_file

    props = {}
    for name in MODEL_ENV:
        path = model_file(name)
        if path is not None:
            for key, value in describe_model_file(path).items():
                props[f"{name}.{key}"] = value
    return props
