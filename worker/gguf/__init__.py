"""GGUF model files: memory-mapped reading, validation before any allocation, architecture detection.

CONTRACT (docs/CONTRACTS.md):

    gf = GGUFModelFile.open(path)        # validates fully; raises GGUFError / UnsupportedModelError
    gf.path, gf.version, gf.metadata     # metadata: key -> str | int | float | bool | list[str] | np.ndarray
    gf.metadata_types                    # key -> GGUFValueType, or (ARRAY, element type)
    gf.tensors: dict[str, TensorInfo]    # TensorInfo(name, qtype, shape (NumPy order), offset, nbytes)
    gf.tensor(name) -> QuantTensor       # zero-copy view of the map
    gf.config -> ModelConfig             # architecture detection
    gf.close()                           # also a context manager

`GGUFModelFile.open(path, detect=False)` reads a file without an architecture we run (e.g.
llama.cpp's vocabulary-only files); `gf.config` then detects on first use.
Error codes: worker.gguf.codes (documented in docs/gguf.md).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from worker.config import ModelConfig
from worker.gguf.architecture import SUPPORTED_ARCHITECTURES, TOKENIZER_KINDS, detect_config
from worker.gguf.codes import ALL_CODES, GGUF_CODES, UNSUPPORTED_CODES
from worker.gguf.reader import ParsedGGUF, TensorInfo, map_file, parse
from worker.quant import QuantTensor

__all__ = ["GGUFModelFile", "TensorInfo", "SUPPORTED_ARCHITECTURES", "TOKENIZER_KINDS",
           "GGUF_CODES", "UNSUPPORTED_CODES", "ALL_CODES"]


class GGUFModelFile:
    def __init__(self, path: Path, buf, parsed: ParsedGGUF):
        self.path = path
        self._buf = buf
        self._parsed = parsed
        self._config: ModelConfig | None = None

    @classmethod
    def open(cls, path: str | os.PathLike, *, detect: bool = True) -> "GGUFModelFile":
        path = Path(path)
        buf, size = map_file(path)
        try:
            parsed = parse(buf, size)
            gf = cls(path, buf, parsed)
            if detect:
                gf._config = detect_config(parsed.metadata, parsed.metadata_types, parsed.tensors)
            return gf
        except BaseException:
            if hasattr(buf, "close"):
                buf.close()
            raise

    # -- header ------------------------------------------------------------------------------
    @property
    def version(self) -> int:
        return self._parsed.version

    @property
    def metadata(self) -> dict:
        return self._parsed.metadata

    @property
    def metadata_types(self) -> dict:
        return self._parsed.metadata_types

    @property
    def tensors(self) -> dict[str, TensorInfo]:
        return self._parsed.tensors

    @property
    def alignment(self) -> int:
        return self._parsed.alignment

    @property
    def data_offset(self) -> int:
        return self._parsed.data_offset

    @property
    def file_size(self) -> int:
        return self._parsed.file_size

    @property
    def architecture(self) -> str | None:
        return self.metadata.get("general.architecture")

    @property
    def config(self) -> ModelConfig:
        if self._config is None:
            p = self._parsed
            self._config = detect_config(p.metadata, p.metadata_types, p.tensors)
        return self._config

    # -- tensors -----------------------------------------------------------------------------
    def tensor(self, name: str) -> QuantTensor:
        """The stored bytes of `name` as a read-only view of the map (nothing is copied)."""
        info = self.tensors.get(name)
        if info is None:
            raise KeyError(f"{self.path.name} has no tensor {name!r}")
        if self._buf is None:
            raise ValueError(f"{self.path} is closed")
        raw = np.frombuffer(self._buf, dtype=np.uint8, count=info.nbytes, offset=info.offset)
        return QuantTensor(name, info.qtype, info.shape, raw)

    def tensor_bytes_by_type(self) -> dict[str, dict[str, int]]:
        """{type name: {'count': n, 'bytes': b}} over the tensor table."""
        out: dict[str, dict[str, int]] = {}
        for t in self.tensors.values():
            row = out.setdefault(t.qtype.name, {"count": 0, "bytes": 0})
            row["count"] += 1
            row["bytes"] += t.nbytes
        return out

    # -- lifetime ------------------------------------------------------------------------------
    def close(self) -> None:
        """Release the map. Views handed out earlier keep their pages valid until they are freed
        (the map is then unmapped by the garbage collector)."""
        buf, self._buf = self._buf, None
        if buf is not None and hasattr(buf, "close"):
            try:
                buf.close()
            except BufferError:
                pass            # tensor views still export the buffer

    def __enter__(self) -> "GGUFModelFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"GGUFModelFile({str(self.path)!r}, v{self.version}, {self.architecture}, "
                f"{len(self.tensors)} tensors)")
