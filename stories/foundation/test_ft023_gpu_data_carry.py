"""FT-023 Integration test framework: the gate run's data reaches a GPU machine in small calls.

Acceptance (scripts/gpu_carry.py, on synthetic items):
- pack cuts each item's archive into parts that fill numbered call folders, none over the chunk size;
- stage, call by call, installs an item only once all its parts are in, byte for byte as packed;
- a part damaged on the way is refused by its sha256 (nothing installed) and removed to be carried again.
"""
import importlib.util
import os
import shutil
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.story("FT-023")

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "gpu_carry.py"
MIB = 1 << 20


@pytest.fixture
def carry(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("gpu_carry", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "gpu_carry", module)   # its dataclasses look their module up
    spec.loader.exec_module(module)
    here, there = tmp_path / "here", tmp_path / "there"
    monkeypatch.setattr(module, "CARRY", here / ".gpu-carry")
    monkeypatch.setattr(module, "STAGE", there / "stage")
    monkeypatch.setattr(module, "CACHE", there / "cache")
    monkeypatch.setattr(module, "DESTINATIONS", {"site": there / "site", "cache": there / "cache",
                                                 "stage": there / "stage"})
    source = here / "data"
    source.mkdir(parents=True)
    files = {"weights.bin": os.urandom(int(2.5 * MIB)),            # incompressible: 3 parts of 1 MiB
             "vocab/words.txt": b"word\n" * 200_000,               # compresses to little
             "vocab/ids.out": bytes(range(256)) * 10}
    for name, data in files.items():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        (source / name).write_bytes(data)
    found = [module.Item("model", "cache", [(source / "weights.bin", "models/weights.bin")], 0, "model rows"),
             module.Item("vocab", "site", [(source / "vocab/words.txt", "vocab_pkg/words.txt"),
                                           (source / "vocab/ids.out", "vocab_pkg/ids.out")], 6, "vocab rows")]
    monkeypatch.setattr(module, "items", lambda with_qwen: (found, []))
    module.files = files
    return module


def _call(module, index: int) -> list[str]:
    """What the GPU machine sees in call `index`: that call folder alone under .gpu-carry."""
    there = module.CARRY.parent.parent / "there-tree" / ".gpu-carry"
    if there.exists():
        shutil.rmtree(there)
    there.mkdir(parents=True)
    shutil.copytree(module.CARRY / f"c{index}", there / f"c{index}")
    original = module.CARRY
    try:
        module.CARRY = there
        return module.stage()
    finally:
        module.CARRY = original


def test_parts_fill_call_folders_up_to_the_chunk_size(carry):
    plan = carry.pack(with_qwen=False, chunk_mib=1)
    sizes = [c["bytes"] for c in plan["calls"]]
    assert all(size <= MIB for size in sizes) and sizes[:-1] == [MIB] * (len(sizes) - 1)
    on_disk = {p.name: p.stat().st_size for p in carry.CARRY.glob("c*/*.part*")}
    assert sum(on_disk.values()) == sum(m["bytes"] for m in plan["items"])
    model = next(m for m in plan["items"] if m["item"] == "model")
    assert len(model["parts"]) == 3 and model["dest"] == "cache"


def test_stage_installs_each_item_once_all_its_parts_are_in(carry):
    plan = carry.pack(with_qwen=False, chunk_mib=1)
    last = plan["calls"][-1]["index"]
    for index in range(1, last):
        lines = _call(carry, index)
        assert not any("installed now" in line for line in lines if line.startswith("model")), lines
    lines = _call(carry, last)
    assert any(line.startswith("model") and "verified" in line for line in lines), lines
    there = carry.DESTINATIONS
    assert (there["cache"] / "models/weights.bin").read_bytes() == carry.files["weights.bin"]
    assert (there["site"] / "vocab_pkg/words.txt").read_bytes() == carry.files["vocab/words.txt"]
    assert (there["site"] / "vocab_pkg/ids.out").read_bytes() == carry.files["vocab/ids.out"]
    assert carry.installed() == {"model", "vocab"}
    assert f"export M0_CACHE={there['cache']}" in (carry.STAGE / "env.sh").read_text()


def test_a_damaged_part_is_refused_and_removed(carry):
    plan = carry.pack(with_qwen=False, chunk_mib=1)
    part = next(carry.CARRY.glob("c1/model.part000"))
    data = bytearray(part.read_bytes())
    data[1000] ^= 0xFF
    part.write_bytes(bytes(data))
    for call in plan["calls"]:
        lines = _call(carry, call["index"])
    assert any(line.startswith("model") and "CORRUPT" in line for line in lines), lines
    assert not (carry.DESTINATIONS["cache"] / "models/weights.bin").exists()
    assert "model" not in carry.installed()
    assert not list((carry.STAGE / "parts").glob("model.part*"))


BUILD_ONCE = """
import sys, time
from pathlib import Path
from fixtures.paths import build_lock
target, log = Path(sys.argv[1]), Path(sys.argv[2])
if not target.exists():
    with build_lock(target):
        if not target.exists():
            with open(log, "a") as f:
                f.write("built\\n")
            time.sleep(0.5)                      # long enough for the others to arrive meanwhile
            tmp = target.with_name(target.name + ".tmp")
            tmp.write_text("done")
            tmp.replace(target)
print(target.read_text())
"""


def test_parallel_workers_build_a_cached_fixture_once(tmp_path):
    """pytest-xdist workers asking for one cached fixture at once: one builds it, the others wait
    for it (fixtures.paths.build_lock) and read it whole."""
    import subprocess

    root = Path(__file__).resolve().parents[2]
    target, log = tmp_path / "fixture.bin", tmp_path / "builds.log"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")])))
    workers = [subprocess.Popen([sys.executable, "-c", BUILD_ONCE, str(target), str(log)], cwd=root, env=env,
                                stdout=subprocess.PIPE, text=True) for _ in range(4)]
    outputs = [w.communicate(timeout=60)[0].strip() for w in workers]
    assert [w.returncode for w in workers] == [0] * 4
    assert outputs == ["done"] * 4
    assert log.read_text() == "built\n"
