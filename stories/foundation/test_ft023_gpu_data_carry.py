"""FT-023 Integration test framework: the gate run's data reaches a GPU machine in small calls.

Acceptance (scripts/gpu_carry.py, on synthetic items):
- pack cuts each item's archive into parts that fill numbered call folders, none over the chunk size;
- stage, call by call, installs an item only once all its parts are in, byte for byte as packed;
- a part damaged on the way is refused by its sha256 (nothing installed) and removed to be carried again;
- the oracles (transformers, tokenizers, huggingface_hub) travel as wheels at the venv's versions with their
  runtime closure for CPython 3.12 on x86_64 Linux, less torch, numpy and torch's own dependencies; stage
  pip-installs them into the site, where Python then imports them at those versions; wheels not cached here
  are listed by pack as missing, with the command that fetches them.
"""
import importlib.metadata
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import zipfile
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


def _load(monkeypatch):
    spec = importlib.util.spec_from_file_location("gpu_carry", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "gpu_carry", module)
    spec.loader.exec_module(module)
    return module


def _dist_info(folder: Path, name: str, version: str, requires=()) -> None:
    """An installed project's metadata, as importlib.metadata reads it."""
    info = folder / f"{name}-{version}.dist-info"
    info.mkdir(parents=True)
    lines = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}"]
    lines += [f"Requires-Dist: {r}" for r in requires]
    (info / "METADATA").write_text("\n".join(lines) + "\n")


def test_the_closure_follows_markers_for_the_gpu_machine_not_this_interpreter(tmp_path, monkeypatch):
    """Requirements are kept by their markers on CPython 3.12 / x86_64 Linux without extras, whatever runs pack."""
    module = _load(monkeypatch)
    _dist_info(tmp_path, "m0_fake_root", "1.0", [
        'm0-fake-new; python_version >= "3.12"', 'm0-fake-old; python_version < "3.12"',
        'm0-fake-win; sys_platform == "win32"', 'm0-fake-arm; platform_machine == "aarch64"',
        'm0-fake-dev; extra == "dev"', "m0_fake_stop>=1", "M0.Fake.Mid"])
    _dist_info(tmp_path, "m0_fake_new", "2.0")
    _dist_info(tmp_path, "m0_fake_mid", "3.0", ["m0-fake-leaf==4.0"])
    _dist_info(tmp_path, "m0_fake_leaf", "4.0")
    _dist_info(tmp_path, "m0_fake_stop", "5.0", ["m0-fake-behind-stop"])
    monkeypatch.syspath_prepend(str(tmp_path))
    closure = module.dependency_closure(["m0_fake_root"], stop=frozenset({"m0-fake-stop"}))
    assert closure == {"m0-fake-root": "1.0", "m0-fake-new": "2.0", "m0-fake-mid": "3.0", "m0-fake-leaf": "4.0"}


def test_the_oracle_wheels_are_the_venvs_versions_without_torch_or_numpy(monkeypatch):
    module = _load(monkeypatch)
    needed = module.oracle_wheels_needed()
    for name in ("transformers", "tokenizers", "huggingface_hub"):
        assert needed[module._canonical(name)] == importlib.metadata.version(name), name
    # transformers' own runtime requirements (its METADATA), not carried by .whl
    for name in ("safetensors", "regex", "pyyaml", "tqdm"):
        assert needed.get(name) == importlib.metadata.version(name), name
    # the machine's torch keeps its own numpy and dependencies (filelock, fsspec: torch's requirements too)
    for name in ("torch", "numpy", "filelock", "fsspec", "sympy", "jinja2"):
        assert name not in needed, name
    # transformers' extras (accelerate, sentencepiece, ...) are not runtime requirements
    assert "accelerate" not in needed and "sentencepiece" not in needed
    carried = {module._wheel_project(p)[0] for folder in module.CARRIED_WHEELS for p in folder.glob("*.whl")}
    assert not carried & set(needed)


