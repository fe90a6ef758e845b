"""The op boundary: models call a Backend, never NumPy or CuPy directly for math."""
from worker.backend.base import Backend, KVCache  # noqa: F401
from worker.errors import InvalidParamsError


def visible_gpu() -> str | None:
    """The first GPU's name as CuPy sees it, or None (no CuPy, no driver, no device)."""
    try:
        import cupy

        if cupy.cuda.runtime.getDeviceCount() > 0:
            name = cupy.cuda.runtime.getDeviceProperties(0)["name"]
            return name.decode() if isinstance(name, bytes) else str(name)
    except Exception:  # noqa: BLE001 - no CuPy or no driver: there is no GPU to use
        return None
    return None


def resolve_device(device: str) -> str:
    """--device as every command and the test suite read it: auto -> cuda:0 when CuPy sees a GPU,
    else cpu; cuda -> cuda:0; cpu and cuda:N as given; anything else INVALID_DEVICE."""
    if device == "auto":
        return "cuda:0" if visible_gpu() else "cpu"
    if device == "cuda":
        return "cuda:0"
    if device == "cpu" or (device.startswith("cuda:") and device[5:].isdigit()):
        return device
    raise InvalidParamsError(f"unknown device {device!r}: expected auto, cpu, cuda or cuda:N", field="device",
                             code="INVALID_DEVICE")


def get_backend(device: str = "cpu", **kwargs) -> "Backend":
    """'cpu' -> NumPy reference; 'cuda' or 'cuda:N' -> CuPy backend on GPU N."""
    if device in ("cpu", "numpy"):
        from worker.backend.numpy import NumpyBackend

        return NumpyBackend(**kwargs)
    if device.startswith("cuda"):
        from worker.backend.cuda import CudaBackend

        index = int(device.split(":", 1)[1]) if ":" in device else 0
        return CudaBackend(device_index=index, **kwargs)
    raise ValueError(f"unknown device {device!r}: expected cpu, cuda or cuda:N")
