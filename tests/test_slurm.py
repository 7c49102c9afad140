"""The SLURM profile (workflow/profiles/slurm) against a real single-node SLURM cluster.

The cluster comes from ``bash tests/slurm/cluster.sh up`` (root; .ci/run brings it up): one node
with two fake GPUs, partitions ``gpu`` (default) and ``cpu``, job states from ``squeue``. The
tests skip only when not root or when no cluster answers ``sinfo``; with
``NORMDROP_REQUIRE_SLURM=1`` (CI) they fail instead.

Every Snakemake call runs under ``timeout -k 10 N``: a hung status loop ignores SIGTERM. Most of
the time goes to the executor plugin's status polling (see FAST_STATUS), so the local runs that
the SLURM runs are compared with run at the same time, not after.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from normdrop import layout

# One cluster, one node: its tests run one after another on one xdist worker (--dist loadgroup).
pytestmark = [pytest.mark.slurm, pytest.mark.xdist_group("slurm")]

REPO = Path(__file__).resolve().parents[1]
PROFILE = REPO / "workflow" / "profiles" / "slurm"
CLUSTER_SH = REPO / "tests" / "slurm" / "cluster.sh"
SNAKEMAKE = Path(sys.executable).with_name("snakemake")
# First status check after 8 s instead of the profile's 40 (tests only). The plugin waits 10 s
# longer before each further check until a job finishes: checks at 8, 26, 54 s after submission.
FAST_STATUS = ["--slurm-init-seconds-before-status-checks", "8"]


def _cluster_problem() -> str | None:
    """Why the SLURM tests cannot run here, or None when they can."""
    if os.geteuid() != 0:
        return "needs root (the local test cluster runs jobs as root)"
    up = f"run `sudo bash {CLUSTER_SH.relative_to(REPO)} up` first"
    if shutil.which("sinfo") is None:
        return f"no SLURM client (sinfo): {up}"
    try:
        r = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return f"`sinfo` timed out, no SLURM cluster reachable: {up}"
    if r.returncode != 0:
        return f"`sinfo` failed ({r.stderr.strip()}), no SLURM cluster reachable: {up}"
    return None


@pytest.fixture(scope="module")
def cluster() -> dict:
    """Skip unless a SLURM cluster answers; then it must be the test cluster, ready."""
    problem = _cluster_problem()
    if problem and os.environ.get("NORMDROP_REQUIRE_SLURM") == "1":
        pytest.fail(f"NORMDROP_REQUIRE_SLURM=1 but {problem}")
    if problem:
        pytest.skip(problem)
    assert SNAKEMAKE.exists(), f"no snakemake next to {sys.executable}"
    out = subprocess.run(
        ["sinfo", "-h", "-N", "-p", "gpu", "-o", "%N|%c|%G|%T"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout.split()
    assert out, "the cluster has no partition 'gpu' (is it the one of tests/slurm/cluster.sh?)"
    node, cpus, gres, state = out[0].split("|")
    assert "gpu:" in gres, f"node {node} declares no GPUs: {gres!r}"
    assert state in {"idle", "mixed", "allocated", "completing"}, f"node {node} is {state}"
    return {"node": node, "cpus": int(cpus)}


# --------------------------------------------------------------------------------------------
# helpers


def _profile() -> dict:
    return yaml.safe_load((PROFILE / "config.yaml").read_text())


def _profile_value(rule: str, resource: str, attempt: int = 1):
    """A resource of `rule` in the profile, evaluated as Snakemake does for `attempt`."""
    value = _profile()["set-resources"][rule][resource]
    return eval(str(value), {"attempt": attempt})  # noqa: S307 - our own profile


def _time_limit(minutes: int) -> str:
    """SLURM's TimeLimit= text for a limit of `minutes`."""
    days, rest = divmod(minutes, 24 * 60)
    hours_minutes = f"{rest // 60:02d}:{rest % 60:02d}:00"
    return f"{days}-{hours_minutes}" if days else hours_minutes


def _submitted_ids(snakemake_out: str) -> list[str]:
    """SLURM job ids from the executor plugin's 'submitted with SLURM jobid N' lines."""
    return re.findall(r"has been submitted with SLURM jobid (\d+)", snakemake_out)


