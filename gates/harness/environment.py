"""The run's environment for Allure's environment.properties: device, GPU, driver, CUDA, models."""
from __future__ import annotations

import platform
from functools import lru_cache
from pathlib import Path


@lru_cache(maxsize=64)
def describe_model(path: str) -> dict:
    """File name, size, sha256 and general.name of a model file (fixtures.real_models), once per path."""
    from fixtures.real_models import describe_model_file

    return describe_model_file(Path(path))


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
        props.update({f"model.{k}": v for k, v in describe_model(str(model)).items()})
    props.update(real_model_properties())
    return props


def real_model_properties() -> dict:
    """Name each real model file the checks use by file name, sha256 and general.name, so that
    e.g. the Qwen2.5-Coder file is not mistaken for Qwen2.5-0.5B-Instruct."""
    from gates.harness.plugin import MODEL_ENV, model_file

    props = {}
    for name in MODEL_ENV:
        path = model_file(name)
        if path is not None:
            props.update({f"{name}.{k}": v for k, v in describe_model(str(path)).items()})
    return props
