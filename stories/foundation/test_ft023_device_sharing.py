"""FT-023 Integration test framework: pytest-xdist workers share the device under test.

Acceptance: under `-n N` the tests that use the device run on several workers at once, except those that
measure or fill the whole device (a gate's own check, an `exclusive_device` test): while one of those runs, no
other device test is in its setup, call or teardown, and device tests that arrive while one waits queue behind
it (gates/harness/device_lock.py: a readers-writer lock over flock, with writer preference). A module's shared
device tests stay on one worker (its fixtures and kernel compilations made once); tests that do not use the
device run beside anything. Without xdist nothing is locked; xdist's group suffixes never reach the results.
"""
import fcntl
import json
import multiprocessing
import os
import subprocess
import sys
import time

import pytest

from gates.harness.device_lock import EXCLUSIVE, SHARED, device_lock, lock_paths
from gates.harness.shards import plain_nodeid
from stories.foundation.test_ft023_gate_shards import nested_env

pytestmark = pytest.mark.story("FT-023")
pytest_plugins = ["pytester"]
CONTEXT = multiprocessing.get_context("fork")


def _holder(name, kind, folder, log, release):
    with device_lock("run", kind, folder):
        log.put((name, "in"))
        release.wait(20)
        log.put((name, "out"))


def _start(name, kind, folder, log):
    release = CONTEXT.Event()
    process = CONTEXT.Process(target=_holder, args=(name, kind, folder, log, release))
    process.start()
    return process, release


def _next(log, timeout=10.0):
    return log.get(timeout=timeout)


