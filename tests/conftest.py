"""The tests' one helper mechanism: fixtures, defined in tests/fixtures/ and registered here.

A test asks for a shared helper by naming it as an argument (`tiny_data`, `tiny_config`,
`snakemake`, `grid`, `make_summary`, ...); no test imports a helper module.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
# Tests run on CPU, single-threaded per process, so that two processes can run side by side. Set
# before torch is first imported (by the fixtures below): its OpenMP runtime reads the variable
# when it loads.
os.environ.setdefault("OMP_NUM_THREADS", "1")

pytest_plugins = [
    "fixtures.training",
    "fixtures.workflow",
    "fixtures.fault_grid",
    "fixtures.summaries",
]


def pytest_collection_modifyitems(config, items):
    # Under pytest-xdist (./dev.sh test runs one worker per core, --dist loadgroup), a session
    # fixture is built once per worker. The faulty grid (fixtures/fault_grid.py) is a whole
    # workflow run, killed and rerun: its tests share one worker so it is built once.
    for item in items:
        if "grid" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.xdist_group("grid"))
