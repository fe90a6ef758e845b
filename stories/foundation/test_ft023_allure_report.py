"""FT-023 Integration test framework: what a gate run leaves for the Allure report and the board page.

Acceptance (run with allure-pytest on, in a miniature project, with pytester):
- each gate's verdict is an Allure result of its own: PASS -> passed, FAIL -> failed, INCOMPLETE ->
  broken, with a message saying the verdict in words, every required check (state and reason) in
  its description, and the board attached;
- a gate run starts from an empty results folder (one run, one report);
- each test has one epic, one feature and one story label; its other stories become tags;
- bytes parameters are shown readably, not as "<class 'bytes'>";
- categories.json, executor.json (with the commit) and the gate verdicts in environment.properties;
- a test that records a model file names it by file name and sha256;
- the board is also an HTML page; benchmark ratios and reproducibility runs become PNG plots;
- checks whose tests a -k left out say so on the board instead of "no test implements this check".
"""
import hashlib
import json
import textwrap

import pytest

from stories.foundation.test_ft023_integration_test_framework import make_project, nested_pythonpath

pytestmark = pytest.mark.story("FT-023")
pytest_plugins = ["pytester"]


def run_gate_with_allure(pytester, *extra):
    return pytester.runpytest_subprocess("gates/gate1", "-p", "no:cacheprovider", "--alluredir", "results",
                                         "--device", "cpu", *extra)


def allure_results(pytester) -> list[dict]:
    return [json.loads(p.read_text()) for p in (pytester.path / "results").glob("*-result.json")]


def verdict_result(pytester) -> dict:
    (verdict,) = [r for r in allure_results(pytester) if r["fullName"].endswith("#verdict")]
    return verdict


def labels(result: dict, name: str) -> list[str]:
    return [label["value"] for label in result["labels"] if label["name"] == name]


