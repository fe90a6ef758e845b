"""FT-007 bindings across the op boundary: Python calls into the CUDA kernels with the right ABI.

The plan's story is "Rust FFI bindings": Rust declarations of the C++ functions behind the FFI
lock. Our worker is Python + CuPy, so the honest equivalent is the Python <-> CUDA boundary:

* the kernels live in worker/backend/kernels/*.cu and are loaded at run time by CuPy's RawModule
  (NVRTC); each file's launcher beside it (worker/backend/kernels/<name>.py) launches them by name
  with a tuple of arguments. A binding is
  correct when every launched name exists in the module it is looked up in, and every argument has
  the kernel parameter's width and kind (device pointer / 32-bit int / 64-bit int / float): CuPy
  passes a Python value with the size of its NumPy dtype, so an int32 where the kernel reads a
  long long is silent memory corruption, not an error. Checked here on the CPU by reading the
  kernel signatures from the preprocessed sources (the C preprocessor expands the per-format
  macros) and the launch sites from the launchers' syntax trees (Python's ast);
* the Python side of the boundary, the Backend interface (worker/backend/base.py): both the NumPy
  reference and the CUDA backend implement every method of it with the same signature, and the
  CUDA backend overrides the methods whose default only makes sense on the host;
* on the GPU: every kernel file compiles through RawModule, every declared kernel can be looked
  up, and every op called through the boundary answers with device arrays on our GPU that agree
  with the NumPy reference (stories/foundation/_cuda_conformance.py thresholds).
"""
from __future__ import annotations

import ast
import inspect
import re
import shutil
import subprocess
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest

from worker.backend import cuda as cuda_module
from worker.backend import cuda_runtime
from worker.backend.base import Backend
from worker.backend.cuda import KERNEL_DIR, CudaBackend, kernel_source
from worker.backend.numpy import NumpyBackend

KERNEL_FILES = sorted(p.name for p in KERNEL_DIR.glob("*.cu"))
PUBLIC_METHODS = sorted(name for name, member in vars(Backend).items()
                        if callable(member) and not name.startswith("_"))
# Interface methods with a body in base.py that is only right for a host backend.
HOST_DEFAULTS = ("free_kv_cache", "memory_report", "synchronize")
needs_cpp = pytest.mark.skipif(shutil.which("cpp") is None, reason="the C preprocessor (cpp) is not installed")

# C parameter type (after `const`, `__restrict__`) -> the argument kind it needs.
C_SCALARS = {"int": "i32", "unsigned": "i32", "unsigned int": "i32", "u32": "i32",
             "i64": "i64", "long long": "i64", "float": "f32"}
# Python-side helpers of worker/backend/cuda_runtime.py -> the argument kind they produce.
PY_SCALARS = {"i32": "i32", "i64": "i64", "f32": "f32"}
# Where kernels are launched: the op boundary and the launcher beside each .cu file.
LAUNCH_FILES = [Path(cuda_module.__file__)] + sorted(KERNEL_DIR.glob("*.py"))


# -- kernel side: signatures from the preprocessed sources --------------------------------------

KERNEL_DECLARATION = r'extern\s+"C"\s+__global__\s+void\s+(?:__launch_bounds__\s*\([^)]*\)\s*)?(\w+)\s*\(([^)]*)\)'


@lru_cache(maxsize=None)
def kernel_signatures(module: str) -> dict[str, list[str]]:
    """{kernel name: [parameter kind, ...]} of one .cu file as NVRTC compiles it."""
    pre = subprocess.run(["cpp", "-P", "-x", "c++", "-"], input=kernel_source(module),
                         capture_output=True, text=True, timeout=120)
    assert pre.returncode == 0, pre.stderr
    signatures = {}
    for m in re.finditer(KERNEL_DECLARATION, pre.stdout):
        kinds = []
        for param in m.group(2).split(","):
            words = [w for w in param.replace("*", " * ").split() if w not in ("const", "__restrict__")]
            if "*" in words:
                kinds.append("ptr")
            else:
                base = " ".join(words[:-1])              # drop the parameter's name
                assert base in C_SCALARS, f"{module}:{m.group(1)}: unexpected parameter type {param.strip()!r}"
                kinds.append(C_SCALARS[base])
        signatures[m.group(1)] = kinds
    return signatures


