"""The report's "Compute and reproducibility" section (normdrop.compute): compute summed over every
attempt, the fallback for runs without attempts, hardware and versions, what the error bars are."""

from __future__ import annotations

import json

import pytest

from normdrop import compute
from normdrop import report as rep


@pytest.fixture
def results(tmp_path, make_summary, write_run_folders):
    """Two cells' runs (fixture meta.json: attempts of 30 s killed + 60 s finished each), one of
    them an older run without attempts (wall_time_s 60 s), one learning-rate candidate."""
    frames = make_summary(tmp_path / "summary", ("synthetic",), ("mlp",), seeds=(42, 43))
    folders = write_run_folders(tmp_path, frames)
    old = folders[0] / "meta.json"
    meta = json.loads(old.read_text())
    del meta["attempts"], meta["accounting"]
    old.write_text(json.dumps(meta))
    candidate = tmp_path / "lr_search" / "synthetic" / "mlp" / "bn" / "lr0.01"
    candidate.mkdir(parents=True)
    search = {**meta, "wall_time_s": 999.0, "accounting": {"gpu_name": "NVIDIA H200",
              "gpu_driver": "570.1", "peak_device_memory_bytes": 3 * 2**30, "git_dirty": True},
              "attempts": [{"wall_time_s": 40.0, "outcome": "preempted"},
                           {"wall_time_s": None, "outcome": "killed"},
                           {"wall_time_s": 20.0, "outcome": "finished"}]}  # fmt: skip
    (candidate / "meta.json").write_text(json.dumps(search))
    other = tmp_path / "lr_search" / "synthetic" / "cnn" / "bn" / "lr0.01"  # not the report's
    other.mkdir(parents=True)
    (other / "meta.json").write_text(json.dumps(search))
    return tmp_path


def test_compute_sums_every_attempt_and_falls_back_to_wall_time(results):
    metas = compute.read_metas(results)
    train = metas[metas["kind"] == "train"]
    assert len(train) == 8 and len(metas) == 10  # read_metas reads every run folder
    metas = metas[~metas["cell"].str.startswith("synthetic/cnn")]
    assert sorted(train["compute_s"]) == [60.0] + [90.0] * 7  # the older run: its wall_time_s
    assert metas.loc[metas["kind"] == "lr_search", "compute_s"].item() == 60.0  # not 999
    rows = {r[0]: r for r in compute.compute_table(metas).rows}
    # total: 60 + 7 x 90 + 60 = 750 s (in hours); attempts 7 x 2 + 3; 8 killed + 1 preempted
    assert rows["total"][1:5] == ["9", "17", "9", "0.21 h"]  # 750 s
    assert rows["learning-rate search"][1:5] == ["1", "3", "2", "60 s"]
    assert (
        "0 counted up to their last checkpoint (a lower bound), 1 recorded no wall time"
        in (compute.compute_table(metas).notes[-1])
    )


def test_the_report_has_the_section_with_hardware_and_error_bars(results):
    text = rep.build_report(results / "summary", results / "summary" / "report.md")
    section = text[text.index("## Compute and reproducibility") :]
    assert "NVIDIA H200" in section and "570.1" in section
    assert "Peak device memory of a run: 3.00 GiB." in section
    assert "uncommitted changes in 1 run(s)" in section
    assert "python 3.12.0; torch 2.14.0" in section
    assert "(2 finished seeds per cell; seeds 42, 43)" in section
    assert "synthetic/cnn" not in section  # a run of another grid in the folder: not counted
    assert "Welch" in section and "sample standard deviation (ddof = 1)" in section


def test_a_summary_without_run_folders_says_so(tmp_path, make_summary):
    make_summary(tmp_path / "summary", ("synthetic",), ("mlp",))
    text = rep.build_report(tmp_path / "summary", tmp_path / "report.md")
    assert "compute and hardware not recorded" in text
    assert "### Error bars and confidence intervals" in text


def test_a_fused_jobs_attempts_count_once_and_its_time_is_shared(results):
    """Each member's meta.json holds the whole job's attempts (normdrop.fusion): two members of
    one job, a killed 30 s and a finished 60 s attempt, are one job of 2 attempts and 90 s."""
    train = sorted((results / "runs").rglob("meta.json"))[:2]
    checkpoint = str(results / "scratch" / "fused.ckpt")
    for path, other in ((train[0], train[1]), (train[1], train[0])):
        meta = json.loads(path.read_text())
        meta.update(fused_with=[str(other.parent)], fused_checkpoint=checkpoint)
        meta["attempts"] = [{"wall_time_s": 30.0, "outcome": "killed"},
                            {"wall_time_s": 60.0, "outcome": "finished"}]  # fmt: skip
        path.write_text(json.dumps(meta))
    metas = compute.read_metas(results)
    metas = metas[metas["kind"] == "train"]
    fused = metas[metas["members"] == 2]
    assert len(fused) == 2 and fused["compute_s"].tolist() == [45.0, 45.0]
    table = compute.compute_table(metas)
    unfused = metas[metas["members"] == 1]
    attempts = int(unfused["attempts"].sum()) + 2  # the job's 2 attempts, once
    assert table.rows[0][2] == str(attempts)
    assert table.rows[0][3] == str(int(unfused["not_finished"].sum()) + 1)
    assert "1 fused job(s) trained 2 of these runs" in " ".join(table.notes)