@pytest.fixture
def pytester(pytester, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", nested_pythonpath())
    return pytester


@pytest.mark.parametrize("story_body, check_body, verdict, status", [
    ("pass", "pass", "PASS", "passed"),
    ("assert 1 + 1 == 3", "pass", "FAIL", "failed"),
    ("pass", 'pytest.skip("no GPU here")', "INCOMPLETE", "broken"),
])
def test_each_gate_verdict_is_an_allure_result_with_its_checks_and_the_board(pytester, story_body, check_body,
                                                                              verdict, status):
    make_project(pytester, story_body=story_body, check_body=check_body)
    run_gate_with_allure(pytester)
    result = verdict_result(pytester)
    assert result["status"] == status
    assert result["name"].startswith(f"Gate 1 verdict: {verdict}")
    assert result["statusDetails"]["message"].startswith(f"Gate 1 {verdict}")
    for row_id in ("G1-X", "XX-001"):
        assert row_id in result["descriptionHtml"]
    if verdict == "INCOMPLETE":
        assert "no GPU here" in result["descriptionHtml"] and "NOT RUN" in result["statusDetails"]["message"]
    attached = {a["name"]: a["source"] for a in result["attachments"]}
    assert {"gate board (Markdown)", "gate board (JSON)", "gate board (HTML page)"} <= set(attached)
    board_json = json.loads((pytester.path / "results" / attached["gate board (JSON)"]).read_text())
    assert board_json["gates"][0]["verdict"] == verdict
    assert labels(result, "epic") == ["Gate 1"]


def test_a_gate_run_starts_from_an_empty_results_folder(pytester):
    make_project(pytester, story_body="pass")
    stale = pytester.mkdir("results") / "0000-stale-result.json"
    stale.write_text("{}")
    run_gate_with_allure(pytester)
    assert not stale.exists()


def test_report_extras_name_the_gates_categories_and_commit(pytester):
    make_project(pytester, story_body='pytest.xfail("the small model missed the word")')
    run_gate_with_allure(pytester)
    results = pytester.path / "results"
    categories = {c["name"]: c for c in json.loads((results / "categories.json").read_text())}
    assert any(name.startswith("Known failure") for name in categories)
    assert any("no GPU" in name for name in categories) and any("model missing" in name for name in categories)
    executor = json.loads((results / "executor.json").read_text())
    assert executor["buildName"].startswith("commit ") and executor["reportName"] == "M0 gates: Gate 1 FAIL"
    environment = (results / "environment.properties").read_text()
    assert "gate1=FAIL" in environment and "device=cpu-reference" in environment


def test_each_test_has_one_gate_one_feature_one_story_and_tags_for_the_rest(pytester):
    make_project(pytester, story_body="pass", stories=("XX-001", "XX-002"))
    (pytester.path / "stories" / "test_two.py").write_text(textwrap.dedent("""
        import pytest
        @pytest.mark.story("XX-002", "XX-001")
        def test_two_stories():
            pass
    """))
    run_gate_with_allure(pytester)
    (result,) = [r for r in allure_results(pytester) if r["name"] == "test_two_stories"]
    assert labels(result, "epic") == ["Gate 1"]
    assert labels(result, "feature") == ["Foundation"]
    assert labels(result, "story") == ["XX-002"]
    assert "XX-001" in labels(result, "tag")


def test_bytes_parameters_are_shown_readably_and_stay_distinct(pytester):
    make_project(pytester, story_body="pass")
    (pytester.path / "stories" / "test_bytes.py").write_text(textwrap.dedent("""
        import pytest
        @pytest.mark.story("XX-001")
        @pytest.mark.parametrize("raw", [b"", b"GGU", b"\\x00" * 64, b"PK" + b"\\x00" * 62])
        def test_raw(raw):
            pass
    """))
    run_gate_with_allure(pytester)
    shown = sorted(p["value"] for r in allure_results(pytester) if r["name"].startswith("test_raw")
                   for p in r["parameters"] if p["name"] == "raw")
    assert len(shown) == 4 and "<class 'bytes'>" not in shown
    assert "b''" in shown and "b'GGU'" in shown
    assert len({r["historyId"] for r in allure_results(pytester) if r["name"].startswith("test_raw")}) == 4


def test_a_recorded_model_file_is_named_by_file_name_and_sha256(pytester):
    make_project(pytester, story_body="pass")
    model = pytester.path / "tiny.gguf"
    model.write_bytes(b"GGUF" + bytes(60))
    (pytester.path / "stories" / "test_story.py").write_text(textwrap.dedent(f"""
        import pytest
        @pytest.mark.story("XX-001")
        def test_story(record_model, record_property):
            record_model({str(model)!r})
            record_property("haiku", "silicon rivers / forty-two warps in lockstep / the kernel returns")
    """))
    run_gate_with_allure(pytester)
    (result,) = [r for r in allure_results(pytester) if r["name"] == "test_story"]
    digest = hashlib.sha256(model.read_bytes()).hexdigest()
    (param,) = [p for p in result["parameters"] if p["name"] == "model file"]
    assert param["value"] == f"tiny.gguf sha256:{digest[:16]}"
    attached = {a["name"]: a["source"] for a in result["attachments"]}
    assert "haiku" in attached
    assert "forty-two" in (pytester.path / "results" / attached["haiku"]).read_text()
    board = json.loads((pytester.path / "reports" / "gate-board.json").read_text())
    row = next(r for r in board["gates"][0]["rows"] if r["id"] == "XX-001")
    assert row["model_files"][0]["sha256"] == digest


def test_the_board_page_and_plots_are_written(pytester):
    make_project(pytester, story_body="pass")
    reports = pytester.mkdir("reports")
    (reports / "bench.json").write_text(json.dumps(
        {"model": "tiny", "ratios_ours_over_peer": {"decode_tokens_per_s": 1.2, "prefill_tokens_per_s": 0.8}}))
    (pytester.path / "stories" / "test_story.py").write_text(textwrap.dedent("""
        import pytest
        @pytest.mark.story("XX-001")
        def test_story(record_property):
            runs = {str(s): [[s, 1, 2], [s, 1, 2]] for s in range(3)}
            record_property("repro", {"label": "tiny", "runs": runs})
    """))
    run_gate_with_allure(pytester)
    page = (reports / "gate-board.html").read_text()
    assert "Gate 1: Mini" in page and "PASS" in page and "cpu-reference" in page
    for png in ("benchmark-ratios.png", "reproducibility.png"):
        assert (reports / "plots" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"plots/{png}" in page


def test_checks_left_out_by_k_say_so_on_the_board(pytester):
    make_project(pytester, story_body="pass")
    result = pytester.runpytest_subprocess("gates/gate1", "-p", "no:cacheprovider", "-p", "no:allure_pytest",
                                           "--device", "cpu", "-k", "test_story")
    result.stdout.fnmatch_lines(["*NOT RUN*G1-X*not selected in this run*"])
