"""The benchmark and the GPU check, in their tiny modes on CPU, so that neither can rot."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import REPO, TRAIN_ENV

pytestmark = pytest.mark.slow  # a minute or more each on a loaded 2-core machine


def test_bench_tiny_runs_and_prints_every_model():
    res = subprocess.run(
        [sys.executable, "benchmarks/bench_train.py", "--device", "cpu", "--tiny"],
        cwd=REPO, env=TRAIN_ENV, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    rows = [line for line in res.stdout.splitlines() if line.startswith("| ")]
    for model in ("mlp", "cnn", "resnet20"):
        assert any(r.startswith(f"| {model}") for r in rows), res.stdout
    assert any(r.startswith("| **grid** |") and r.rstrip().endswith(" h** |") for r in rows)


def test_gpu_check_tiny_runs_without_snakemake_or_jsonschema(tmp_path):
    # As on a GPU machine with only torch, torchvision, pandas, pyarrow and pyyaml: importing
    # snakemake or jsonschema fails (a None entry in sys.modules makes `import` raise).
    code = (
        "import runpy, sys; sys.modules['snakemake'] = sys.modules['jsonschema'] = None; "
        "sys.argv = ['gpu_check.py', '--device', 'cpu', '--tiny', '--out', sys.argv[1]]; "
        "sys.path.insert(0, 'benchmarks'); runpy.run_path('benchmarks/gpu_check.py', "
        "run_name='__main__')"
    )
    res = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "out")],
        cwd=REPO, env=TRAIN_ENV, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    last = res.stdout.strip().splitlines()[-1]
    assert last.startswith("gpu-check: PASS on cpu (tiny"), last
    report = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    sections = report["sections"]
    assert list(sections) == ["smoke", "resume", "leases", "speed", "fusion", "precision"]
    for name, s in sections.items():
        assert s["status"] in ("pass", "info"), (name, s)
        assert s["summary"] and "traceback" not in s
    assert report["verdict"] in last
    assert sections["smoke"]["summary"].startswith("24/24 runs")
    assert sections["resume"]["rows"][0]["bitwise equal"] is True
    assert sorted(r["slot"] for r in sections["leases"]["rows"]) == [0, 1]
    assert {r["model"] for r in sections["speed"]["rows"]} == {"mlp", "cnn", "resnet20"}
    assert all(r["eager"] > 0 and r["textbook"] > 0 for r in sections["speed"]["rows"])
    assert sections["speed"]["grid_hours"] > 0
    assert sections["fusion"]["rows"][0]["fused images/s"] > 0
    assert len(sections["precision"]["rows"]) == 6
    md = (tmp_path / "out" / "gpu_check.md").read_text()
    assert md.startswith("# GPU check: PASS") and "## precision" in md
