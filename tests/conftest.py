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


@pytest.hookimpl(trylast=True)  # after pytest-xdist's own hook: see _name_xdist_groups
def pytest_collection_modifyitems(config, items):
    # Under pytest-xdist (./dev.sh test runs one worker per core, --dist loadgroup), a session
    # fixture is built once per worker. The faulty grid (fixtures/fault_grid.py) is a whole
    # workflow run, killed and rerun: its tests share one worker so it is built once.
    for item in items:
        if "grid" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.xdist_group("grid"))
    # The modules with slow tests first (each module kept whole, in its own order, so that its
    # module fixtures are built once): a minutes-long workflow test that starts last would leave
    # the other worker idle at the end.
    slow = {item.module for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.module not in slow)  # stable: the order within is kept
    if getattr(config.option, "loadgroup", False):
        _name_xdist_groups(items)


def _name_xdist_groups(items) -> None:
    """What pytest-xdist's --dist loadgroup does to a grouped test, done so that it takes: the
    group's name appended to the test's id ("...::test@grid"), by which the controller sends a
    group to one worker. xdist 3.8.0 writes `item._nodeid`, which pytest 9.2 no longer reads
    (its ids live in `item._id`), so without this every group is split across the workers and
    its module or session fixtures (the faulty grid, the SLURM demo) are built on each.
    tests/test_repository.py checks that a group stays on one worker."""
    from _pytest.nodeid import coerce_node_id  # pytest 9.2 (pinned): how a node id is stored

    for item in items:
        marks = item.iter_markers("xdist_group")
        names = sorted({m.args[0] if m.args else m.kwargs.get("name", "default") for m in marks})
        if names and not item.nodeid.endswith("@" + "_".join(names)):
            item._id = coerce_node_id(f"{item.nodeid}@{'_'.join(names)}")