def test_the_cached_oracle_wheels_install_on_the_gpu_machine(monkeypatch):
    """Every wheel pack would carry is in the cache at its version, and is one CPython 3.12 on manylinux_2_28
    x86_64 can install (packaging's tag rules). On the GPU machine after staging: they installed."""
    module = _load(monkeypatch)
    if not module.ORACLE_WHEELS.is_dir() and "oracles" in module.installed():
        check_staged_oracles(module)      # the GPU machine, where the oracles item was staged
        return
    if not module.ORACLE_WHEELS.is_dir():
        pytest.skip(f"no oracle wheel cache here ({module.FETCH_ORACLES} fetches it; needs network)")
    from packaging.tags import compatible_tags, cpython_tags
    from packaging.utils import parse_wheel_filename

    wheels, missing = module.find_oracle_wheels(module.oracle_wheels_needed(), module.ORACLE_WHEELS)
    if missing:   # pack lists them as missing (test_missing_oracle_wheels_are_listed_by_pack_...)
        pytest.skip(f"oracle wheels not cached here: {missing} ({module.FETCH_ORACLES})")
    platforms = module.THERE_PLATFORMS + ["linux_x86_64"]
    there = set(cpython_tags((3, 12), platforms=platforms)) | set(compatible_tags((3, 12), "cp312", platforms))
    for wheel in wheels:
        assert parse_wheel_filename(wheel.name)[3] & there, wheel.name


def test_the_wheels_every_call_installs_are_the_venvs_versions(monkeypatch):
    """fetch-wheels writes .whl and .whl-test: each project at the version this venv runs."""
    module = _load(monkeypatch)
    for needed in module.carried_wheels_needed().values():
        for name, version in needed.items():
            assert importlib.metadata.version(name) == version, name


def test_fetch_wheels_replaces_another_version_and_fetches_what_is_missing(tmp_path, monkeypatch):
    module = _load(monkeypatch)
    folder = tmp_path / ".whl"
    monkeypatch.setattr(module, "CARRIED_PROJECTS", {folder: ("gguf", "uvicorn")})
    gguf, uvicorn = (importlib.metadata.version(n) for n in ("gguf", "uvicorn"))
    stale = _fake_wheel(folder, "gguf", "0.0.1")          # another version of a carried project
    current = _fake_wheel(folder, "uvicorn", uvicorn)     # already the venv's
    other = _fake_wheel(folder, "m0_fake_extra", "1.0")   # not a carried project: left alone
    asked = []

    def download(needed, where, what):
        asked.append(module.find_oracle_wheels(needed, where)[1])
        return 0

    monkeypatch.setattr(module, "download_wheels", download)
    assert module.fetch_carried_wheels() == 0
    assert not stale.exists() and current.exists() and other.exists()
    assert asked == [[f"gguf=={gguf}"]]


def check_staged_oracles(module) -> None:
    """The staged oracle wheels installed: Python imports each oracle at the version the item carried."""
    lines = module.oracle_versions()
    assert len(lines) == len(module.ORACLES), lines
    assert not [line for line in lines if "MISMATCH" in line or "NOT IMPORTABLE" in line], lines


