"""FT-023 Integration test framework: a gate run split into shards, and the shards merged into one board.

Acceptance: `--m0-shard I/N` runs shard I of N of the gate's selection and writes its results file
(reports/gate-results-shard-I-of-N.json); `python -m worker gates --merge` of all shards gives exactly the
board of one unsharded run with the same outcomes (with or without pytest-xdist); a shard not run leaves its
tests NOT RUN ("shard I/N not run") and the gate INCOMPLETE, never PASS; files of different runs (another
selection, collection, device, example scale or shard count, a shard twice) are refused with exit status 2;
a board of fewer hypothesis examples says so; the split of the real gate 1 is deterministic and balances the
tests that use the device.
"""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from gates.harness.shards import assign_shards, parse_shard

pytestmark = pytest.mark.story("FT-023")
pytest_plugins = ["pytester"]

REPO = Path(__file__).resolve().parents[2]

# A gate whose required rows draw on tests in several modules: some use the device (shared under
# xdist, and balanced across shards), one fails, one skips, one story has no test.
STORY_MODULES = {
    "test_a.py": """
        import pytest
        pytestmark = [pytest.mark.story("XX-001"), pytest.mark.uses_device]
        @pytest.mark.parametrize("n", range(3))
        def test_a(n):
            pass
    """,
    "test_b.py": """
        import pytest
        pytestmark = pytest.mark.story("XX-002")
        def test_ok():
            pass
        def test_second():
            assert 1 + 1 == {two}
    """,
    "test_c.py": """
        import pytest
        pytestmark = pytest.mark.uses_device
        @pytest.mark.story("XX-003")
        def test_c():
            pass
        @pytest.mark.story("XX-001")
        def test_c2():
            pass
    """,
    "test_d.py": """
        import pytest
        @pytest.mark.story("XX-004")
        def test_d():
            pass
        @pytest.mark.story("ZZ-999")
        def test_unrelated():
            pass
    """,
}


def nested_env() -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}


def make_project(pytester, failing: bool = True, complete: bool = False, stories=None):
    """failing: one story test fails; complete: every required row has a test that can pass (else G1-B skips
    and XX-005 has no test)."""
    stories = stories or ("XX-001", "XX-002", "XX-003", "XX-004") + (() if complete else ("XX-005",))
    gates = pytester.mkdir("gates")
    (gates / "gate1").mkdir()
    manifest = {"gate": 1, "title": "Mini", "criteria": "", "stories": list(stories),
                "checks": [{"id": "G1-A", "title": "the gate's own check"},
                           {"id": "G1-B", "title": "a check that needs a GPU"}]}
    (gates / "gate1" / "manifest.json").write_text(json.dumps(manifest))
    (gates / "stories.json").write_text(json.dumps([{"id": s, "title": f"story {s}", "team": "Foundation"}
                                                    for s in stories]))
    (gates / "gate1" / "test_gate.py").write_text(textwrap.dedent("""
        import pytest
        @pytest.mark.gate_check("G1-A")
        def test_check():
            pass
        @pytest.mark.gate_check("G1-B")
        def test_gpu_check():
            {gpu_check}
    """.replace("{gpu_check}", "pass" if complete else 'pytest.skip("no GPU here")')))
    story_dir = pytester.mkdir("stories")
    for name, body in STORY_MODULES.items():
        (story_dir / name).write_text(textwrap.dedent(body.replace("{two}", "3" if failing else "2")))
    pytester.makeconftest('pytest_plugins = ["gates.harness.plugin"]')


def run_gate(pytester, *extra, env=None):
    return subprocess.run([sys.executable, "-m", "pytest", "gates/gate1", "-p", "no:cacheprovider",
                           "-p", "no:allure_pytest", "--device", "cpu", *extra],
                          cwd=pytester.path, env={**nested_env(), **(env or {})}, capture_output=True, text=True)


def merge(pytester, *files, out="merged"):
    """`python -m worker gates --merge` of these results files (names under reports/) into <out>/."""
    paths = [str(pytester.path / "reports" / f) for f in files]
    return subprocess.run([sys.executable, "-m", "worker", "gates", "--merge", *paths,
                           "--gates-dir", str(pytester.path / "gates"), "--reports-dir", str(pytester.path / out)],
                          cwd=REPO, env=nested_env(), capture_output=True, text=True)


def board(pytester, folder="reports") -> dict:
    return json.loads((pytester.path / folder / "gate-board.json").read_text())


