"""Bounded parser for the GGUF container (versions 2 and 3, little-endian), over a memory map.

Layout: magic 'GGUF' | version u32 | tensor_count u64 | kv_count u64 | kv pairs |
tensor infos | padding to general.alignment | tensor data. Every length read from the file is
checked against both a hard limit (worker.gguf.limits) and the bytes actually left before
anything is allocated for it, so a hostile file costs at most about its own size in memory.
Nothing here reads tensor data: tensors stay in the map until someone asks for them.
"""
from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass, field

import numpy as np
from gguf import GGMLQuantizationType, GGUFValueType

from worker.errors import GGUFError
from worker.gguf import limits
from worker.quant import FORMATS

MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32

# scalar value types: struct format, size, numpy dtype for arrays
_SCALARS = {
    GGUFValueType.UINT8: ("<B", 1, "<u1"),
    GGUFValueType.INT8: ("<b", 1, "<i1"),
    GGUFValueType.UINT16: ("<H", 2, "<u2"),
    GGUFValueType.INT16: ("<h", 2, "<i2"),
    GGUFValueType.UINT32: ("<I", 4, "<u4"),
    GGUFValueType.INT32: ("<i", 4, "<i4"),
    GGUFValueType.FLOAT32: ("<f", 4, "<f4"),
    GGUFValueType.BOOL: ("<B", 1, "<u1"),
    GGUFValueType.UINT64: ("<Q", 8, "<u8"),
    GGUFValueType.INT64: ("<q", 8, "<i8"),
    GGUFValueType.FLOAT64: ("<d", 8, "<f8"),
}
_VALUE_TYPE_IDS = {int(t) for t in GGUFValueType}
_GGML_TYPE_IDS = {int(t) for t in GGMLQuantizationType}