def _wait_until_locked(path, timeout=10.0):
    """Until another process holds `path`'s flock (a fixed sleep raced a slow process start on a loaded machine)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return
        finally:
            os.close(fd)
        time.sleep(0.01)
    raise AssertionError(f"nobody took {path} within {timeout} s")


def test_an_exclusive_holder_waits_for_the_shared_ones_and_later_shared_ones_wait_for_it(tmp_path):
    log = CONTEXT.Queue()
    reader, release_reader = _start("reader", SHARED, tmp_path, log)
    assert _next(log) == ("reader", "in")
    writer, release_writer = _start("writer", EXCLUSIVE, tmp_path, log)
    _wait_until_locked(lock_paths("run", tmp_path)[0])   # the writer holds the turnstile: it waits for the room
    late, release_late = _start("late reader", SHARED, tmp_path, log)
    time.sleep(0.5)
    assert log.empty(), "a holder got in beside a shared one while an exclusive one waited"
    release_late.set()                                # its release takes effect only once it is in
    release_reader.set()
    assert [_next(log), _next(log)] == [("reader", "out"), ("writer", "in")]
    time.sleep(0.3)
    assert log.empty(), "a shared holder got in beside the exclusive one"
    release_writer.set()
    assert [_next(log), _next(log), _next(log)] == [("writer", "out"), ("late reader", "in"), ("late reader", "out")]
    for p in (reader, writer, late):
        p.join(10)
        assert p.exitcode == 0


def test_shared_holders_are_in_at_the_same_time(tmp_path):
    log = CONTEXT.Queue()
    first, release_first = _start("first", SHARED, tmp_path, log)
    second, release_second = _start("second", SHARED, tmp_path, log)
    assert {_next(log), _next(log)} == {("first", "in"), ("second", "in")}   # both in before either leaves
    release_first.set()
    release_second.set()
    for p in (first, second):
        p.join(10)
        assert p.exitcode == 0


def test_a_dead_holder_frees_the_device(tmp_path):
    log = CONTEXT.Queue()
    writer, _ = _start("writer", EXCLUSIVE, tmp_path, log)
    assert _next(log) == ("writer", "in")
    writer.kill()
    writer.join(10)
    release = CONTEXT.Event()
    release.set()
    reader = CONTEXT.Process(target=_holder, args=("reader", SHARED, tmp_path, CONTEXT.Queue(), release))
    reader.start()
    reader.join(10)                                   # it got in and out: the killed holder's locks are gone
    if reader.exitcode is None:
        reader.kill()
    assert reader.exitcode == 0


def test_an_unknown_kind_is_refused(tmp_path):
    with pytest.raises(ValueError, match="device lock kind"):
        with device_lock("run", "sometimes", tmp_path):
            pass


# -- the plugin under pytest-xdist -----------------------------------------------------------------------

# Each device test writes when it entered and left; a shared one waits (up to 10 s) for another shared test to
# be inside at the same time, which only parallel workers give.
_RECORDER = '''
import json, os, time, pathlib
LOG = pathlib.Path(os.environ["DEVICE_LOG"])

def visit(name, kind, wait_for_company=False):
    inside = LOG.parent / "inside"
    inside.mkdir(exist_ok=True)
    me = inside / f"{name}-{os.getpid()}"
    start = time.time()
    me.write_text(kind)
    company = False
    deadline = time.time() + (10 if wait_for_company else 0.4)
    while time.time() < deadline:
        others = [p for p in inside.iterdir() if p != me and p.read_text() == "shared"]
        if others:
            company = True
            if wait_for_company:
                break
        time.sleep(0.05)
    time.sleep(0.2)
    me.unlink()
    with open(LOG, "a") as f:
        f.write(json.dumps({"name": name, "kind": kind, "start": start, "end": time.time(),
                            "company": company, "worker": os.environ.get("PYTEST_XDIST_WORKER")}) + "\\n")
'''

_SHARED_MODULE = '''
import pytest
from recorder import visit

@pytest.mark.uses_device
@pytest.mark.parametrize("n", range(2))
def test_shared(n):
    visit(f"{__name__}-{n}", "shared", wait_for_company=True)
'''

_OTHER_MODULE = '''
import pytest
from recorder import visit

@pytest.mark.uses_device
@pytest.mark.exclusive_device
@pytest.mark.parametrize("n", range(3))
def test_alone(n):
    visit(f"alone{n}", "exclusive")

@pytest.mark.parametrize("n", range(4))
def test_host_only(n):
    pass
'''
SHARED_MODULES = ("test_shared_a", "test_shared_b", "test_shared_c")


def _run_project(pytester, *args):
    pytester.makeconftest('pytest_plugins = ["gates.harness.plugin"]')
    (pytester.path / "recorder.py").write_text(_RECORDER)
    for name in SHARED_MODULES:
        (pytester.path / f"{name}.py").write_text(_SHARED_MODULE)
    (pytester.path / "test_other.py").write_text(_OTHER_MODULE)
    log = pytester.path / "device.jsonl"
    tmp = pytester.mkdir("tmp")                       # pytest's temporary folders, with the lock's files, go here
    env = {**nested_env(), "DEVICE_LOG": str(log), "PYTHONPATH": f"{pytester.path}:{nested_env()['PYTHONPATH']}",
           "TMPDIR": str(tmp), "PYTEST_DEBUG_TEMPROOT": str(tmp)}
    result = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider",
                             "-p", "no:allure_pytest", "--device", "cpu", "-q", *args],
                            cwd=pytester.path, env=env, capture_output=True, text=True, timeout=300)
    visits = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    return result, visits


def test_under_xdist_shared_device_tests_overlap_and_exclusive_ones_run_alone(pytester):
    pytest.importorskip("xdist")
    result, visits = _run_project(pytester, "-n", "4", "--dist", "loadgroup")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert len(visits) == 9
    for module in SHARED_MODULES:                    # a module's device tests stay on one worker
        assert len({v["worker"] for v in visits if v["name"].startswith(module)}) == 1, visits
    alone = [v for v in visits if v["kind"] == "exclusive"]
    for a in alone:
        overlapping = [v["name"] for v in visits if v is not a and v["start"] < a["end"] and a["start"] < v["end"]]
        assert not overlapping, f"{a['name']} ran beside {overlapping}"
        assert not a["company"]
    assert any(v["company"] for v in visits if v["kind"] == "shared"), "no two shared device tests ran at once"
    rooms = list((pytester.path / "tmp").rglob("m0-device-*.room"))
    assert rooms and all(any(r.parent.glob("popen-gw*")) for r in rooms)   # beside the workers' temporary folders


def test_without_xdist_nothing_is_locked(pytester):
    result, visits = _run_project(pytester, "-k", "alone or host_only")
    assert result.returncode == 0, result.stdout[-2000:]
    assert len(visits) == 3
    assert not list((pytester.path / "tmp").rglob("m0-device-*")), "a run without workers took the device lock"


@pytest.mark.parametrize("nodeid,plain", [
    ("stories/a.py::test_x[1]@device", "stories/a.py::test_x[1]"),
    ("stories/a.py::test_x@device-test_a", "stories/a.py::test_x"),
    ("stories/a.py::test_x[user@host]", "stories/a.py::test_x[user@host]"),
    ("stories/a.py::test_x[user@host]@llama-quantized-smollm2-Q8_0", "stories/a.py::test_x[user@host]"),
    ("stories/a.py::test_x", "stories/a.py::test_x")])
def test_the_results_name_tests_without_xdist_group_suffixes(nodeid, plain):
    assert plain_nodeid(nodeid) == plain


@pytest.mark.parametrize("device,fixtures,holds", [
    ("cuda", ["smollm2_server", "tmp_path"], True),    # its server process computes on the GPU
    ("cuda", ["server", "device"], True),                # a worker (or a model) started on the run's device
    ("cpu", ["smollm2_server", "device"], False),        # on the CPU they leave the device alone
    ("cuda", ["tiny_server"], False)])                   # the tiny server runs on the CPU whatever the device
def test_a_test_that_puts_work_on_the_gpu_through_its_fixtures_holds_the_device(tmp_path, device, fixtures, holds):
    """A worker server or a model started on the device allocates there: an exclusive test that measures the
    device's free memory must not run while it starts or serves a job."""
    from types import SimpleNamespace

    from gates.harness.plugin import uses_device_under_test

    item = SimpleNamespace(config=SimpleNamespace(_m0=SimpleNamespace(device=device)), fixturenames=fixtures,
                           path=tmp_path / "stories" / "test_x.py", get_closest_marker=lambda name: None)
    assert uses_device_under_test(item, tmp_path) is holds