def results(pytester, name) -> dict:
    return json.loads((pytester.path / "reports" / name).read_text())


def rows(board_json) -> dict:
    return {r["id"]: (r["status"], r["reason"]) for r in board_json["gates"][0]["rows"]}


SHARDS = ("gate-results-shard-1-of-2.json", "gate-results-shard-2-of-2.json")


def test_merged_shards_give_the_board_of_one_unsharded_run(pytester):
    make_project(pytester)
    whole = run_gate(pytester)
    unsharded = board(pytester)
    assert unsharded["gates"][0]["verdict"] == "FAIL"          # the project's own failing test, so a real board
    shard_runs = [run_gate(pytester, "--m0-shard", "1/2"), run_gate(pytester, "--m0-shard", "2/2")]
    ran = [{r["nodeid"] for r in results(pytester, name)["results"]} for name in SHARDS]
    assert ran[0] and ran[1] and not ran[0] & ran[1]           # each shard ran a part, no test twice
    assert ran[0] | ran[1] == {r["nodeid"] for r in results(pytester, "gate-results.json")["results"]}
    merged = merge(pytester, *SHARDS)
    assert merged.returncode == whole.returncode == 1, merged.stderr
    assert board(pytester, "merged") == unsharded               # every row, reason, test list and verdict
    assert "Gate 1: Mini  ->  FAIL" in merged.stdout
    assert all("gate board of shard" in r.stdout for r in shard_runs)


def test_shards_under_parallel_workers_merge_to_the_plain_runs_board(pytester):
    """Under pytest-xdist the controller collects nothing: a worker tells it the collection, and the node ids
    lose xdist's "@device" group suffix, so the results are those of a plain run."""
    pytest.importorskip("xdist")
    make_project(pytester)
    run_gate(pytester)
    unsharded = board(pytester)
    run_gate(pytester, "--m0-shard", "1/2", "-n", "2", "--dist", "loadgroup")
    run_gate(pytester, "--m0-shard", "2/2", "-n", "2", "--dist", "loadgroup")
    for name in SHARDS:
        collection = results(pytester, name)["collection"]
        assert collection and not any("@" in t["nodeid"] for t in collection)
    assert merge(pytester, *SHARDS).returncode == 1
    assert board(pytester, "merged") == unsharded


def test_parallel_workers_leave_the_board_and_the_gate_verdict_to_the_controller(pytester):
    """Each xdist worker sees only its own tests: only the controller, which sees them all, writes the results
    file, the board and Allure's gate verdict (once, not a partial verdict per worker)."""
    pytest.importorskip("xdist")
    pytest.importorskip("allure_pytest")
    make_project(pytester)
    subprocess.run([sys.executable, "-m", "pytest", "gates/gate1", "-p", "no:cacheprovider", "--device", "cpu",
                    "--alluredir", "allure", "-n", "2", "--dist", "loadgroup"],
                   cwd=pytester.path, env=nested_env(), capture_output=True, text=True)
    verdicts = [json.loads(p.read_text())["name"] for p in (pytester.path / "allure").glob("*-result.json")]
    assert [v for v in verdicts if "verdict" in v] == ["Gate 1 verdict: FAIL (Mini)"]


def test_a_missing_shard_leaves_its_tests_not_run_and_the_gate_incomplete(pytester):
    make_project(pytester, failing=False, complete=True)
    assert run_gate(pytester).returncode == 0
    assert board(pytester)["gates"][0]["verdict"] == "PASS"
    run_gate(pytester, "--m0-shard", "1/2")
    shard_two = {r["nodeid"] for r in results(pytester, SHARDS[0])["collection"] if r["shard"] == 2}
    merged = merge(pytester, SHARDS[0])
    assert merged.returncode == 0
    partial = board(pytester, "merged")
    assert partial["gates"][0]["verdict"] == "INCOMPLETE" and partial["overall"] == "INCOMPLETE"
    assert partial["notes"] == ["shards not run: 2/2; their tests are NOT RUN"]
    for row in partial["gates"][0]["rows"]:
        if set(row["tests"]) & shard_two:
            assert row["status"] == "NOT RUN" and "shard 2/2 not run" in row["reason"], row
    assert "NOTE: shards not run: 2/2" in merged.stdout


REFUSALS = {"selection": "another gate selection", "collection": "another collection", "device": "another device",
            "shard count": "another shard count", "example scale": "another hypothesis example scale",
            "same shard twice": "shard 1/2 is in both", "not a results file": "not a gate results file"}


