"""The op boundary: models call a Backend, never NumPy or CuPy directly for math."""
from worker.backend.base import Backend, KVCache  # noqa: F401


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
