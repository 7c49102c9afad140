"""Prepared data named by its content: settings that shape a file give it another name, its SHA-256
is recorded once beside it and in every run, the aggregate refuses runs on different data, and a
finished demo stays finished whatever other config runs in between."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from normdrop import layout
from normdrop.aggregate import StaleResultsError, check_one_dataset_file
from normdrop.data import data_sha256, file_sha256, prepared_key, raw_source


def test_every_setting_that_shapes_the_file_changes_its_name_and_nothing_else_does():
    base = prepared_key("synthetic", 0.1, 0, {"n_train": 300, "noise": 1.0})
    assert base.startswith("synthetic-") and len(base) == len("synthetic-") + 10
    # YAML's `noise: 1` and `noise: 1.0`, and a default spelled out, are the same data.
    assert prepared_key("synthetic", 0.1, 0, {"n_train": 300, "noise": 1}) == base
    assert prepared_key("synthetic", 0.1, 0, {"n_train": 300, "noise": 1.0, "seed": 0}) == base
    others = [
        prepared_key("synthetic", 0.2, 0, {"n_train": 300, "noise": 1.0}),  # split
        prepared_key("synthetic", 0.1, 1, {"n_train": 300, "noise": 1.0}),  # split seed
        prepared_key("synthetic", 0.1, 0, {"n_train": 600, "noise": 1.0}),  # size
        prepared_key("synthetic", 0.1, 0, {"n_train": 300, "noise": 0.6}),  # noise
        prepared_key("synthetic", 0.1, 0, {"n_train": 300, "noise": 1.0, "seed": 3}),  # seed
    ]
    assert len({base, *others}) == 6
    # Real datasets: raw files shared by every setting; the synthetic spec does not reach them.
    assert raw_source("mnist", {"n_train": 5}) == "mnist"
    assert prepared_key("mnist", 0.1, 0, {"n_train": 5}) == prepared_key("mnist", 0.1, 0)
    assert raw_source("synthetic", {"n_train": 600}) != raw_source("synthetic", {"n_train": 300})


def test_prepare_records_the_files_sha256_beside_it_once(tiny_data):
    sidecar = json.loads(tiny_data.with_suffix(".json").read_text())
    assert sidecar["sha256"] == file_sha256(tiny_data)
    assert sidecar["bytes"] == tiny_data.stat().st_size
    assert data_sha256(tiny_data) == sidecar["sha256"]


def test_a_file_without_its_sidecar_is_hashed_when_read(tmp_path, tiny_data):
    copy = tmp_path / "copy.pt"
    copy.write_bytes(tiny_data.read_bytes())
    assert data_sha256(copy) == file_sha256(tiny_data)


def test_the_aggregate_refuses_runs_of_one_dataset_on_different_data():
    check_one_dataset_file({"synthetic": {"ab" * 32: [Path("r/a"), Path("r/b")]}})
    mixed = {"synthetic": {"ab" * 32: [Path("r/a")], "cd" * 32: [Path("r/b"), Path("r/c")]}}
    with pytest.raises(StaleResultsError) as err:
        check_one_dataset_file(mixed)
    line = str(err.value)
    assert "\n" not in line and "runs on synthetic were trained on 2 different data files" in line
    assert "abababababab (1 runs, e.g. r/a)" in line and "cdcdcdcdcdcd (2 runs" in line


CELL = {"dataset": "synthetic", "model": "mlp", "variant": "bn"}


@pytest.mark.slow
def test_demo_then_other_data_settings_then_demo_again_has_nothing_to_do(
    tmp_path, fast_config, output, snakemake, write_config
):
    # One cell, one seed, two epochs: the cheapest chain download -> prepare -> search -> train.
    tiny = {
        **fast_config,
        "seeds": [42],
        "select": {"models": ["mlp"], "variants": ["bn"]},
        "train": {"epochs": 2, "lr_milestones": [1]},
    }
    work = tmp_path / "work"
    work.mkdir()
    demo = write_config(tmp_path, {**tiny, "results_dir": "results/demo"}, "demo.yaml")
    other_data = {"synthetic": {**tiny["data"]["synthetic"], "n_train": 600}}
    other = write_config(
        tmp_path, {**tiny, "results_dir": "results/other", "data": other_data}, "other.yaml"
    )
    target = {
        name: layout.run_files(f"results/{name}", "train", seed=42, **CELL)["meta.json"]
        for name in ("demo", "other")
    }
    for name, cfg in (("demo", demo), ("other", other)):
        res = snakemake(work, "--cores", "1", target[name], configs=[cfg])
        assert res.returncode == 0, output(res)[-3000:]
    # Two prepared files side by side, each run recording the SHA-256 of its own.
    metas = {n: json.loads((work / t).read_text()) for n, t in target.items()}
    files = {n: work / m["data_file"] for n, m in metas.items()}
    assert files["demo"] != files["other"] and all(f.is_file() for f in files.values())
    for name, meta in metas.items():
        assert meta["data_sha256"] == file_sha256(files[name])
    assert metas["demo"]["data_sha256"] != metas["other"]["data_sha256"]

    # A failing run (its results folder lies under a file) on the demo's data: the shared raw
    # data and its flag stay.
    (tmp_path / "a_file").write_text("")
    bad = write_config(
        tmp_path, {**tiny, "results_dir": str(tmp_path / "a_file" / "r")}, "bad.yaml"
    )
    res = snakemake(work, "--cores", "1", configs=[bad])
    assert res.returncode != 0
    flags = sorted(p.parent.name for p in (work / "resources" / "raw").glob("*/.downloaded"))
    assert len(flags) == 2 and all(f.startswith("synthetic-") for f in flags), flags

    res = snakemake(work, "--cores", "1", "-n", target["demo"], configs=[demo])
    assert res.returncode == 0, output(res)[-3000:]
    assert "Nothing to be done" in output(res), output(res)[-3000:]
    assert file_sha256(files["demo"]) == metas["demo"]["data_sha256"]