def _scontrol_job(job_id: str) -> str:
    """`scontrol show job` (SLURM keeps a finished job for MinJobAge seconds)."""
    r = subprocess.run(
        ["scontrol", "show", "job", job_id], capture_output=True, text=True, timeout=30
    )
    assert r.returncode == 0, f"scontrol show job {job_id}: {r.stderr}"
    return r.stdout


def _job_field(job: str, name: str) -> str:
    m = re.search(rf"\b{name}=(\S*)", job)
    assert m, f"no {name}= in:\n{job}"
    return m.group(1)


def _assert_gpu_job(job_id: str, rule: str, attempt: int = 1) -> str:
    """The job asked for what the profile sets for `rule`: 1 GPU, partition, time, memory."""
    job = _scontrol_job(job_id)
    assert re.search(r"TresPerJob=gres[:/]gpu:1\b", job), job
    assert _job_field(job, "Partition") == _profile_value(rule, "slurm_partition"), job
    assert _job_field(job, "TimeLimit") == _time_limit(_profile_value(rule, "runtime", attempt))
    assert _job_field(job, "MinMemoryNode") == f"{_profile_value(rule, 'mem_mb', attempt)}M"
    return job


class _Snakemake:
    """One Snakemake process, its output in `workdir/log_name`."""

    def __init__(self, cmd: list, workdir: Path, log_name: str):
        self.cmd, self.log = cmd, workdir / log_name
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=workdir)

    def running(self) -> bool:
        return self.proc.poll() is None

    def wait(self, timeout_s: float) -> str:
        """Its output, once it ended; fails with the tail of the output unless it succeeded."""
        try:
            rc = self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
        out = self.log.read_text()
        assert rc == 0, (
            f"snakemake exited {rc}"
            + (" (timed out)" if rc in (124, 137, -9) else "")
            + f": {' '.join(self.cmd)}\n{out[-6000:]}"
        )
        return out

    def kill(self):
        if self.running():
            self.proc.kill()
            self.proc.wait()


def _timeout(seconds: int) -> list[str]:
    return ["timeout", "-k", "10", str(seconds)]


# --------------------------------------------------------------------------------------------
# A stand-in for the training rule: same rule name (so that the profile's set-resources apply),
# one GPU, one job per wildcard value. Each job writes what SLURM gave it.

TOY_SNAKEFILE = """
localrules: all

rule all:
    input: expand("out/{i}.txt", i=range(2))

rule train:
    output: "out/{i}.txt"
    resources: gpu=1
    shell:
        "start=$(date +%s.%N); sleep 8; "
        "echo \\"$SLURM_JOB_ID|${{CUDA_VISIBLE_DEVICES-unset}}|$SLURM_JOB_PARTITION"
        "|$start|$(date +%s.%N)\\" > {output}"
"""


def test_toy_jobs_run_as_slurm_jobs_with_one_gpu_each(cluster, tmp_path):
    (tmp_path / "Snakefile").write_text(textwrap.dedent(TOY_SNAKEFILE))
    cmd = [
        *_timeout(240),
        str(SNAKEMAKE),
        "--snakefile",
        str(tmp_path / "Snakefile"),
        "--directory",
        str(tmp_path),
        "--workflow-profile",
        str(PROFILE),
        *FAST_STATUS,
    ]
    out = _Snakemake(cmd, tmp_path, "snakemake.out").wait(300)
    submitted = _submitted_ids(out)
    assert len(submitted) == 2, f"expected 2 sbatch submissions:\n{out[-3000:]}"
    rows = []
    for f in sorted((tmp_path / "out").glob("*.txt")):
        job_id, cvd, partition, start, end = f.read_text().strip().split("|")
        rows.append({"job_id": job_id, "cvd": cvd, "start": float(start), "end": float(end)})
        # ran inside a SLURM job that Snakemake submitted, on the profile's partition
        assert job_id in submitted, (job_id, submitted)
        assert partition == _profile_value("train", "slurm_partition")
        # exactly one GPU: a single device index
        assert re.fullmatch(r"\d+", cvd), f"CUDA_VISIBLE_DEVICES={cvd!r}"
        # the plugin keeps the job's log (slurm-keep-successful-logs)
        log = tmp_path / ".snakemake" / "slurm_logs" / "rule_train" / f.stem / f"{job_id}.log"
        assert log.exists(), f"no SLURM log {log}"
        assert _job_field(_assert_gpu_job(job_id, "train"), "JobState") == "COMPLETED"
    assert len(rows) == 2
    if cluster["cpus"] >= 2:
        # select/cons_tres: two 1-GPU jobs share the node at once, each on its own GPU
        a, b = rows
        assert a["start"] < b["end"] and b["start"] < a["end"], f"ran one after the other: {rows}"
        assert a["cvd"] != b["cvd"], f"two jobs at once got the same GPU: {rows}"


