"""FT-023 Integration test framework: the story/gate plugin itself, tested with pytester.

Acceptance: a gate run collects the gate's checks and the stories it requires; a failing story
(or one that fails as a known, xfail-marked failure) flips its gate to FAIL; a skipped required check
makes it INCOMPLETE; all passing is PASS; a required story with no test is NOT RUN; the board is written
as JSON and Markdown.
"""
import json
import os
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.story("FT-023")
pytest_plugins = ["pytester"]

REPO = Path(__file__).resolve().parents[2]


def nested_pythonpath() -> str:
    """PYTHONPATH of the nested pytest runs: the project first, then what this run had (packages
    installed beside the interpreter's, e.g. allure-pytest on a machine given its wheels)."""
    return os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))


def make_project(pytester, story_body: str, check_body: str = "pass", stories=("XX-001",)):
    """A miniature project: one gate requiring one check and the given stories."""
    gate = pytester.mkdir("gates")
    (gate / "gate1").mkdir()
    manifest = {"gate": 1, "title": "Mini", "criteria": "", "stories": list(stories),
                "checks": [{"id": "G1-X", "title": "the gate's own check"}]}
    (gate / "gate1" / "manifest.json").write_text(json.dumps(manifest))
    (gate / "stories.json").write_text(json.dumps(
        [{"id": s, "title": f"story {s}", "team": "Foundation", "sprint": "s1", "gate": 1, "testable": True}
         for s in stories]))
    (gate / "gate1" / "test_gate.py").write_text(textwrap.dedent(f"""
        import pytest
        @pytest.mark.gate_check("G1-X")
        def test_check():
            {check_body}
    """))
    (pytester.mkdir("stories") / "test_story.py").write_text(textwrap.dedent(f"""
        import pytest
        @pytest.mark.story("XX-001")
        def test_story():
            {story_body}
        @pytest.mark.story("ZZ-999")
        def test_unrelated_story():
            pass
    """))
    pytester.makeconftest('pytest_plugins = ["gates.harness.plugin"]')


def run_gate(pytester, *extra):
    return pytester.runpytest_subprocess("gates/gate1", "-p", "no:cacheprovider", "-p", "no:allure_pytest",
                                         "--device", "cpu", *extra)


def board(pytester) -> dict:
    return json.loads((pytester.path / "reports" / "gate-board.json").read_text())


