"""The future-work studies (studies/transformer.yaml, studies/recurrent.yaml): their job counts
and cost, the config errors of the new models, and a tiny version of each run end to end."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from normdrop.catalog import study_paths
from normdrop.config import ConfigError, run_config, search_config
from normdrop.grid import grid_cells, grid_config
from normdrop.workflow_config import deep_merge
from normdrop.workflow_config import validate_workflow_config as validate

REPO = Path(__file__).resolve().parents[1]

PAPER = yaml.safe_load((REPO / "config.yaml").read_text())


def study(name: str) -> dict:
    return yaml.safe_load((REPO / "studies" / f"{name}.yaml").read_text())


def planned_jobs(*args: str) -> tuple[int, dict[str, int], str]:
    """`snakemake -n --quiet rules ...` from the repository root: (exit code, jobs per rule,
    its output). A dry run writes nothing outside .snakemake/ (git-ignored)."""
    cmd = [sys.executable, "-m", "snakemake", "-n", "--quiet", "rules", *args]
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    out = res.stdout + res.stderr
    table = out.split("Job stats:")[-1] if "Job stats:" in out else ""
    counts = {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M)}
    return res.returncode, counts, out


# (train, lr_search, select_lr, download) per study; docs/studies.md states the same:
# transformer: 2 datasets x 5 norms x dropout off/on x 3 seeds, x 4 lr candidates per variant;
# recurrent: 2 datasets x 3 norms x dropout off/on x 3 seeds.
STUDY_JOBS = {"transformer": (60, 80, 20, 2), "recurrent": (36, 48, 12, 2)}
# Training epochs: train jobs x train.epochs + lr_search jobs x lr_search.epochs. The paper grid:
# 9 cells x 4 variants x 3 seeds x 100 + 9 x 4 x 4 candidates x 10 = 10,800 + 1,440.
STUDY_EPOCHS = {"transformer": 60 * 100 + 80 * 10, "recurrent": 36 * 100 + 48 * 10}
PAPER_EPOCHS = 12_240


@pytest.mark.parametrize("name", sorted(STUDY_JOBS))
def test_each_future_work_study_plans_its_stated_job_count(name):
    rc, counts, err = planned_jobs("--configfile", f"studies/{name}.yaml")
    assert rc == 0, err[-2000:]
    train, search, select, download = STUDY_JOBS[name]
    assert (counts["train"], counts["lr_search"], counts["select_lr"]) == (train, search, select)
    assert counts["download"] == download and counts["study"] == 1 and "tables" not in counts
    # The cost in training epochs, from the merged config (what docs/studies.md states).
    config = validate(deep_merge(PAPER, study(name)))
    epochs = train * config["train"]["epochs"] + search * config["lr_search"]["epochs"]
    assert epochs == STUDY_EPOCHS[name] and epochs < PAPER_EPOCHS


def test_the_studies_ask_their_question_of_the_new_models():
    grid = grid_config(deep_merge(PAPER, study("transformer")))
    assert grid_cells(grid) == [("cifar10", "vit"), ("cifar100", "vit")]
    assert {v["norm"] for v in grid["variants"].values()} == {
        "none",
        "layer",
        "batch",
        "rms",
        "group",
    }
    assert grid["train"]["warmup_epochs"] == 5  # the transformer's warm-up (docs/protocol.md)
    # The search keeps the warm-up's share of the run: 5 of 100 epochs -> 1 of its 10.
    assert search_config(grid, "cifar10", "vit", "layernorm_p0.1", 1e-3).warmup_epochs == 1
    assert run_config(grid, "cifar10", "vit", "layernorm_p0.1", 42).warmup_epochs == 5
    short = deep_merge(grid, {"train": {"epochs": 12, "warmup_epochs": 11}})
    assert search_config(short, "cifar10", "vit", "layernorm_p0.1", 1e-3).warmup_epochs == 9
    grid = grid_config(deep_merge(PAPER, study("recurrent")))
    assert grid_cells(grid) == [("mnist", "lstm"), ("cifar10", "lstm")]
    assert sorted(grid["variants"]) == [
        "batchnorm_p0", "batchnorm_p0.3", "layernorm_p0", "layernorm_p0.3", "no_norm_p0",
        "no_norm_p0.3",
    ]  # fmt: skip
    assert grid["train"]["warmup_epochs"] == 0  # the paper's recipe, plus clipping:
    pixels = run_config(grid, "mnist", "lstm", "batchnorm_p0.3", 42)
    assert (pixels.lstm_input, pixels.grad_clip_norm) == ("pixels", 1.0)  # a GPU-sized study
    rows = deep_merge(deep_merge(PAPER, study("recurrent")), study("recurrent_rows"))
    rows_cfg = run_config(grid_config(rows), "mnist", "lstm", "batchnorm_p0.3", 42)
    assert (rows_cfg.lstm_input, rows_cfg.grad_clip_norm) == ("rows", 1.0)  # the CPU-sized one
    assert rows["results_dir"] != grid["results_dir"]
    # H1a on the loss SD of epochs 2+ beside H1a, for every norm, as the paper grid's H1a2.
    for name in ("transformer", "recurrent"):
        effects = study(name)["study"]["effects"]
        h1a = [e["name"][4:] for e in effects if e["metric"] == "loss_sd"]
        assert [e["name"][5:] for e in effects if e["metric"] == "loss_sd_late"] == h1a != []


VIT = {"models": {"vit": {"width": 16, "dropout_rate": 0.1}}, "select": {"models": ["vit"]}}
BAD_INPUT = {
    "norm": (
        deep_merge(study("recurrent"), {"variants": {"gn": {"norm": "group", "dropout": True}},
                                        "select": {"variants": ["no_norm", "layernorm",
                                                                "batchnorm", "gn"]}}),
        "config key 'variants.gn.norm': 'group' is not defined for lstm; allowed per model: "
        "mlp: none, batch, group, layer, rms; cnn:",
    ),
    "shape": (
        {**VIT, "datasets": ["synthetic"], "data": {"synthetic": {"size": 18}}},
        "config key 'data.synthetic.size': synthetic/vit: vit cuts images into 4x4 patches: "
        "height and width must be multiples of 4, got 18x18",
    ),
    "warmup": (
        {"train": {"warmup_epochs": 10}},
        "config key 'train.warmup_epochs': 10 epochs of warm-up do not fit in the run "
        "(train.epochs = 100, lr_search.epochs = 10); allowed: 0 .. 9",
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(BAD_INPUT))
def test_bad_input_stops_with_one_line_naming_the_key_before_any_job(tmp_path, case, write_config):
    override, message = BAD_INPUT[case]
    with pytest.raises(ConfigError) as err:
        validate(deep_merge(PAPER, override))
    assert str(err.value).startswith(message) and "\n" not in str(err.value)
    rc, counts, out = planned_jobs("--configfile", str(write_config(tmp_path, override)))
    assert rc != 0 and not counts and "localrule" not in out  # no job planned, let alone run
    lines = [line for line in out.splitlines() if "invalid config:" in line]
    assert len(lines) == 1 and f"invalid config: {message}" in lines[0], out


def test_a_fused_grid_with_a_cell_that_cannot_fuse_is_refused_before_any_job():
    # The recurrent study's plain LSTM (norm none) has no vmap rule: refused when planning, with
    # the cell and the way out, not when its fused job starts. The paper grid fuses as it is.
    validate(deep_merge(PAPER, {"fuse": {"train": True, "lr_search": True}}))
    with pytest.raises(ConfigError) as err:
        validate(deep_merge(deep_merge(PAPER, study("recurrent")), {"fuse": {"train": True}}))
    message = str(err.value)
    assert message.startswith("config key 'fuse.train': mnist/lstm/") and "\n" not in message
    assert "cannot fuse lstm with norm none" in message and "set fuse.train false" in message


@pytest.fixture
def tiny(fast_config):
    def tiny(name: str, **train) -> dict:
        """The study at toy size on the synthetic data: 2 seeds, one lr candidate, a few epochs."""
        spec = study(name)
        if name == "recurrent":  # rows, the CPU-sized variant of the pixel study
            spec = deep_merge(spec, study("recurrent_rows"))
        model = next(iter(spec["models"]))
        return deep_merge(
            spec,
            {
                **fast_config,
                "results_dir": f"results/tiny_{name}",
                "datasets": ["synthetic"],
                "models": {model: {"width": 16}},
                "train": {"epochs": 3, "lr_milestones": [2], **train},
                "lr_search": {"epochs": 2, "candidates": [3.0e-3]},
            },
        )

    return tiny


@pytest.mark.slow
@pytest.mark.parametrize("name, warmup", [("transformer", 1), ("recurrent", 0)])
def test_a_tiny_future_work_study_runs_end_to_end(
    tmp_path, name, warmup, write_config, snakemake, tiny
):
    override = write_config(tmp_path, tiny(name, warmup_epochs=warmup))
    res = snakemake(tmp_path, "--cores", "2", configs=[override])
    assert res.returncode == 0, res.stderr[-3000:]
    results = tmp_path / "results" / f"tiny_{name}"
    runs = pd.read_parquet(results / "summary" / "runs.parquet")
    norms = {"transformer": 5, "recurrent": 3}[name]
    assert len(runs) == norms * 2 * 2 and set(runs["status"]) == {"completed"}
    assert set(runs["dropout_rate"]) == {0.0, study(name)["sweep"]["dropout_rate"][1]}
    tables, figures = study_paths(results / "tables", results / "figures")
    for path in tables + figures:
        assert path.is_file() and path.stat().st_size > 0, path
    effects = pd.read_csv(results / "tables" / "study_effects.csv")
    h3x = effects[effects["effect"].str.startswith("H3x")]
    assert len(h3x) == norms - 1 and set(h3x["value"]) != {0.0}  # one row per norm, at "on"
    other = effects[effects["metric"].ne("convergence_epoch")]
    assert other["estimate"].notna().all() and other["n_min"].eq(2).all()
    # A tiny run may stay at chance: it gets no convergence epoch (docs/protocol.md, "did not
    # learn"), and an effect on convergence without two learned seeds a side says why.
    conv = effects[effects["metric"].eq("convergence_epoch")]
    explained = conv["verdict"].str.contains("did not learn|too few seeds", regex=True)
    assert (conv["n_min"].eq(2) | explained).all(), conv
    if runs["learned"].all():
        assert conv["estimate"].notna().all() and conv["n_min"].eq(2).all()
    # The warm-up reached the runs: it is part of each run's recorded settings.
    meta = next((results / "runs").rglob("meta.json")).read_text()
    assert f'"warmup_epochs": {warmup}' in meta