# --------------------------------------------------------------------------------------------
# The real workflow: the demo config (synthetic data, CPU) through the SLURM profile, three
# training runs (and the learning-rate searches of their two variants); once it has trained an
# epoch, one is cancelled with `scancel`, another gets `scancel --signal=TERM` (what the profile's
# `--signal=TERM@<s>` has SLURM send ahead of a time limit). The same runs go through Snakemake's
# local executor at the same time.

SNAKEFILE = REPO / "Snakefile"
DEMO = REPO / "workflow" / "demo.yaml"
DEMO_RUNS = [
    ("synthetic", "mlp", "none", 42),
    ("synthetic", "mlp", "bn", 42),
    ("synthetic", "mlp", "bn", 43),
]
KILL_RUN, TERM_RUN = DEMO_RUNS[1], DEMO_RUNS[2]
# 3 to 10 s of training on a CPU: the runs are caught mid-run (signalled after epoch 1)
EPOCHS = 150
WALL_TIME_COLUMNS = {"wall_time_s"}


def _run_dir(workdir: Path, run: tuple) -> Path:
    dataset, model, variant, seed = run
    keys = dict(dataset=dataset, model=model, variant=variant, seed=seed)
    return Path(layout.run_dir(workdir / "results", "train", **keys))


def _checkpoint(workdir: Path, run: tuple) -> Path:
    dataset, model, variant, seed = run
    keys = dict(dataset=dataset, model=model, variant=variant, seed=seed)
    return Path(layout.checkpoint(workdir / "results", "train", **keys))


def _demo(workdir: Path, slurm: bool, runs=DEMO_RUNS) -> _Snakemake:
    """Start the demo workflow for `runs` in `workdir`, through the SLURM profile or locally.
    Its config: config.yaml + demo.yaml + results under `workdir`, EPOCHS epochs, one seed, one
    learning-rate candidate."""
    config = workdir / "test.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "results_dir": str(workdir / "results"),
                "resources_dir": str(workdir / "resources"),
                "seeds": [42],
                "lr_search": {"candidates": [1.0e-3]},
                "train": {"epochs": EPOCHS},
            }
        )
    )
    cmd = [
        *_timeout(420),
        str(SNAKEMAKE),
        "--snakefile",
        str(SNAKEFILE),
        "--configfile",
        str(REPO / "config.yaml"),
        str(DEMO),
        str(config),
        "--directory",
        str(workdir),
    ]
    cmd += ["--workflow-profile", str(PROFILE), *FAST_STATUS] if slurm else ["--cores", "2"]
    cmd += [str(_run_dir(workdir, run) / "meta.json") for run in runs]
    return _Snakemake(cmd, workdir, "snakemake.out")


