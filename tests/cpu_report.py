"""``pytest --cpu-report``: where the suite's CPU time goes, per test file, in pytest's own processes and in the
processes its tests start (the smoke ``reproduce``, multi-process jobs, tutorial kernels, CLI subprocesses).

On 2 cores the suite is CPU-bound, so its wall time is about its CPU time over 2; pytest's ``--durations`` shows
wall time, which a test shares with whatever ran beside it. Each test's CPU is read from ``getrusage`` before its
setup and after its teardown: its process's own (every thread), and that of its finished subprocesses
(``RUSAGE_CHILDREN``: those waited for, with whatever they waited for). A module's shared fixture counts in the test
that sets it up and the one that tears it down; the workers' start and collection count in no file. Without the
option nothing is read. POSIX only; elsewhere the option says it cannot measure.

Usage: ``scripts/venv.sh python -m pytest -q --cpu-report`` (``tests/conftest.py`` registers these hooks).
"""

from __future__ import annotations

import collections

import pytest

try:
    import resource
except ImportError:  # Windows
    resource = None

_AT_SETUP = pytest.StashKey[tuple[float, float]]()
_BY_FILE: dict[str, list[float]] = collections.defaultdict(lambda: [0, 0.0, 0.0, 0.0])
"""Per test file: tests, wall seconds (setup, call and teardown), CPU seconds in pytest's process, CPU seconds in
subprocesses; filled in the process that prints (pytest-xdist's controller, from its workers' reports)."""


def pytest_addoption(parser):
    parser.addoption("--cpu-report", action="store_true",
                     help="after the run, print each test file's CPU seconds: in pytest's processes and in the "
                          "subprocesses its tests started")


def cpu_seconds() -> tuple[float, float]:
    """User plus system CPU seconds of this process (all its threads) and of its finished, waited-for
    subprocesses."""
    own, children = (resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    return own.ru_utime + own.ru_stime, children.ru_utime + children.ru_stime


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    if resource is not None and item.config.getoption("--cpu-report"):  # otherwise no test's report changes
        item.stash[_AT_SETUP] = cpu_seconds()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if call.when == "teardown" and _AT_SETUP in item.stash:
        (own_before, children_before), (own, children) = item.stash[_AT_SETUP], cpu_seconds()
        report.user_properties += [("cpu_s", round(own - own_before, 3)),
                                   ("subprocess_cpu_s", round(children - children_before, 3))]
    return report


def pytest_runtest_logreport(report):
    row = _BY_FILE[report.nodeid.split("::")[0]]
    row[1] += report.duration
    if report.when == "teardown":
        measured = dict(report.user_properties)
        row[0] += 1
        row[2] += measured.get("cpu_s", 0.0)
        row[3] += measured.get("subprocess_cpu_s", 0.0)


def table(by_file: dict[str, list[float]]) -> list[str]:
    """The report's lines: one per file, most CPU first, and their sum."""
    lines = [f"{'CPU s':>8} {'in pytest':>9} {'in subprocesses':>15} {'wall s':>8} {'tests':>5}  file"]
    rows = sorted(by_file.items(), key=lambda kv: -(kv[1][2] + kv[1][3]))
    total = [sum(r[i] for _, r in rows) for i in range(4)]
    for name, (tests, wall, own, children) in [*rows, ("all", total)]:
        lines.append(f"{own + children:8.1f} {own:9.1f} {children:15.1f} {wall:8.1f} {int(tests):5d}  {name}")
    return lines


def pytest_terminal_summary(terminalreporter, config):
    if not config.getoption("--cpu-report"):
        return
    terminalreporter.section("CPU time per test file")
    if resource is None:
        terminalreporter.write_line("not measured: this platform has no getrusage")
        return
    for line in table(_BY_FILE):
        terminalreporter.write_line(line)
