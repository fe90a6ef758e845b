"""Taking a model's tensors out of a GGUF file onto a backend, with shape checks and progress."""
from __future__ import annotations

from typing import Callable

from worker.errors import UnsupportedModelError

Progress = Callable[[int, int, str], None]


class WeightLoader:
    """Loads named tensors through `backend.load_weight`; reports progress in stored bytes.

    A tensor whose shape differs from what the model expects, or that is missing, is refused
    with UnsupportedModelError naming it (the file is well-formed, but not a model we can run).
    """

    def __init__(self, gguf_file, backend, progress: Progress | None = None):
        self.file = gguf_file
        self.backend = backend
        self.progress = progress
        self.total_bytes = sum(info.nbytes for info in gguf_file.tensors.values())
        self.done_bytes = 0
        self.loaded: set[str] = set()
        self.architecture = gguf_file.config.architecture

    def has(self, name: str) -> bool:
        return name in self.file.tensors

    def _stored(self, name: str, shape: tuple[int, ...] | None):
        info = self.file.tensors.get(name)
        if info is None:
            raise UnsupportedModelError(f"{self.architecture} model file lacks tensor {name!r}")
        if shape is not None and tuple(info.shape) != tuple(shape):
            raise UnsupportedModelError(
                f"tensor {name!r} has shape {tuple(info.shape)}, expected {tuple(shape)} for this "
                f"{self.architecture} config"
            )
        tensor = self.file.tensor(name)
        if name not in self.loaded:
            self.loaded.add(name)
            self.done_bytes += info.nbytes
            if self.progress is not None:
                self.progress(self.done_bytes, self.total_bytes, name)
        return tensor

    def load(self, name: str, shape: tuple[int, ...] | None = None):
        return self.backend.load_weight(self._stored(name, shape))

    def optional(self, name: str, shape: tuple[int, ...] | None = None):
        return self.load(name, shape) if self.has(name) else None

    def split_rows(self, name: str, shape: tuple[int, ...], sizes: list[int]) -> list:
        """A fused tensor cut along its first axis into parts of `sizes` rows, without copying.

        GGUF rows are whole quant blocks, so each part is a valid tensor of the same format.
        """
        from worker.quant import QuantTensor

        tensor = self._stored(name, shape)
        if sum(sizes) != shape[0]:
            raise UnsupportedModelError(f"tensor {name!r}: {shape[0]} rows cannot split into {sizes}")
        row_bytes = tensor.raw.size // shape[0]
        parts, start = [], 0
        for size in sizes:
            raw = tensor.raw[start * row_bytes : (start + size) * row_bytes]
            parts.append(self.backend.load_weight(
                QuantTensor(f"{name}[{start}:{start + size}]", tensor.qtype, (size, *shape[1:]), raw)))
            start += size
        return parts