def _fake_wheel(folder: Path, name: str, version: str) -> Path:
    """A minimal wheel (PEP 427): one package whose __version__ is `version`, and its .dist-info."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}-{version}-py3-none-any.whl"
    info = f"{name}-{version}.dist-info"
    files = {f"{name}/__init__.py": f"__version__ = {version!r}\n",
             f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
             f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: m0-test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    files[f"{info}/RECORD"] = "".join(f"{f},,\n" for f in files) + f"{info}/RECORD,,\n"
    with zipfile.ZipFile(path, "w") as z:
        for arcname, text in files.items():
            z.writestr(arcname, text)
    return path


@pytest.fixture
def oracle_carry(carry, tmp_path, monkeypatch):
    """The carry module with two fake oracles (and a dependency) as the wheels of the oracles item."""
    needed = {"m0-fake-tok": "0.23.3", "m0-fake-hub": "2.4.0", "m0-fake-dep": "1.0"}
    wheels = tmp_path / "here" / "oracle-wheels"
    for name, version in needed.items():
        _fake_wheel(wheels, name.replace("-", "_"), version)
    monkeypatch.setattr(carry, "ORACLES", ("m0_fake_tok", "m0_fake_hub"))
    monkeypatch.setattr(carry, "ORACLE_WHEELS", wheels)
    monkeypatch.setattr(carry, "SITE", carry.DESTINATIONS["site"])
    monkeypatch.setattr(carry, "oracle_wheels_needed", lambda: dict(needed))
    carry.needed = needed
    return carry


def _imported_versions(site: Path, names) -> dict:
    code = ("import importlib, importlib.metadata, json, sys; print(json.dumps({n: [importlib.import_module(n)"
            ".__version__, importlib.metadata.version(n)] for n in sys.argv[1:]}))")
    out = subprocess.run([sys.executable, "-c", code, *names], env=dict(os.environ, PYTHONPATH=str(site)),
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def test_staged_oracle_wheels_are_imported_from_the_site_at_their_versions(oracle_carry, monkeypatch):
    module = oracle_carry
    oracles, why = module._oracles_item()
    assert why is None and oracles.dest == "stage" and oracles.wheels == {"m0_fake_tok": "0.23.3",
                                                                           "m0_fake_hub": "2.4.0"}
    monkeypatch.setattr(module, "items", lambda with_qwen: ([oracles], []))
    site = module.SITE
    _fake_wheel(site.parent / "old", "m0_fake_tok", "0.1.0")    # an older release already in the site
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--target", str(site),
                    str(site.parent / "old" / "m0_fake_tok-0.1.0-py3-none-any.whl")], check=True)
    plan = module.pack(with_qwen=False, chunk_mib=1)
    assert [m["wheels"] for m in plan["items"]] == [oracles.wheels]
    for call in plan["calls"]:
        lines = _call(module, call["index"])
    assert any("3 wheels installed now" in line for line in lines), lines
    assert module.installed() == {"oracles"}
    assert _imported_versions(site, ["m0_fake_tok", "m0_fake_hub", "m0_fake_dep"]) == {
        "m0_fake_tok": ["0.23.3", "0.23.3"], "m0_fake_hub": ["2.4.0", "2.4.0"], "m0_fake_dep": ["1.0", "1.0"]}
    assert not list(site.glob("m0_fake_tok-0.1.0.dist-info"))
    monkeypatch.delenv("PYTHONPATH", raising=False)
    report = module.oracle_versions()
    assert [line.split()[:2] for line in report] == [["m0_fake_tok", "0.23.3"], ["m0_fake_hub", "2.4.0"]]
    assert not any("MISMATCH" in line for line in report) and str(site) in report[0]
    assert "3 wheels installed" not in " ".join(_call(module, plan["calls"][-1]["index"]))   # once only
    check_staged_oracles(module)
    # An oracle imported at another version than the item carried fails the check.
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--upgrade", "--target",
                    str(site), str(site.parent / "old" / "m0_fake_tok-0.1.0-py3-none-any.whl")], check=True)
    with pytest.raises(AssertionError, match="MISMATCH"):
        check_staged_oracles(module)


def test_missing_oracle_wheels_are_listed_by_pack_with_the_command_that_fetches_them(oracle_carry, monkeypatch):
    module = oracle_carry
    (module.ORACLE_WHEELS / "m0_fake_hub-2.4.0-py3-none-any.whl").unlink()
    _fake_wheel(module.ORACLE_WHEELS, "m0_fake_dep", "0.9")       # another version is not the one
    (module.ORACLE_WHEELS / "m0_fake_dep-1.0-py3-none-any.whl").unlink()
    oracles, why = module._oracles_item()
    assert oracles is None
    assert "m0-fake-hub==2.4.0" in why and "m0-fake-dep==1.0" in why and "m0-fake-tok" not in why
    assert module.FETCH_ORACLES in why
    fresh = _load(monkeypatch)      # items() as the module defines it (the carry fixture replaces it)
    for name in ("ORACLES", "ORACLE_WHEELS", "oracle_wheels_needed"):
        monkeypatch.setattr(fresh, name, getattr(module, name))
    found, missing = fresh.items(with_qwen=False)
    assert "oracles" not in [item.name for item in found] and why in missing


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