@pytest.mark.parametrize("difference", sorted(REFUSALS))
def test_files_of_different_runs_are_refused(pytester, difference):
    make_project(pytester, failing=False)
    run_gate(pytester, "--m0-shard", "1/2")
    other = {"selection": ["--m0-shard", "2/2", "-k", "not test_d"], "shard count": ["--m0-shard", "2/3"],
             "collection": ["--m0-shard", "2/2"], "device": ["--m0-shard", "2/2"],
             "example scale": ["--m0-shard", "2/2"]}.get(difference)
    if difference == "collection":
        (pytester.path / "stories" / "test_e.py").write_text(
            'import pytest\n@pytest.mark.story("XX-004")\ndef test_new():\n    pass\n')
    if other:
        run_gate(pytester, *other, env={"M0_EXAMPLE_SCALE": "0.5"} if difference == "example scale" else None)
    second = {"shard count": "gate-results-shard-2-of-3.json", "same shard twice": SHARDS[0]}.get(difference, SHARDS[1])
    if difference == "device":
        data = results(pytester, second)
        data["device"] = "cuda (NVIDIA H200)"
        (pytester.path / "reports" / second).write_text(json.dumps(data))
    if difference == "not a results file":
        (pytester.path / "reports" / second).write_text(json.dumps({"gates": []}))
    merged = merge(pytester, SHARDS[0], second)
    assert merged.returncode == 2
    assert "gates --merge: refused:" in merged.stderr and REFUSALS[difference] in merged.stderr, merged.stderr
    assert not (pytester.path / "merged" / "gate-board.json").exists()


def test_a_board_of_fewer_hypothesis_examples_says_so(pytester):
    make_project(pytester, failing=False)
    result = run_gate(pytester, env={"M0_EXAMPLE_SCALE": "0.25"})
    assert "NOTE: hypothesis examples x0.25 (M0_EXAMPLE_SCALE): not a full run" in result.stdout
    assert board(pytester)["notes"] == ["hypothesis examples x0.25 (M0_EXAMPLE_SCALE): not a full run"]
    assert "hypothesis examples x0.25" in (pytester.path / "reports" / "gate-board.md").read_text()
    assert "hypothesis examples x0.25" in (pytester.path / "reports" / "gate-board.html").read_text()
    run_gate(pytester)
    assert board(pytester)["notes"] == []


def test_tests_a_stopped_run_never_reached_are_not_run_not_passed(pytester):
    """-x stops at the first failure: a story with one passed test and one the run never reached is NOT RUN,
    not PASS (its passed test alone does not show the story)."""
    make_project(pytester, failing=False, stories=("XX-001", "XX-002"))
    (pytester.path / "stories" / "test_b.py").write_text(textwrap.dedent("""
        import pytest
        @pytest.mark.story("XX-002")
        def test_1_ok():
            pass
        @pytest.mark.story("XX-001")
        def test_2_fails():
            assert False
        @pytest.mark.story("XX-002")
        def test_3_never_reached():
            pass
    """))
    result = run_gate(pytester, "-x")
    assert result.returncode == 1
    assert rows(board(pytester))["XX-002"] == (
        "NOT RUN", "1 of 2 tests not run: the run ended before it (interrupted, stopped or its worker lost)")


