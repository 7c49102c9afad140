"""`./dev.sh demo` as a newcomer calls it: what Snakemake reads before the Snakefile (config
files, --config, --resources) is checked first with one line; extra arguments reach both calls;
a dry run builds no report."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# dev.sh's virtual environment: the one running the tests (its setup is then a no-op).
ENV = {**os.environ, "NORMDROP_VENV": sys.prefix}


def dev_sh(*args, timeout=300) -> subprocess.CompletedProcess:
    cmd = ["bash", str(REPO / "dev.sh"), *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=timeout)


# dev.sh's stamp of an environment set up from these pins (else it would install first).
PINS = hashlib.sha256(
    b"".join((REPO / f).read_bytes() for f in ("requirements.lock", "pyproject.toml"))
)
pytestmark = pytest.mark.skipif(
    not Path(sys.prefix, f".installed-{PINS.hexdigest()[:16]}").exists(),
    reason="dev.sh would set up its virtual environment first",
)


@pytest.mark.parametrize(
    "args, line",
    [
        (["--resources", "gpus=4"], "invalid config: --resources 'gpus=4': no rule uses 'gpus' "
         "(did you mean 'gpu'?); allowed: gpu, "),
        (["--configfile", "nope.yaml"], "invalid config: config file nope.yaml: No such file"),
        (["--config", "seeds"], "invalid config: --config 'seeds': give KEY=VALUE"),
        (["--configfile", "{tab}"], "invalid config: config file {tab}: not valid YAML at line 2, "
         "column 1: found character '\\t' that cannot start any token"),
    ],
)  # fmt: skip
def test_what_snakemake_reads_first_is_checked_first_in_one_line(tmp_path, args, line, output):
    tab = tmp_path / "tab.yaml"
    tab.write_text("seeds: [42]\n\tdatasets: [synthetic]\n")
    args = [a.format(tab=tab) for a in args]
    res = dev_sh("demo", *args, "--directory", tmp_path)
    assert res.returncode == 2, output(res)[-2000:]
    assert len(res.stderr.splitlines()) == 1 and res.stderr.startswith(line.format(tab=tab))
    assert not (tmp_path / "results").exists()  # Snakemake never started


@pytest.mark.slow
def test_a_dry_run_of_the_demo_passes_its_arguments_and_builds_no_report(tmp_path, output):
    res = dev_sh("demo", "-n", "--directory", tmp_path, "--config", "results_dir=elsewhere")
    assert res.returncode == 0, output(res)[-3000:]
    assert "dry run: no report built" in res.stdout
    assert "WorkflowError" not in output(res)
    assert "elsewhere/runs/" in res.stdout and "results/demo" not in res.stdout
    assert not list(tmp_path.rglob("report.html"))