@dataclass(frozen=True)
class TensorInfo:
    """One entry of the tensor table. shape is NumPy order (ggml's ne reversed); offset is the
    absolute byte offset of the data in the file; nbytes is derived from shape and type."""

    name: str
    qtype: GGMLQuantizationType
    shape: tuple
    offset: int
    nbytes: int

    @property
    def n_values(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def ne(self) -> tuple:
        """ggml order (innermost first), as the file stores it."""
        return tuple(reversed(self.shape))


@dataclass
class ParsedGGUF:
    version: int
    metadata: dict
    metadata_types: dict          # key -> GGUFValueType, or (ARRAY, element type)
    tensors: dict                 # name -> TensorInfo, in file order
    alignment: int
    data_offset: int              # start of the tensor data section
    file_size: int
    tensor_data_end: int = 0      # end of the last tensor's bytes
    notes: list = field(default_factory=list)


class _Cursor:
    """Reads little-endian values from the map; every read is checked against the file end."""

    def __init__(self, buf, size: int):
        self.buf = buf
        self.size = size
        self.pos = 0

    def need(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > self.size:
            raise GGUFError(
                f"file truncated: {what} needs {n} bytes at offset {self.pos}, but the file has "
                f"{self.size} bytes", code="GGUF_TRUNCATED")

    def scalar(self, fmt: str, size: int, what: str):
        self.need(size, what)
        (value,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += size
        return value

    def u32(self, what: str) -> int:
        return self.scalar("<I", 4, what)

    def u64(self, what: str) -> int:
        return self.scalar("<Q", 8, what)

    def raw_string(self, what: str, limit: int) -> bytes:
        n = self.u64(f"length of {what}")
        if n > limit:
            raise GGUFError(f"{what}: string length {n} exceeds the limit of {limit} bytes",
                            code="GGUF_ABSURD_COUNT")
        self.need(n, what)
        data = bytes(self.buf[self.pos:self.pos + n])
        self.pos += n
        return data

    def string(self, what: str, limit: int = limits.MAX_STRING_BYTES) -> str:
        data = self.raw_string(what, limit)
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise GGUFError(f"{what} is not valid UTF-8 ({e.reason} at byte {e.start})",
                            code="GGUF_BAD_STRING") from None

    def remaining(self) -> int:
        return self.size - self.pos


def _value_type(type_id: int, what: str) -> GGUFValueType:
    if type_id not in _VALUE_TYPE_IDS:
        raise GGUFError(f"{what}: unknown metadata value type {type_id}", code="GGUF_BAD_VALUE_TYPE")
    return GGUFValueType(type_id)


def _read_value(cur: _Cursor, vtype: GGUFValueType, key: str):
    if vtype == GGUFValueType.STRING:
        return cur.string(f"value of {key!r}")
    if vtype == GGUFValueType.BOOL:
        b = cur.scalar("<B", 1, f"value of {key!r}")
        if b > 1:
            raise GGUFError(f"{key!r}: bool value {b} is neither 0 nor 1", code="GGUF_BAD_METADATA")
        return bool(b)
    if vtype == GGUFValueType.ARRAY:
        return _read_array(cur, key)
    fmt, size, _ = _SCALARS[vtype]
    return cur.scalar(fmt, size, f"value of {key!r}")


def _read_array(cur: _Cursor, key: str):
    etype = _value_type(cur.u32(f"array type of {key!r}"), f"array {key!r}")
    count = cur.u64(f"array length of {key!r}")
    if count > limits.MAX_ARRAY_LEN:
        raise GGUFError(f"array {key!r} claims {count} elements (limit {limits.MAX_ARRAY_LEN})",
                        code="GGUF_ABSURD_COUNT")
    if etype == GGUFValueType.ARRAY:
        raise GGUFError(f"array {key!r} holds arrays; nested arrays are not supported",
                        code="GGUF_BAD_VALUE_TYPE")
    if etype == GGUFValueType.STRING:
        # each string takes at least its 8-byte length: check the count before the loop
        cur.need(count * 8, f"{count} strings of array {key!r}")
        return etype, _read_string_array(cur, count, key)
    _, size, dtype = _SCALARS[etype]
    cur.need(count * size, f"{count} elements of array {key!r}")
    values = np.frombuffer(cur.buf, dtype=dtype, count=count, offset=cur.pos).copy()
    cur.pos += count * size
    if etype == GGUFValueType.BOOL:
        if values.size and values.max() > 1:
            raise GGUFError(f"array {key!r} holds a bool that is neither 0 nor 1", code="GGUF_BAD_METADATA")
        values = values.astype(bool)
    return etype, values


_U64 = struct.Struct("<Q")


def _read_string_array(cur: _Cursor, count: int, key: str) -> list[str]:
    """The hot loop of vocabularies (hundreds of thousands of strings): same checks as
    _Cursor.string, with the lookups hoisted out of the loop."""
    buf, pos, size, limit, unpack = cur.buf, cur.pos, cur.size, limits.MAX_STRING_BYTES, _U64.unpack_from
    out = [""] * count
    for i in range(count):
        if pos + 8 > size:
            cur.pos = pos
            cur.need(8, f"length of element {i} of {key!r}")
        (n,) = unpack(buf, pos)
        pos += 8
        if n > limit:
            raise GGUFError(f"element {i} of {key!r}: string length {n} exceeds the limit of {limit} bytes",
                            code="GGUF_ABSURD_COUNT")
        if pos + n > size:
            cur.pos = pos
            cur.need(n, f"element {i} of {key!r}")
        try:
            out[i] = buf[pos:pos + n].decode("utf-8")
        except UnicodeDecodeError as e:
            raise GGUFError(f"element {i} of {key!r} is not valid UTF-8 ({e.reason} at byte {e.start})",
                            code="GGUF_BAD_STRING") from None
        pos += n
    cur.pos = pos
    return out


def _read_metadata(cur: _Cursor, kv_count: int):
    metadata, types = {}, {}
    for i in range(kv_count):
        key = cur.string(f"key of metadata entry {i}", limit=1 << 16)
        if not key:
            raise GGUFError(f"metadata entry {i} has an empty key", code="GGUF_BAD_STRING")
        if key in metadata:
            raise GGUFError(f"metadata key {key!r} appears twice", code="GGUF_DUPLICATE_KEY")
        vtype = _value_type(cur.u32(f"value type of {key!r}"), f"metadata {key!r}")
        value = _read_value(cur, vtype, key)
        if vtype == GGUFValueType.ARRAY:
            etype, value = value
            types[key] = (GGUFValueType.ARRAY, etype)
        else:
            types[key] = vtype
        metadata[key] = value
    return metadata, types


def _read_tensor_info(cur: _Cursor, index: int):
    name = cur.string(f"name of tensor {index}", limit=limits.MAX_TENSOR_NAME_BYTES)
    if not name:
        raise GGUFError(f"tensor {index} has an empty name", code="GGUF_BAD_STRING")
    n_dims = cur.u32(f"dimension count of {name!r}")
    if not 1 <= n_dims <= limits.MAX_DIMS:
        raise GGUFError(f"tensor {name!r} has {n_dims} dimensions (1 to {limits.MAX_DIMS} allowed)",
                        code="GGUF_ABSURD_DIMENSIONS")
    ne = [cur.u64(f"dimension {d} of {name!r}") for d in range(n_dims)]
    type_id = cur.u32(f"type of {name!r}")
    rel_offset = cur.u64(f"data offset of {name!r}")
    return name, ne, type_id, rel_offset


def _check_tensor(name: str, ne: list, type_id: int, file_size: int) -> tuple:
    """Shape, type and size of one tensor; returns (qtype, numpy shape, nbytes)."""
    if any(n == 0 for n in ne):
        raise GGUFError(f"tensor {name!r} has a zero-sized dimension: ne={ne}", code="GGUF_ABSURD_DIMENSIONS")
    n_values = 1
    for n in ne:
        n_values *= n                      # Python ints: no overflow
    if n_values > limits.MAX_ELEMENTS:
        raise GGUFError(f"tensor {name!r} claims {n_values} elements (ne={ne})", code="GGUF_ABSURD_DIMENSIONS")
    if type_id not in _GGML_TYPE_IDS:
        raise GGUFError(f"tensor {name!r} has unknown ggml type id {type_id}", code="GGUF_UNKNOWN_TENSOR_TYPE")
    qtype = GGMLQuantizationType(type_id)
    if qtype not in FORMATS:
        supported = ", ".join(t.name for t in FORMATS)
        raise GGUFError(f"tensor {name!r} is {qtype.name}, a type this worker does not read "
                        f"(supported: {supported})", code="GGUF_UNSUPPORTED_TENSOR_TYPE")
    fmt = FORMATS[qtype]
    if ne[0] % fmt.block_size:
        raise GGUFError(f"tensor {name!r}: rows of {ne[0]} values are not a whole number of "
                        f"{qtype.name} blocks of {fmt.block_size}", code="GGUF_TENSOR_SIZE_MISMATCH")
    nbytes = n_values // fmt.block_size * fmt.type_size
    if nbytes > file_size:
        raise GGUFError(f"tensor {name!r} ({qtype.name}, ne={ne}) needs {nbytes} bytes, more than the "
                        f"whole file ({file_size})", code="GGUF_TENSOR_OUT_OF_BOUNDS")
    return qtype, tuple(int(n) for n in reversed(ne)), nbytes


def _alignment(metadata: dict, types: dict) -> int:
    if "general.alignment" not in metadata:
        return DEFAULT_ALIGNMENT
    value = metadata["general.alignment"]
    if types["general.alignment"] != GGUFValueType.UINT32 or not (
            0 < value <= limits.MAX_ALIGNMENT and value & (value - 1) == 0):
        raise GGUFError(f"general.alignment must be a power-of-two uint32 up to {limits.MAX_ALIGNMENT}, "
                        f"got {value!r}", code="GGUF_BAD_METADATA")
    return int(value)


def _check_layout(tensors: dict, data_offset: int, alignment: int, file_size: int) -> int:
    """Alignment, overlap and bounds of the data section; returns the end of the last tensor."""
    ordered = sorted(tensors.values(), key=lambda t: (t.offset, t.nbytes))
    if not ordered:            # vocabulary-only files end right after the (empty) tensor table
        return min(data_offset, file_size)
    for t in ordered:
        if (t.offset - data_offset) % alignment:
            raise GGUFError(f"tensor {t.name!r} data offset {t.offset - data_offset} is not a multiple of "
                            f"the alignment {alignment}", code="GGUF_MISALIGNED")
    for prev, cur in zip(ordered, ordered[1:]):
        if cur.offset < prev.offset + prev.nbytes:
            raise GGUFError(f"tensors {prev.name!r} [{prev.offset}, {prev.offset + prev.nbytes}) and "
                            f"{cur.name!r} [{cur.offset}, {cur.offset + cur.nbytes}) overlap",
                            code="GGUF_TENSORS_OVERLAP")
    end = max((t.offset + t.nbytes for t in ordered), default=data_offset)
    if end <= file_size:
        return end
    # Past the end of the file: a short file whose tensors are packed as a writer lays them out
    # is truncated; a tensor placed beyond where the packed layout ends points out of bounds.
    packed_end = data_offset + sum(-(-t.nbytes // alignment) * alignment for t in ordered)
    beyond = [t for t in ordered if t.offset + t.nbytes > file_size]
    if end <= packed_end:
        raise GGUFError(f"file truncated: tensor data ends at byte {end} ({beyond[0].name!r} and "
                        f"{len(beyond) - 1} more), but the file has {file_size} bytes", code="GGUF_TRUNCATED")
    t = beyond[-1]
    raise GGUFError(f"tensor {t.name!r} data [{t.offset}, {t.offset + t.nbytes}) lies beyond the end of "
                    f"the file ({file_size} bytes)", code="GGUF_TENSOR_OUT_OF_BOUNDS")


def parse(buf, file_size: int) -> ParsedGGUF:
    """Parse and validate the container structure held in `buf` (an mmap or bytes)."""
    cur = _Cursor(buf, file_size)
    if file_size < 4 or bytes(buf[0:4]) != MAGIC:
        head = bytes(buf[0:min(4, file_size)])
        raise GGUFError(f"not a GGUF file: starts with {head!r}, expected {MAGIC!r}", code="GGUF_BAD_MAGIC")
    cur.pos = 4
    version = cur.u32("version")
    if version not in SUPPORTED_VERSIONS:
        byte_swapped = struct.unpack("<I", struct.pack(">I", version))[0]
        hint = " (a big-endian file?)" if byte_swapped in SUPPORTED_VERSIONS else ""
        raise GGUFError(f"GGUF version {version}{hint} is not supported (only 2 and 3)",
                        code="GGUF_UNSUPPORTED_VERSION")
    tensor_count = cur.u64("tensor count")
    kv_count = cur.u64("metadata count")
    # each tensor info takes >= 8+1+4+8+4+8 bytes, each kv pair >= 8+1+4+1
    for count, limit, min_bytes, what in ((tensor_count, limits.MAX_TENSORS, 33, "tensor"),
                                          (kv_count, limits.MAX_KV, 14, "metadata")):
        if count > limit:
            raise GGUFError(f"header claims {count} {what} entries (limit {limit})", code="GGUF_ABSURD_COUNT")
        if count * min_bytes > cur.remaining():
            raise GGUFError(f"file truncated: header claims {count} {what} entries, which cannot fit in the "
                            f"{cur.remaining()} bytes left", code="GGUF_TRUNCATED")
    metadata, types = _read_metadata(cur, kv_count)
    alignment = _alignment(metadata, types)

    infos = [_read_tensor_info(cur, i) for i in range(tensor_count)]
    data_offset = -(-cur.pos // alignment) * alignment
    if tensor_count and data_offset > file_size:
        raise GGUFError(f"file truncated: tensor data would start at byte {data_offset}, but the file has "
                        f"{file_size} bytes", code="GGUF_TRUNCATED")
    tensors = {}
    for name, ne, type_id, rel_offset in infos:
        if name in tensors:
            raise GGUFError(f"tensor {name!r} appears twice", code="GGUF_DUPLICATE_TENSOR")
        qtype, shape, nbytes = _check_tensor(name, ne, type_id, file_size)
        tensors[name] = TensorInfo(name, qtype, shape, data_offset + rel_offset, nbytes)
    end = _check_layout(tensors, data_offset, alignment, file_size)
    return ParsedGGUF(version, metadata, types, tensors, alignment, data_offset, file_size, end)


def map_file(path: str | os.PathLike):
    """Open and memory-map `path` read-only; returns (mmap or b'' for an empty file, size)."""
    # stat first: opening a FIFO or device could block
    if not os.path.isfile(path):
        what = "does not exist" if not os.path.exists(path) else "is not a regular file"
        raise GGUFError(f"model file {path} {what}", code="GGUF_UNREADABLE")
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size == 0:
                return b"", 0
            return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ), size
    except GGUFError:
        raise
    except OSError as e:
        raise GGUFError(f"cannot open model file {path}: {e.strerror or e}", code="GGUF_UNREADABLE") from None