@pytest.fixture
def pytester(pytester, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", nested_pythonpath())
    return pytester


def test_all_required_checks_passing_make_the_gate_pass(pytester):
    make_project(pytester, story_body="assert 1 + 1 == 2")
    result = run_gate(pytester)
    result.assert_outcomes(passed=2, deselected=1)  # the unrelated story is not part of gate 1
    result.stdout.fnmatch_lines(["*Gate 1: Mini  ->  PASS*", "*OVERALL: PASS*"])
    assert board(pytester)["gates"][0]["verdict"] == "PASS"
    assert result.ret == 0


def test_a_failing_story_flips_the_gate_to_fail_and_the_exit_status(pytester):
    make_project(pytester, story_body="assert 1 + 1 == 3")
    result = run_gate(pytester)
    result.stdout.fnmatch_lines(["*Gate 1: Mini  ->  FAIL*", "*FAIL*XX-001*1 of 1 tests failed*"])
    assert board(pytester)["gates"][0]["verdict"] == "FAIL"
    assert result.ret != 0


def test_a_known_failure_marked_xfail_is_a_fail_on_the_board_not_a_skip(pytester):
    make_project(pytester, story_body='pytest.xfail("the small model did not write the word")')
    result = run_gate(pytester)
    result.stdout.fnmatch_lines(["*Gate 1: Mini  ->  FAIL*", "*FAIL*XX-001*known failure: the small model*"])
    assert board(pytester)["gates"][0]["verdict"] == "FAIL"
    assert result.ret != 0


def test_a_skipped_required_check_makes_the_gate_incomplete(pytester):
    make_project(pytester, story_body="pass", check_body='pytest.skip("no GPU here")')
    result = run_gate(pytester)
    result.stdout.fnmatch_lines(["*Gate 1: Mini  ->  INCOMPLETE*", "*NOT RUN*G1-X*no GPU here*"])
    assert board(pytester)["gates"][0]["verdict"] == "INCOMPLETE"
    assert result.ret == 0


def test_a_required_story_without_tests_is_not_run(pytester):
    make_project(pytester, story_body="pass", stories=("XX-001", "XX-002"))
    result = run_gate(pytester)
    result.stdout.fnmatch_lines(["*Gate 1: Mini  ->  INCOMPLETE*", "*NOT RUN*XX-002*no test for this story yet*"])


def test_gpu_tests_skip_with_a_reason_on_cpu_and_count_as_not_run(pytester):
    make_project(pytester, story_body="pass")
    (pytester.path / "stories" / "test_gpu.py").write_text(textwrap.dedent("""
        import pytest
        @pytest.mark.gpu
        @pytest.mark.story("XX-001")
        def test_kernel():
            raise AssertionError("must not run without a GPU")
    """))
    result = run_gate(pytester, "-rs")
    result.stdout.fnmatch_lines(["*Gate 1: Mini  ->  INCOMPLETE*", "*NOT RUN*XX-001*needs a CUDA GPU*"])
    rows = {r["id"]: r for r in board(pytester)["gates"][0]["rows"]}
    assert rows["XX-001"]["status"] == "NOT RUN"
    assert rows["XX-001"]["device"] == "cpu-reference"


def test_the_board_is_written_as_markdown_naming_the_model(pytester):
    make_project(pytester, story_body="record_model('/models/x.gguf')")
    (pytester.path / "stories" / "test_story.py").write_text(textwrap.dedent("""
        import pytest
        @pytest.mark.story("XX-001")
        def test_story(record_model):
            record_model('/models/x.gguf')
    """))
    run_gate(pytester)
    markdown = (pytester.path / "reports" / "gate-board.md").read_text()
    assert "| PASS | XX-001 |" in markdown and "x.gguf" in markdown


def test_missing_real_model_skips_with_the_environment_variable_to_set(pytester, monkeypatch):
    monkeypatch.setenv("M0_QWEN25_GGUF", "")  # empty: no file, not even the set-up's default one
    make_project(pytester, story_body="pass")
    (pytester.path / "stories" / "test_model.py").write_text(textwrap.dedent("""
        import pytest
        @pytest.mark.needs_model("qwen2.5")
        @pytest.mark.story("XX-001")
        def test_needs_qwen():
            pass
    """))
    result = run_gate(pytester, "-rs")
    result.stdout.fnmatch_lines(["*M0_QWEN25_GGUF*"])


def test_the_board_is_the_same_from_parallel_workers(pytester):
    """With pytest-xdist the workers collect and run the tests and the controller writes the board:
    each test's stories and checks travel with its reports, so the verdicts are those of a plain run."""
    pytest.importorskip("xdist")
    make_project(pytester, story_body="assert 1 + 1 == 3", stories=("XX-001", "XX-002"))
    result = run_gate(pytester, "-n", "2", "--dist", "loadgroup")
    result.stdout.fnmatch_lines(["*Gate 1: Mini  ->  FAIL*", "*FAIL*XX-001*1 of 1 tests failed*",
                                 "*NOT RUN*XX-002*no test for this story yet*"])
    rows = {row["id"]: row["status"] for row in board(pytester)["gates"][0]["rows"]}
    assert rows == {"G1-X": "PASS", "XX-001": "FAIL", "XX-002": "NOT RUN"}
    assert result.ret != 0


def test_a_served_model_that_cannot_be_had_fails_its_tests_alone(pytester):
    """A test whose served model cannot be built errors at setup, and only that test: the board's
    teardown hook, which names the served model, must not raise too (an exception there keeps
    pytest's own teardown from running, and each later test then fails with "previous item was
    not torn down properly")."""
    make_project(pytester, story_body="pass")
    pytester.makeconftest(textwrap.dedent("""
        import pytest
        from gates.harness import plugin
        pytest_plugins = ["gates.harness.plugin"]

        def no_vocabulary():
            raise FileNotFoundError("the tiny model needs a vocabulary that is not here")

        plugin.SERVED_MODELS["tiny_server"] = no_vocabulary

        @pytest.fixture(scope="module")
        def tiny_server():
            return "http://127.0.0.1:9"  # never reached by the tests below: it is not the point
    """))
    (pytester.path / "stories" / "test_served.py").write_text(textwrap.dedent("""
        import pytest
        @pytest.mark.story("XX-001")
        @pytest.mark.parametrize("n", [1, 2, 3])
        def test_uses_the_server(tiny_server, n):
            pass
        @pytest.mark.story("XX-001")
        def test_after_them():
            pass
    """))
    result = run_gate(pytester)
    result.assert_outcomes(passed=6, deselected=1)
    assert "not torn down properly" not in result.stdout.str()


def test_stories_left_out_by_k_under_parallel_workers_do_not_claim_to_have_no_tests(pytester):
    """Under pytest-xdist the workers deselect: a story -k left out is not said to have no test."""
    pytest.importorskip("xdist")
    make_project(pytester, story_body="pass")
    result = run_gate(pytester, "-n", "2", "--dist", "loadgroup", "-k", "test_check")
    result.stdout.fnmatch_lines(["*NOT RUN*XX-001*left out, or no test for it yet*"])
    assert "no test for this story yet" not in result.stdout.str()
