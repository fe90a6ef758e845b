"""FT-045 Documentation complete: every file the documents name exists, and no document names a path
outside the repository.

Acceptance:
- every repository path in backticks in README.md, docs/*.md and reports/README.md (worker/..., stories/...,
  `gates/gateN/manifest.json` as a pattern) exists; a bare source file name (`bpe.py`) exists somewhere in
  the repository; generated outputs under reports/ are exempt, they appear when a run writes them;
- every entry of the README's Layout section exists;
- no document names an absolute machine path (/work/..., /tmp/..., /home/...).
"""
import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.story("FT-045")

ROOT = Path(__file__).resolve().parents[2]
TOP_LEVEL = ("worker/", "stories/", "gates/", "fixtures/", "scripts/", "docs/", "benchmarks/", "tools/", ".ci/")
SOURCE_SUFFIXES = (".py", ".cu", ".cuh", ".sh", ".md", ".toml")
BACKTICKED = re.compile(r"`([^`\s]+)`")
PLACEHOLDER = re.compile(r"(?<=[a-z])N(?=[/._]|$)|<[^>]+>")      # gateN, <name>
MACHINE_PATH = re.compile(r"(?<![\w.])/(?:work|tmp|home|root|opt|mnt|Users)/[\w.-]+")


def documents() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "reports" / "README.md"]


def repository_files() -> set[str]:
    skip = {".git", ".venv", ".cache", "reports", "__pycache__", "node_modules"}
    return {p.name for p in ROOT.rglob("*") if p.is_file() and not skip & set(p.relative_to(ROOT).parts)}


def expand_braces(path: str) -> list[str]:
    """`test_lt00{1,2}_*.py` -> both names, as the shell expands them."""
    match = re.search(r"\{([^{}]*)\}", path)
    if not match:
        return [path]
    return [p for option in match.group(1).split(",")
            for p in expand_braces(path[:match.start()] + option + path[match.end():])]


def exists(path: str) -> bool:
    path = path.split("::")[0].rstrip(".,:;")
    return all(_exists_one(p) for p in expand_braces(path))


def _exists_one(path: str) -> bool:
    path = re.sub(r"…[A-Za-z]*\d*", "*", path)          # test_ft001…ft050_*.py: a range
    if PLACEHOLDER.search(path) or "*" in path:
        pattern = re.sub(r"\*\*+(?!/)", "**/*", PLACEHOLDER.sub("*", path).rstrip("/"))   # a/**.py -> a/**/*.py
        return any(ROOT.glob(pattern))
    return (ROOT / path).exists()


def named_paths(text: str) -> list[str]:
    """Backticked words that are repository paths: a known top-level folder, or a top-level file."""
    out = []
    for word in BACKTICKED.findall(text):
        word = word.split("(")[0]
        if word.startswith(TOP_LEVEL) or word in ("README.md", "pyproject.toml", "conftest.py"):
            out.append(word)
    return out


def bare_file_names(text: str) -> list[str]:
    return [w for w in BACKTICKED.findall(text) if "/" not in w and w.endswith(SOURCE_SUFFIXES)
            and re.fullmatch(r"\w[\w.-]*", w)]


def layout_entries() -> list[str]:
    """'worker/  the worker: engine.py, backend/ (numpy.py, kernels/)' -> worker/engine.py,
    worker/backend/numpy.py, worker/backend/kernels/, ... (an entry may continue on indented lines)."""
    section = (ROOT / "README.md").read_text().split("## Layout", 1)[1].split("\n## ", 1)[0]
    entries = []
    for folder, body in re.findall(r"^ {4}(\S+/)(.*?)(?=^ {4}\S|\Z)", section, re.M | re.S):
        body = re.sub(r"([\w.-]+/)\s*\(([^)]*)\)",
                      lambda m: " ".join(m.group(1) + n.strip() for n in m.group(2).split(",")), " ".join(body.split()))
        entries.append(folder)
        entries += [folder + name for name in re.findall(r"[\w.-]+(?:/[\w.-]+)*(?:\.py|/)", body)]
    return entries


@pytest.mark.parametrize("document", documents(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_path_a_document_names_exists(document):
    text = document.read_text()
    missing = [p for p in named_paths(text) if not p.startswith("reports/") and not exists(p)]
    assert not missing, f"{document.name} names paths that do not exist: {missing}"
    if document.parent.name == "reports":
        return                                  # the files it names are the ones runs write
    files = repository_files()
    unknown = [name for name in bare_file_names(text) if name not in files]
    assert not unknown, f"{document.name} names files that are nowhere in the repository: {unknown}"


@pytest.mark.parametrize("document", documents(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_no_document_names_a_machine_path(document):
    found = MACHINE_PATH.findall(document.read_text())
    assert not found, f"{document.name} names paths outside the repository: {found}"


def test_every_entry_of_the_readme_layout_exists():
    entries = layout_entries()
    assert len(entries) > 10, f"the Layout section parse found only {entries}"
    missing = [e for e in entries if not e.startswith("reports/") and not exists(e)]   # reports/*: generated
    assert not missing, f"README Layout names what does not exist: {missing}"


def test_the_path_check_catches_a_missing_path():
    assert not exists("worker/gguf.py") and exists("worker/gguf/") and exists("gates/gateN/manifest.json")
    assert exists("gates/gate{1,2}/manifest.json") and not exists("gates/gate{1,9}/manifest.json")
    assert named_paths("see `worker/gguf.py` and `worker/engine.py`") == ["worker/gguf.py", "worker/engine.py"]
    assert MACHINE_PATH.findall("read /work/shared/x.md first") == ["/work/shared"]
