"""Studies beyond the paper: narrowing the grid, sweeps, the shipped studies' job counts, and a
tiny study end to end (figure and table of effects)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from normdrop.catalog import study_paths
from normdrop.config import ConfigError, run_config, search_config
from normdrop.grid import grid_cells, grid_config
from normdrop.workflow_config import deep_merge, validate_workflow_config

REPO = Path(__file__).resolve().parents[1]

PAPER = yaml.safe_load((REPO / "config.yaml").read_text())


def study(name: str) -> dict:
    return yaml.safe_load((REPO / "studies" / f"{name}.yaml").read_text())


@pytest.fixture(name="dry_run")
def _dry_run(job_counts):
    def dry_run(tmp_path, *configs) -> tuple[dict[str, int], str]:
        cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-n",
               "--directory", str(tmp_path), "--cores", "4",
               "--configfile", *map(str, configs)]  # fmt: skip
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stderr[-3000:]
        return job_counts(res.stdout), res.stdout

    return dry_run


# (train, lr_search, select_lr, download) per shipped study, as docs/studies.md's table says.
STUDY_JOBS = {
    "batch_size": (60, 80, 20, 1),  # 5 batch sizes x 4 norms x 3 seeds; x 4 lr candidates
    "dropout_rate": (60, 80, 20, 2),  # 2 cells x 5 rates x BN off/on x 3 seeds
    "depth": (48, 64, 16, 1),  # 4 depths x 4 variants x 3 seeds
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(STUDY_JOBS))
def test_each_shipped_study_dry_runs_with_its_readme_job_count(tmp_path, name, dry_run):
    counts, stdout = dry_run(tmp_path, REPO / "studies" / f"{name}.yaml")
    train, search, select, download = STUDY_JOBS[name]
    assert (counts["train"], counts["lr_search"], counts["select_lr"]) == (train, search, select)
    assert counts["download"] == download and counts["study"] == 1
    assert "tables" not in counts and "hypotheses" not in counts  # the paper's outputs are not
    assert f"results/studies/{name}/runs/" in stdout  # its own results folder
    assert "resources/prepared/" in stdout  # the shared prepared data
    readme = (REPO / "docs" / "studies.md").read_text()
    assert f"| `studies/{name}.yaml` |" in readme
    row = next(line for line in readme.splitlines() if f"| `studies/{name}.yaml` |" in line)
    assert f"| {train} train + {search} lr_search |" in row


@pytest.mark.slow
def test_a_user_file_selects_the_mlp_alone(tmp_path, write_config, dry_run):
    user = write_config(tmp_path, {"datasets": ["mnist"], "select": {"models": ["mlp"]}})
    counts, stdout = dry_run(tmp_path, user)
    assert counts["train"] == 12 and counts["lr_search"] == 16  # 4 variants x 3 seeds / x 4 lrs
    assert "/cnn/" not in stdout and "/resnet20/" not in stdout
    assert counts["tables"] == 1  # a full (smaller) grid keeps the paper's outputs


def test_the_paper_grid_is_unchanged_by_grid_config():
    grid = grid_config(PAPER)
    assert list(grid["variants"]) == list(PAPER["variants"])
    assert list(grid["models"]) == list(PAPER["models"])
    assert len(grid_cells(grid)) == 9 and grid_config(grid) == grid  # applying it twice: same
    for variant in PAPER["variants"]:
        assert run_config(grid, "cifar10", "cnn", variant, 43) == run_config(
            PAPER, "cifar10", "cnn", variant, 43
        )


def test_sweeps_make_variants_whose_settings_differ_and_are_hashed():
    grid = grid_config(deep_merge(PAPER, study("batch_size")))
    assert len(grid["variants"]) == 20 and grid_cells(grid) == [("cifar10", "resnet20")]
    small = run_config(grid, "cifar10", "resnet20", "bn_bs16", 42)
    paper = run_config(grid, "cifar10", "resnet20", "bn_bs128", 42)
    assert (small.batch_size, small.norm, paper.batch_size) == (16, "batch", 128)
    assert small.settings_hash() != paper.settings_hash()  # the stale-result check sees it
    assert search_config(grid, "cifar10", "resnet20", "gn_bs8", 1e-3).batch_size == 8

    grid = grid_config(deep_merge(PAPER, study("dropout_rate")))
    assert grid_cells(grid) == [("mnist", "mlp"), ("cifar10", "cnn")]
    rates = {v: run_config(grid, "mnist", "mlp", v, 42).dropout_rate for v in grid["variants"]}
    assert rates["dropout_p0"] == 0.0 and rates["bn_dropout_p0.2"] == 0.2
    assert rates["dropout_p0.5"] == 0.5 and len(rates) == 10
    assert run_config(grid, "mnist", "mlp", "bn_dropout_p0", 42).norm == "batch"


@pytest.mark.parametrize(
    "override, message",
    [
        ({"sweep": {"lr": [1e-3]}},
         r"config key 'sweep.lr': unknown key; allowed keys: batch_size, dropout_rate"),
        ({"select": {"models": ["resnet110"]}}, r"config key 'select.models': 'resnet110' is not"
         r" defined in 'models' \(did you mean 'resnet20'\?\); allowed: mlp, cnn, resnet20$"),
        ({"sweep": {"batch_size": [0, 16]}}, r"config key 'sweep.batch_size.0': 0 is less than"),
        ({"sweep": {"dropout_rate": [0.1]}, "select": {"variants": ["none", "bn"]}},
         r"config key 'sweep.dropout_rate': no selected variant has dropout: true"),
        ({"select": {"cells": ["mnist/mlp"]}}, r"config key 'select.cells': .*needs a 'study'"),
        ({"study": {"name": "x", "question": "?", "axis": "batch_size",
                    "effects": [{"name": "e", "metric": "gen_gap", "plus": ["bn"],
                                 "minus": ["none"]}]}},
         r"config key 'study.axis': 'batch_size' is not swept"),
        # A pin off the sweep: refused when the config loads, not "n/a (variant missing)" later.
        ({**study("dropout_rate"), "study": {**study("dropout_rate")["study"], "effects": [
            {"name": "e", "metric": "gen_gap", "plus": ["dropout"], "minus": ["dropout@0.03"]}]}},
         r"config key 'study.effects.0.minus': 'dropout@0.03' pins a value that is not on the "
         r"axis; allowed: dropout_rate on the sweep: 0, 0.1, 0.2, 0.3, 0.5$"),
        ({**study("dropout_rate"), "study": {**study("dropout_rate")["study"], "effects": [
            {"name": "e", "metric": "gen_gap", "plus": ["bn_dropout"], "minus": ["bn_dropout"],
             "minus_at": 0.25}]}},
         r"config key 'study.effects.0.minus_at': 0.25 is not on the axis; allowed: "
         r"dropout_rate on the sweep: 0, 0.1, 0.2, 0.3, 0.5$"),
    ],
)  # fmt: skip
def test_bad_study_keys_stop_with_one_line_naming_the_key(override, message):
    with pytest.raises(ConfigError, match=message) as err:
        validate_workflow_config(deep_merge(PAPER, override))
    assert "\n" not in str(err.value)


def test_every_shipped_study_validates():
    for name in STUDY_JOBS:
        validate_workflow_config(deep_merge(PAPER, study(name)))


@pytest.fixture
def tiny_study(fast_config) -> dict:
    """The batch-size study in miniature: the MLP on synthetic data, batch size {16, 64} x norm
    {none, batch}, 2 seeds, 2 epochs, one learning-rate candidate: 8 runs + 4 searches."""
    return {
        **fast_config,
        "results_dir": "results/tiny_study",
        "train": {"epochs": 2, "lr_milestones": [1]},
        "lr_search": {"epochs": 1, "candidates": [3.0e-3]},
        "select": {"models": ["mlp"], "variants": ["none", "bn"]},
        "sweep": {"batch_size": [16, 64]},
        "study": {
            "name": "tiny_batch_size",
            "question": "Does BN help the MLP at batch 16 and 64?",
            "axis": "batch_size",
            "effects": [
                {"name": "BN − no norm", "metric": "final_test_acc", "plus": ["bn"],
                 "minus": ["none"]},
            ],
        },
    }  # fmt: skip


@pytest.mark.slow
def test_a_tiny_study_runs_end_to_end_with_its_figure_and_table(
    tmp_path, write_config, snakemake, tiny_study
):
    override = write_config(tmp_path, tiny_study)
    res = snakemake(tmp_path, "--cores", "2", configs=[override])
    assert res.returncode == 0, res.stderr[-3000:]
    results = tmp_path / "results" / "tiny_study"
    runs = pd.read_parquet(results / "summary" / "runs.parquet")
    assert len(runs) == 2 * 2 * 2 and set(runs["status"]) == {"completed"}
    assert sorted(set(zip(runs["family"], runs["batch_size"], strict=True))) == [
        ("bn", 16), ("bn", 64), ("none", 16), ("none", 64)
    ]  # fmt: skip
    tables, figures = study_paths(results / "tables", results / "figures")
    for path in tables + figures:
        assert path.is_file() and path.stat().st_size > 0, path
    effects = pd.read_csv(results / "tables" / "study_effects.csv")
    assert effects["value"].tolist() == [16.0, 64.0]  # one row per swept value
    assert effects["estimate"].notna().all() and effects["n_min"].eq(2).all()
    assert effects["ci_low"].le(effects["estimate"]).all()
    assert effects["estimate"].le(effects["ci_high"]).all()
    assert re.search(r"\| +16 \|", (results / "tables" / "study_effects.md").read_text())

    report = tmp_path / "report.html"
    res = snakemake(tmp_path, "--cores", "1", "--report", str(report), configs=[override])
    assert res.returncode == 0, res.stderr[-3000:]
    html = report.read_text()
    assert "Study: tiny_batch_size" in html and "metrics against the swept setting" in html


def constructed_runs(name: str, rng_seed: int = 0) -> pd.DataFrame:
    """runs.parquet-like rows for a shipped study's grid, with known metric values: test
    accuracy = 0.5 + 0.01 * (family index) + 0.001 * (axis position) + seed noise."""
    rng = np.random.default_rng(rng_seed)
    grid = grid_config(deep_merge(PAPER, study(name)))
    fams = list(dict.fromkeys(s["family"] for s in grid["variants"].values()))
    rows = []
    for dataset, model in grid_cells(grid):
        for i, (variant, spec) in enumerate(grid["variants"].items()):
            cfg = run_config(grid, dataset, model, variant, 42)
            for seed in (42, 43, 44):
                rows.append(
                    dict(dataset=dataset, model=model, variant=variant, family=spec["family"],
                         norm=cfg.norm, dropout=cfg.dropout_rate > 0, dropout_rate=cfg.dropout_rate,
                         batch_size=cfg.batch_size, seed=seed, status="completed",
                         final_test_acc=0.5 + 0.01 * fams.index(spec["family"]) + 0.001 * i
                         + rng.normal(0, 0.002),
                         gen_gap=10 * cfg.dropout_rate + rng.normal(0, 0.1),
                         loss_sd=0.05 + rng.normal(0, 0.005), convergence_epoch=30 + seed % 3)
                )  # fmt: skip
    return pd.DataFrame(rows)


def test_effects_per_value_match_welch_by_hand():
    from scipy import stats as sps

    from normdrop.study import effects

    runs = constructed_runs("batch_size")
    res = effects(runs, study("batch_size")["study"])
    assert len(res) == 3 * 5  # 3 effects x 5 batch sizes, one model
    row = res[(res["effect"] == "BN − GroupNorm") & (res["value"] == 16)].iloc[0]
    acc = runs.set_index("variant")["final_test_acc"] * 100
    welch = sps.ttest_ind(acc["bn_bs16"], acc["gn_bs16"], equal_var=False)
    assert row["estimate"] == pytest.approx(acc["bn_bs16"].mean() - acc["gn_bs16"].mean())
    assert row["p_value"] == pytest.approx(welch.pvalue)
    assert row["ci_low"] == pytest.approx(welch.confidence_interval(0.95).low)

    res = effects(constructed_runs("dropout_rate"), study("dropout_rate")["study"])
    assert sorted(set(res["value"])) == [0.1, 0.2, 0.3, 0.5]  # rate 0 is the reference
    assert set(res["reference"]) == {0.0} and len(res) == 2 * 2 * 4  # cells x effects x rates
    assert res["verdict"].eq("> 0 (CI above 0)").all()  # the gap grows by 10 pts per unit rate

    runs = constructed_runs("depth")
    res = effects(runs, study("depth")["study"])
    assert res["value"].tolist()[:4] == [20, 32, 44, 56] and set(res["model"]) == {""}
    inter = res.iloc[0]  # (bn_dropout - bn) - (dropout - none) at depth 20
    m = runs[runs["model"] == "resnet20"].groupby("family")["final_test_acc"].mean() * 100
    by_hand = (m["bn_dropout"] - m["bn"]) - (m["dropout"] - m["none"])
    assert inter["estimate"] == pytest.approx(by_hand)


@pytest.mark.parametrize("name, rows", [("batch_size", 1), ("dropout_rate", 2), ("depth", 1)])
def test_study_figure_has_a_row_of_panels_per_cell_and_a_line_per_family(name, rows):
    from normdrop.figure_style import NORM_COLORS, PAPER_COLORS
    from normdrop.study import PANELS, plot_study

    fig = plot_study(constructed_runs(name), study(name)["study"])
    axes = fig.get_axes()
    assert len(axes) == rows * len(PANELS)
    colors = {line.get_color() for line in axes[0].get_lines()}
    expected = {
        "batch_size": {PAPER_COLORS["none"], PAPER_COLORS["bn"], *NORM_COLORS.values()},
        "dropout_rate": {PAPER_COLORS["dropout"], PAPER_COLORS["bn_dropout"]},
        "depth": set(PAPER_COLORS.values()),
    }[name]
    assert colors == expected
    if name == "batch_size":
        assert axes[0].get_xscale() == "log" and axes[0].get_xlabel() == "Batch size"
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert "mean ± SD over seeds" in labels and len(labels) == len(expected) + 1


def test_a_study_effect_on_convergence_of_runs_that_did_not_learn_says_so():
    from normdrop.study import effects

    runs = constructed_runs("batch_size").assign(learned=True)
    flat = runs["family"].eq("none") & runs["batch_size"].eq(16)  # no norm at 16 stayed at chance
    runs.loc[flat, ["convergence_epoch", "learned"]] = [np.nan, False]
    spec = {**study("batch_size")["study"]}
    spec["effects"] = [
        {"name": "BN − no norm", "metric": "convergence_epoch", "plus": ["bn"], "minus": ["none"]}
    ]
    res = effects(runs, spec).set_index("value")
    assert res.loc[16, "verdict"] == "inconclusive (did not learn)"  # not "BN converges slower"
    assert np.isnan(res.loc[16, "estimate"])
    assert res.drop(16)["estimate"].notna().all()  # the other batch sizes compare as before