def _signal_mid_run(workdir: Path, on_slurm: _Snakemake, how: dict) -> dict:
    """`scancel *how[run]` (nothing more: cancel; --signal=TERM: that signal only) the training
    job of each run in `how` once it runs and has a checkpoint; their job ids by run."""
    pending = {f"rule_train_wildcards_{d}_{m}_{v}_{s}": (d, m, v, s) for d, m, v, s in how}
    signalled = {}
    deadline = time.monotonic() + 360
    while pending and on_slurm.running() and time.monotonic() < deadline:
        r = subprocess.run(
            ["squeue", "-h", "-t", "RUNNING", "-o", "%i|%k"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        for line in r.stdout.splitlines():
            job_id, comment = line.split("|", 1)
            run = pending.get(comment.strip())
            if run and _checkpoint(workdir, run).exists():  # it trained >= 1 epoch
                subprocess.run(["scancel", *how[run], job_id], check=True, timeout=30)
                signalled[run] = job_id
                del pending[comment.strip()]
        time.sleep(0.2)
    return signalled


@pytest.fixture(scope="module")
def demo(cluster, tmp_path_factory) -> dict:
    slurm_dir = tmp_path_factory.mktemp("demo_slurm")
    local_dir = tmp_path_factory.mktemp("demo_local")
    on_slurm = _demo(slurm_dir, slurm=True)
    local = _demo(local_dir, slurm=False)
    try:
        signalled = _signal_mid_run(
            slurm_dir, on_slurm, {KILL_RUN: [], TERM_RUN: ["--signal=TERM"]}
        )
        local.wait(480)
        out = on_slurm.wait(480)
    finally:
        on_slurm.kill()
        local.kill()
    return {
        "slurm": slurm_dir,
        "out": out,
        "local": local_dir,
        "cancelled": signalled.get(KILL_RUN),
        "signalled": signalled.get(TERM_RUN),
    }


def _metas(workdir: Path, kind: str) -> dict[Path, dict]:
    """meta.json of every training run (kind 'runs') or search candidate ('lr_search')."""
    files = sorted((workdir / "results" / kind).rglob("meta.json"))
    return {p: json.loads(p.read_text()) for p in files}


def _assert_ran_on_slurm(workdir: Path, snakemake_out: str, rule: str, meta: dict, where: Path):
    job_id = meta["slurm_job_id"]
    assert isinstance(job_id, str) and job_id.isdigit(), f"{where}: slurm_job_id={job_id!r}"
    assert job_id in _submitted_ids(snakemake_out), f"{where}: job {job_id} not submitted by us"
    logs = list((workdir / ".snakemake" / "slurm_logs" / f"rule_{rule}").glob(f"*/{job_id}.log"))
    assert len(logs) == 1, f"{where}: no SLURM log for job {job_id}"
    cvd = meta["cuda_visible_devices"]
    assert isinstance(cvd, str), f"{where}: CUDA_VISIBLE_DEVICES={cvd!r}"
    assert re.fullmatch(r"\d+", cvd), f"{where}: not exactly one GPU: {cvd!r}"


def test_demo_runs_every_training_job_on_slurm(demo):
    workdir, out = demo["slurm"], demo["out"]
    runs = _metas(workdir, "runs")
    assert set(runs) == {_run_dir(workdir, run) / "meta.json" for run in DEMO_RUNS}
    searches = _metas(workdir, "lr_search")
    variants = {run[:3] for run in DEMO_RUNS}
    assert len(searches) == len(variants), sorted(searches)  # one candidate per variant
    for run in DEMO_RUNS:
        path = _run_dir(workdir, run) / "meta.json"
        meta = runs[path]
        _assert_ran_on_slurm(workdir, out, "train", meta, path)
        assert meta["status"] == "completed", path
        assert len(pd.read_parquet(path.parent / "epochs.parquet")) == EPOCHS
        assert not _checkpoint(workdir, run).exists(), f"{path}: checkpoint left behind"
    untouched = runs[_run_dir(workdir, DEMO_RUNS[0]) / "meta.json"]
    assert untouched["resumes"] == [], "resumed although nothing was killed"
    _assert_gpu_job(untouched["slurm_job_id"], "train")
    for path, meta in searches.items():
        _assert_ran_on_slurm(workdir, out, "lr_search", meta, path)
        _assert_gpu_job(meta["slurm_job_id"], "lr_search")
    # one SLURM job each
    ids = [m["slurm_job_id"] for m in [*runs.values(), *searches.values()]]
    assert len(set(ids)) == len(ids), ids


def test_scancelled_training_job_resumes_from_its_checkpoint(demo):
    """The cancelled job is resubmitted (profile `retries`) with the time limit of attempt 2,
    and the new job resumes from the run's checkpoint."""
    workdir, out, cancelled = demo["slurm"], demo["out"], demo["cancelled"]
    assert cancelled, f"never saw the training job of {KILL_RUN} running with a checkpoint"
    first = _assert_gpu_job(cancelled, "train", attempt=1)
    assert _job_field(first, "JobState") == "CANCELLED", first
    assert f"SLURM-job '{cancelled}' failed, SLURM status is: 'CANCELLED'" in out, out[-4000:]
    meta = _metas(workdir, "runs")[_run_dir(workdir, KILL_RUN) / "meta.json"]
    assert meta["slurm_job_id"] != cancelled, "meta.json is from the cancelled job"
    # the retry is attempt 2, with the profile's longer time limit for attempt 2
    _assert_gpu_job(meta["slurm_job_id"], "train", attempt=2)
    assert meta["resumes"], f"the retried job started over instead of resuming: {meta}"
    assert 1 <= meta["resumes"][0]["epoch"] < EPOCHS, meta["resumes"]
    # scancel sends SIGTERM, SIGKILL KillWait s later: the run stops after its step (preempted),
    # or, when the SIGKILL comes first, the attempt has no ending (killed)
    outcomes = [a["outcome"] for a in meta["attempts"]]
    assert outcomes in (["preempted", "finished"], ["killed", "finished"]), meta["attempts"]


def _assert_same_metrics(a: Path, b: Path):
    """The same numbers in a's and b's epochs.parquet and steps.parquet, wall times aside."""
    for name in ("epochs.parquet", "steps.parquet"):
        x, y = pd.read_parquet(a / name), pd.read_parquet(b / name)
        assert list(x.columns) == list(y.columns), (a, b, name)
        assert len(x) == len(y) > 0, (a, b, name, len(x), len(y))
        cols = [
            c
            for c in x.columns
            if c not in WALL_TIME_COLUMNS and pd.api.types.is_numeric_dtype(x[c])
        ]
        assert "epoch" in cols and len(cols) >= 3, cols
        for c in cols:
            np.testing.assert_allclose(
                x[c].to_numpy(dtype=float),
                y[c].to_numpy(dtype=float),
                rtol=1e-5,
                atol=1e-7,
                err_msg=f"{name} column {c}: {a} vs {b}",
            )


def test_demo_on_slurm_matches_a_local_run(demo):
    """Same numbers as the local executor's runs, the cancelled and resumed run included."""
    local = _metas(demo["local"], "runs")
    assert len(local) == len(DEMO_RUNS)
    for meta in local.values():
        assert meta["slurm_job_id"] is None, "a local run saw SLURM_JOB_ID"
        assert meta["resumes"] == []
    for run in DEMO_RUNS:
        _assert_same_metrics(_run_dir(demo["slurm"], run), _run_dir(demo["local"], run))


def test_sigterm_to_a_training_job_checkpoints_and_the_retry_resumes_exactly(demo):
    """`scancel --signal=TERM`: the run checkpoints after its step and exits 75 (attempt
    "preempted"), the job fails and is submitted again (attempt 2 of `retries`), the run resumes
    there: its per-step losses equal those of the same run through the local executor."""
    workdir, out, signalled = demo["slurm"], demo["out"], demo["signalled"]
    assert signalled, f"never saw the training job of {TERM_RUN} running with a checkpoint"
    assert _job_field(_scontrol_job(signalled), "JobState") == "FAILED"  # exit 75, not killed
    assert f"SLURM-job '{signalled}' failed, SLURM status is: 'FAILED'" in out, out[-4000:]
    meta = json.loads((_run_dir(workdir, TERM_RUN) / "meta.json").read_text())
    _assert_gpu_job(meta["slurm_job_id"], "train", attempt=2)
    attempts = meta["attempts"]
    assert [a["outcome"] for a in attempts] == ["preempted", "finished"], attempts
    assert [a["slurm_job_id"] for a in attempts] == [signalled, meta["slurm_job_id"]], attempts
    assert meta["resumes"] and 1 <= meta["resumes"][0]["epoch"] < EPOCHS, meta["resumes"]
    steps = [
        pd.read_parquet(_run_dir(demo[d], TERM_RUN) / "steps.parquet") for d in ("slurm", "local")
    ]
    pd.testing.assert_frame_equal(steps[0], steps[1])  # SLURM's, local: every step, bitwise
