"""The suite's ``--cpu-report`` (tests/cpu_report.py): CPU burnt in a test's process and in a subprocess it waits for
land in their own columns of their own file's row. The truth is work of a known CPU cost: loops that spin until
``time.process_time`` has advanced by a set amount, in the test and in a child process."""

import os
import subprocess
import sys

import pytest

from tests.conftest import REPO
from tests.cpu_report import table

SPIN = "import time\nt = time.process_time()\nwhile time.process_time() - t < {seconds}:\n    pass\n"


def test_cpu_in_the_test_and_in_its_subprocess_is_counted_apart_per_file(tmp_path):
    (tmp_path / "test_child.py").write_text(
        "import subprocess, sys\n\n\ndef test_child():\n"
        f"    subprocess.run([sys.executable, '-c', {SPIN.format(seconds=0.6)!r}], check=True)\n")
    (tmp_path / "test_own.py").write_text(
        f"def test_own():\n    exec({SPIN.format(seconds=0.4)!r})\n\n\ndef test_nothing():\n    pass\n")
    ran = subprocess.run([sys.executable, "-m", "pytest", "-p", "tests.cpu_report", "-p", "no:cacheprovider",
                          "-p", "no:xdist", "-c", os.devnull, "--rootdir", str(tmp_path), "--cpu-report", "-q",
                          str(tmp_path)], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=tmp_path)
    assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-3000:]
    report = ran.stdout.split("CPU time per test file")[1].splitlines()[2:]
    rows = {line.split()[-1]: [float(v) for v in line.split()[:5]] for line in report if line[:1] == " "}
    total, own, children, _, tests = rows["test_child.py"]
    assert children >= 0.6 and own < 0.4 and tests == 1 and total == pytest.approx(own + children, abs=0.11)
    total, own, children, _, tests = rows["test_own.py"]
    assert own >= 0.4 and children == 0 and tests == 2
    assert rows["all"][4] == 3 and rows["all"][2] == pytest.approx(rows["test_child.py"][2], abs=0.05)


def test_the_table_puts_the_file_with_the_most_cpu_first_and_sums_every_column():
    lines = table({"a.py": [2, 5.0, 1.0, 0.5], "b.py": [1, 1.0, 0.3, 3.0]})
    assert lines[1].split() == ["3.3", "0.3", "3.0", "1.0", "1", "b.py"]
    assert lines[2].split() == ["1.5", "1.0", "0.5", "5.0", "2", "a.py"]
    assert lines[3].split() == ["4.8", "1.3", "3.5", "6.0", "3", "all"]