# -- Python side: launch sites in the launchers ------------------------------------------------

def _name_values(expr: str) -> list[str]:
    """The values a kernel name's {expr} part can take."""
    if expr.endswith(".format"):                     # a CudaWeight's storage format
        return sorted(set(cuda_module._KERNEL_FORMAT.values()))
    if expr == "kvt":                                # KV cache element type
        return ["f16", "f32"]
    if expr == "fmt":                                # a format with an int8 decode product (kernels/vecdot.py)
        from worker.backend.kernels.vecdot import VECDOT_FORMATS
        return sorted(VECDOT_FORMATS)
    raise AssertionError(f"unknown kernel-name pattern {{{expr}}}: teach this test its values")


def _name_variants(node: ast.expr) -> list[str]:
    """Every kernel name a launch's name expression can take (f-strings expanded). {suffix}, the grouped expert
    kernels' variant part, depends on the name's {fmt} and the tile height (kernels/moe.py _suffix; a gate/up
    kernel's on whose gate/up kernels the variant runs): the suffix is expanded together with the format, for every
    height."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    assert isinstance(node, ast.JoinedStr), f"kernel name is not a literal: {ast.unparse(node)}"
    exprs = [ast.unparse(p.value) for p in node.values if not isinstance(p, ast.Constant)]
    if "suffix" in exprs:
        from worker.backend.kernels.moe import MOE_GEMM_VARIANTS, MOE_TILE_ROWS, _suffix

        assert "fmt" in exprs, "a grouped expert kernel's name has its format"
        gate_up = isinstance(node.values[0], ast.Constant) and node.values[0].value == "moe_gate_up"
        bindings = [{"suffix": _suffix(v, f, rows, gate_up=gate_up), "fmt": f} for v in MOE_GEMM_VARIANTS
                    for f in _name_values("fmt") for rows in MOE_TILE_ROWS]
    else:
        bindings = [{}]
    for expr in exprs:
        if expr not in ("suffix", "fmt") or "suffix" not in exprs:
            bindings = [dict(b, **{expr: value}) for b in bindings for value in _name_values(expr)]
    names = set()
    for b in bindings:
        names.add("".join(p.value if isinstance(p, ast.Constant) else b[ast.unparse(p.value)] for p in node.values))
    return sorted(names)


def _argument_kind(node: ast.expr) -> str:
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in PY_SCALARS:
        return PY_SCALARS[node.func.id]
    if isinstance(node, ast.IfExp):
        kinds = {_argument_kind(node.body), _argument_kind(node.orelse)}
        assert len(kinds) == 1, f"branches pass different kinds: {ast.unparse(node)}"
        return kinds.pop()
    if isinstance(node, (ast.Constant, ast.BinOp, ast.UnaryOp)):
        return "bare-python-number"                  # CuPy would choose its width: never what we want
    return "ptr"                                     # a device array or NULL (np.uint64(0))


@lru_cache(maxsize=1)
def launch_sites() -> list[dict]:
    sites = []
    for path in LAUNCH_FILES:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "_launch":
                module, name, _grid, _block, args = node.args
                assert isinstance(module, ast.Constant), ast.unparse(node)
                assert isinstance(args, ast.Tuple), f"{path.name}:{node.lineno}: arguments must be a literal tuple"
                sites.append({"line": f"{path.name}:{node.lineno}", "module": module.value,
                              "names": _name_variants(name), "kinds": [_argument_kind(a) for a in args.elts],
                              "source": [ast.unparse(a) for a in args.elts]})
    return sites


# -- tests: CPU ---------------------------------------------------------------------------------

@pytest.mark.story("FT-007")
def test_the_backend_launches_kernels():
    sites = launch_sites()
    assert len(sites) >= 15, "fewer launch sites than ops: the parser no longer sees the launchers"
    assert {s["module"] for s in sites} == set(KERNEL_FILES), \
        "a kernel file is never launched, or a launch names a missing file"


@pytest.mark.story("FT-007")
@needs_cpp
@pytest.mark.parametrize("site", launch_sites(), ids=lambda s: f"{s['line']}-{s['names'][0]}")
def test_every_launch_matches_the_kernel_signature(site):
    signatures = kernel_signatures(site["module"])
    for name in site["names"]:
        assert name in signatures, f"{site['line']} launches {name!r}, not in {site['module']}"
        expected = signatures[name]
        assert len(site["kinds"]) == len(expected), \
            f"{name}: {len(site['kinds'])} arguments passed, the kernel takes {len(expected)}"
        for i, (passed, wanted) in enumerate(zip(site["kinds"], expected)):
            assert passed == wanted, (f"{name} parameter {i}: kernel wants {wanted}, {site['line']} "
                                      f"passes {site['source'][i]!r} ({passed})")


PTX_TYPE = {"ptr": ".u64", "i64": ".u64", "i32": ".u32", "f32": ".f32"}


@pytest.mark.story("FT-007")
@needs_cpp
@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed on this machine")
@pytest.mark.parametrize("module", KERNEL_FILES)
def test_parsed_signatures_agree_with_the_compiled_ptx(module, tmp_path):
    """The compiler's own parameter list (PTX .param widths) confirms the signatures read above."""
    src = tmp_path / module
    src.write_text(kernel_source(module))
    ptx = tmp_path / "out.ptx"
    result = subprocess.run(["nvcc", "-arch=sm_90", "--ptx", "-std=c++17", "-o", str(ptx), str(src)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    entries = {m.group(1): re.findall(r"\.param\s+(\.\w+)\s+\w+", m.group(2))
               for m in re.finditer(r"\.entry\s+(\w+)\s*\(([^)]*)\)", ptx.read_text())}
    signatures = kernel_signatures(module)
    assert set(entries) == set(signatures)
    for name, kinds in signatures.items():
        assert entries[name] == [PTX_TYPE[k] for k in kinds], f"{module}:{name}: PTX {entries[name]} vs {kinds}"


@pytest.mark.story("FT-007")
@needs_cpp
def test_every_declared_kernel_is_bound_by_the_backend():
    launched = {(s["module"], n) for s in launch_sites() for n in s["names"]}
    for module in KERNEL_FILES:
        for name in kernel_signatures(module):
            assert (module, name) in launched, f"{module}:{name} is compiled but never launched"


@pytest.mark.story("FT-007")
def test_scalar_helpers_have_the_c_widths():
    # int = 4 bytes, long long = 8, float = 4, a device pointer = 8 (NULL must be pointer-sized)
    assert cuda_runtime.i32(7).dtype == np.int32
    assert cuda_runtime.i64(7).dtype == np.int64
    assert cuda_runtime.f32(0.5).dtype == np.float32
    assert cuda_runtime.NULL.dtype.itemsize == 8 and int(cuda_runtime.NULL) == 0


@pytest.mark.story("FT-007")
@pytest.mark.parametrize("constant, source, macro", [
    ("MATVEC_MAX_T", "matmul.cu", "MATVEC_MAX_T"),
    ("ATT_MAX_HEAD_DIM", "attention.cu", "ATT_MAX_HEAD_DIM"),
])
def test_limits_shared_by_python_and_kernels_agree(constant, source, macro):
    m = re.search(rf"^#define\s+{macro}\s+(\d+)", (KERNEL_DIR / source).read_text(), flags=re.M)
    assert m, f"{source} no longer defines {macro}"
    assert getattr(cuda_module, constant) == int(m.group(1))


@pytest.mark.story("FT-007")
@pytest.mark.parametrize("method", PUBLIC_METHODS)
@pytest.mark.parametrize("backend", [NumpyBackend, CudaBackend], ids=["numpy", "cuda"])
def test_both_backends_implement_the_interface_with_its_signature(backend, method):
    ours = inspect.signature(getattr(backend, method))
    interface = inspect.signature(getattr(Backend, method))
    assert [(p.name, p.kind, p.default) for p in ours.parameters.values()] == \
           [(p.name, p.kind, p.default) for p in interface.parameters.values()], f"{backend.__name__}.{method}"
    assert not getattr(backend, "__abstractmethods__", set())


@pytest.mark.story("FT-007")
@pytest.mark.parametrize("method", HOST_DEFAULTS)
def test_cuda_backend_overrides_the_host_defaults(method):
    assert getattr(CudaBackend, method) is not getattr(Backend, method), \
        f"CudaBackend inherits base.{method}, which ignores device memory"


# -- tests: GPU ---------------------------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.story("FT-007")
@pytest.mark.parametrize("module", KERNEL_FILES)
def test_every_launched_kernel_loads_through_rawmodule(module):
    """NVRTC compiles the file and every name the backend launches from it can be looked up
    (the names come from the launch sites, so this needs no preprocessor on the GPU host)."""
    from stories.foundation._cuda_conformance import cuda_backend

    cuda_backend()                                   # skips without a usable GPU
    loaded = cuda_module._module(0, module)
    names = {n for s in launch_sites() if s["module"] == module for n in s["names"]}
    assert names
    for name in sorted(names):
        assert loaded.get_function(name) is not None, f"{module}:{name}"


def _op_calls(rng):
    """One small call of every op: (name, fn(backend, weights, arrays) -> result)."""
    from stories.foundation._cuda_conformance import f32_tensor
    from worker.config import RopeConfig

    x = rng.standard_normal((5, 64)).astype(np.float32)
    w = f32_tensor(rng.standard_normal((48, 64)) * 0.1, "w")
    bias = f32_tensor(rng.standard_normal(48) * 0.1, "bias")
    norm = f32_tensor(1 + 0.1 * rng.standard_normal(64), "norm")
    heads = rng.standard_normal((5, 4, 16)).astype(np.float32)
    rope = RopeConfig(dim=16, base=10000.0, style="neox")

    def attention(b, a):
        cache = b.new_kv_cache(1, 8, 2, 16)
        try:
            return b.attention(a(heads), a(heads[:, :2]), a(heads[:, 2:]), cache, 0, 0)
        finally:
            b.free_kv_cache(cache)

    return [
        ("embedding", lambda b, a: b.embedding(b.load_weight(w), np.array([0, 47, 3]))),
        ("matmul", lambda b, a: b.matmul(a(x), b.load_weight(w), b.load_weight(bias))),
        ("add", lambda b, a: b.add(a(x), a(x[::-1].copy()))),
        ("mul", lambda b, a: b.mul(a(x), a(x[::-1].copy()))),
        ("rmsnorm", lambda b, a: b.rmsnorm(a(x), b.load_weight(norm), 1e-5)),
        ("layernorm", lambda b, a: b.layernorm(a(x), b.load_weight(norm), b.load_weight(norm), 1e-5)),
        ("rope", lambda b, a: b.rope(a(heads), np.arange(3, 8), rope)),
        ("attention_f16kv", attention),
        ("swiglu", lambda b, a: b.swiglu(a(x), a(x[::-1].copy()))),
        ("gelu", lambda b, a: b.gelu(a(x))),
    ]


@pytest.mark.gpu
@pytest.mark.story("FT-007")
def test_every_op_answers_with_device_arrays_that_match_the_reference():
    import cupy

    from stories.foundation._cuda_conformance import check, checking_backend

    b = checking_backend()
    ref = NumpyBackend()
    rng = np.random.default_rng(7)
    for op, call in _op_calls(rng):
        out = call(b, b.asarray)
        assert isinstance(out, cupy.ndarray) and out.device.id == 0, f"{op} returned {type(out).__name__}"
        assert out.dtype == np.float32
        host = b.to_host(out)
        assert isinstance(host, np.ndarray) and host.dtype == np.float32
        check(op, "FT-007 boundary smoke", host, call(ref, lambda v: v))
    picked = b.argmax(b.asarray(np.array([[0.0, 3.0, 3.0, -1.0]], np.float32)))
    assert isinstance(picked, np.ndarray) and picked.tolist() == [1]      # argmax answers on the host