def collect_shard(shard: str, dump: Path) -> list[str]:
    """The node ids `--collect-only --m0-shard` keeps of the real gate 1, and the run's whole collection (each
    test with its shard and whether it uses the device) written to `dump` by a probe plugin."""
    probe = dump.with_suffix(".py")
    probe.write_text(textwrap.dedent(f"""
        import json
        from gates.harness.plugin import uses_device_under_test
        def pytest_collection_finish(session):
            state = session.config._m0
            every = {{t.nodeid: t.shard for t in state.collection}}
            device = {{}}
            for item in session.items:
                device[item.nodeid] = uses_device_under_test(item, session.config.rootpath)
            open({str(dump)!r}, "w").write(json.dumps({{"shards": every, "device_kept": device}}))
    """))
    env = nested_env()
    env["PYTHONPATH"] = os.pathsep.join([str(probe.parent), env["PYTHONPATH"]])
    out = subprocess.run([sys.executable, "-m", "pytest", "gates/gate1", "--collect-only", "-q",
                          "-p", "no:cacheprovider", "--device", "cpu", "--m0-shard", shard, "-p", probe.stem],
                         cwd=REPO, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    return [line for line in out.stdout.splitlines() if "::" in line]


@pytest.mark.slow
def test_the_real_gate1_split_is_deterministic_and_balances_the_device_tests(tmp_path):
    kept = {1: collect_shard("1/2", tmp_path / "probe_one.json"), 2: collect_shard("2/2", tmp_path / "probe_two.json")}
    one, two = (json.loads((tmp_path / f"probe_{n}.json").read_text()) for n in ("one", "two"))
    assert one["shards"] == two["shards"]                   # two sessions, one split
    assert set(kept[1]).isdisjoint(kept[2]) and set(kept[1]) | set(kept[2]) == set(one["shards"])
    assert {n for n, s in one["shards"].items() if s == 1} == set(kept[1])
    device = [sum(one["device_kept"].values()), sum(two["device_kept"].values())]
    total = sum(device)
    assert total > 900                                      # gate 1 has some 980 tests on the device
    assert abs(device[0] - device[1]) <= 0.02 * total, device
    modules = {}
    for nodeid, shard in one["shards"].items():
        modules.setdefault(nodeid.split("::")[0], set()).add(shard)
    assert all(len(shards) == 1 for shards in modules.values())   # a module's fixtures are built once
    sizes = [len(kept[1]), len(kept[2])]
    assert abs(sizes[0] - sizes[1]) <= 0.25 * sum(sizes), sizes


def synthetic_collection(device_sizes: dict[str, int], other_sizes: dict[str, int]) -> list[tuple[str, bool]]:
    tests = [(f"stories/{m}.py::test_{n}", True) for m, size in device_sizes.items() for n in range(size)]
    return tests + [(f"stories/{m}.py::test_{n}", False) for m, size in other_sizes.items() for n in range(size)]


def test_the_split_depends_on_the_collection_only_and_cuts_only_a_module_too_big_for_one_shard():
    tests = synthetic_collection({"big": 8, "mid": 4, "small": 3, "one": 1}, {"plain_a": 6, "plain_b": 5})
    by_module = {}
    for test in tests:
        by_module.setdefault(test[0].split("::")[0], []).append(test)
    reordered = [t for module in reversed(list(by_module)) for t in by_module[module]]
    two = assign_shards(tests, 2)
    assert two == assign_shards(reordered, 2)                  # module order does not matter
    device = [sum(d for t, d in tests if two[t] == s) for s in (1, 2)]
    assert device == [8, 8]                                    # the big module alone is one shard's share
    assert all(len({two[t] for t, _ in members}) == 1 for members in by_module.values())
    assert sorted(sum(not d for t, d in tests if two[t] == s) for s in (1, 2)) == [5, 6]   # the others too
    three = assign_shards(tests, 3)                            # a share of 6: the big module is cut in 6 + 2
    big = [three[t] for t, _ in by_module["stories/big.py"]]
    assert big[:6] == [big[0]] * 6 and big[6:] == [big[6]] * 2 and big[0] != big[6]
    assert sorted(sum(d for t, d in tests if three[t] == s) for s in (1, 2, 3)) == [5, 5, 6]


@pytest.mark.parametrize("text", ["3/2", "0/2", "1", "a/b", ""])
def test_a_shard_is_i_of_n(text):
    with pytest.raises(ValueError, match="shard"):
        parse_shard(text)
    result = subprocess.run([sys.executable, "-m", "worker", "gates", "--shard", text or " "], cwd=REPO,
                            env=nested_env(), capture_output=True, text=True)
    assert result.returncode == 2 and "gates: shard" in result.stderr
    assert str(parse_shard(" 2 / 3 ")) == "2/3"


def test_a_run_names_its_commit_from_git_or_as_stated(monkeypatch, tmp_path):
    """A tree copied without its history (a device call) cannot tell its commit: M0_COMMIT states it, and the
    results say it was stated; elsewhere git answers, and a folder outside any repository is 'unknown'."""
    from gates.harness.allure_results import git_commit

    monkeypatch.setenv("M0_COMMIT", "bb84087")
    assert git_commit(tmp_path) == "bb84087 (M0_COMMIT)"
    monkeypatch.delenv("M0_COMMIT")
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    assert git_commit(tmp_path) == "unknown"
    head = git_commit(Path(__file__).resolve().parents[2])
    assert head != "unknown" and len(head.removesuffix("+changes")) == 12
