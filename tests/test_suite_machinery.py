"""The suite's own machinery (tests/conftest.py): under `./dev.sh test` (pytest-xdist, --dist
loadgroup) the tests of one xdist group run on one worker, so that the faulty grid and the SLURM
demo, built by fixtures their tests share, are built once; the modules with slow tests start
first."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent

GROUPED = """
import pytest

pytestmark = pytest.mark.xdist_group("together")


@pytest.mark.parametrize("i", range(6))
def test_grouped(i):
    pass
"""

LOOSE = """
import pytest


@pytest.mark.parametrize("i", range(6))
def test_loose(i):
    pass


@pytest.mark.slow
def test_slow():
    pass
"""


def test_a_group_runs_on_one_worker_and_slow_modules_come_first(tmp_path):
    # A copy of the suite's layout: its conftest (and the fixtures it registers), two modules.
    tests = tmp_path / "tests"
    tests.mkdir()
    (tests / "conftest.py").write_text((TESTS / "conftest.py").read_text())
    (tests / "fixtures").symlink_to(TESTS / "fixtures")
    (tmp_path / "src").symlink_to(TESTS.parent / "src")
    (tests / "test_a_grouped.py").write_text(GROUPED)
    (tests / "test_b_loose.py").write_text(LOOSE)
    (tmp_path / "pytest.ini").write_text("[pytest]\nmarkers =\n    slow: slow\n")
    cmd = [sys.executable, "-m", "pytest", "-n", "2", "--dist", "loadgroup", "-v",
           "-p", "no:cacheprovider", "tests"]  # fmt: skip
    res = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(tmp_path / "tests")})  # fmt: skip
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    ran = re.findall(r"\[(gw\d)\] \[ *\d+%\] PASSED (\S+)", res.stdout)
    assert len(ran) == 13, res.stdout[-3000:]
    grouped = {worker for worker, test in ran if "test_grouped" in test}
    assert len(grouped) == 1, ran  # one worker: the group was kept together
    assert all(test.endswith("@together") for _, test in ran if "test_grouped" in test)

    # The ordering alone, in one process: the module with a slow test runs first.
    collect = [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"]
    res = subprocess.run([*collect, "tests"], cwd=tmp_path, capture_output=True, text=True,
                         timeout=300, env={**os.environ, "PYTHONPATH": str(tests)})  # fmt: skip
    collected = [line for line in res.stdout.splitlines() if "::" in line]
    assert collected[0].startswith("tests/test_b_loose.py"), collected
    assert collected[-1].startswith("tests/test_a_grouped.py"), collected
