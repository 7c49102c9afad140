"""The learning-rate search says when its pick sits at the grid's edge (issue 18): selected.json,
select-lr's warning line, the status view, the report's note under Table 2, and the opt-in
extension (lr_search.extend_at_edge) that trains the next rate on that side."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from normdrop import lr_search, status
from normdrop import report as rep
from normdrop.lr_search import lr_edge, next_candidate, select_lr, select_lr_extended
from normdrop.time_left import estimate

REPO = Path(__file__).resolve().parents[1]


ENV = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def fake_candidate(tiny_config):
    def fake_candidate(
        cell: Path, lr: float, val_acc: float | None, data: Path | None = None
    ) -> Path:
        """A finished search candidate (meta.json + epochs.parquet) with this best val accuracy;
        None: diverged. Its settings are a real RunConfig's: an extension trains beside it."""
        folder = cell / f"lr{lr:g}"
        folder.mkdir(parents=True)
        cfg = tiny_config(lr=lr, epochs=2, lr_milestones=(1,), width=8)
        meta = {
            "settings": cfg.to_dict(),
            "settings_hash": cfg.settings_hash(),
            **{k: getattr(cfg, k) for k in ("dataset", "model", "variant", "lr")},
            "status": "diverged" if val_acc is None else "completed",
            "data_file": str(data),
        }
        (folder / "meta.json").write_text(json.dumps(meta))
        accs = [0.1, 0.1 if val_acc is None else val_acc]
        pd.DataFrame({"epoch": [1, 2], "val_acc": accs}).to_parquet(folder / "epochs.parquet")
        return folder

    return fake_candidate


@pytest.mark.parametrize(
    "lrs, picked, edge",
    [
        ([1e-4, 3e-4, 1e-3, 3e-3], 3e-3, "largest"),
        ([1e-4, 3e-4, 1e-3, 3e-3], 1e-4, "smallest"),
        ([3e-3, 1e-4, 1e-3], 1e-3, None),
        ([1e-3], 1e-3, None),  # one rate is a fixed rate, not a search
    ],
)
def test_lr_edge(lrs, picked, edge):
    assert lr_edge(lrs, picked) == edge


def test_selected_json_marks_a_pick_at_the_largest_candidate(tmp_path, fake_candidate):
    folders = [fake_candidate(tmp_path, lr, acc) for lr, acc in ((1e-3, 0.4), (3e-3, 0.6))]
    assert select_lr(folders)["at_edge"] == "largest"


def test_a_diverged_larger_rate_bounds_the_search(tmp_path, fake_candidate):
    """The pick is not at the edge when a larger rate was tried and diverged."""
    rates = ((1e-4, 0.2), (1e-3, 0.6), (3e-3, None))
    choice = select_lr([fake_candidate(tmp_path, lr, acc) for lr, acc in rates])
    assert choice["lr"] == 1e-3 and choice["at_edge"] is None


def test_select_lr_cli_writes_at_edge_and_one_warning_line(tmp_path, fake_candidate):
    cell = tmp_path / "lr_search" / "synthetic" / "mlp" / "none"
    folders = [fake_candidate(cell, lr, acc) for lr, acc in ((1e-4, 0.7), (3e-4, 0.5))]
    out = cell / "selected.json"
    cmd = [sys.executable, "-m", "normdrop.lr_search", "--out", str(out)]
    res = subprocess.run(
        [*cmd, *(str(f / "meta.json") for f in folders)], capture_output=True, text=True, env=ENV
    )
    assert res.returncode == 0, res.stderr
    assert res.stderr.splitlines() == [
        "warning: synthetic/mlp/custom: the selected lr 0.0001 is the smallest candidate tried; "
        "the best rate may lie below the grid (lr_search.extend_at_edge: N searches further)"
    ]
    choice = json.loads(out.read_text())
    assert choice["at_edge"] == "smallest" and choice["extensions"] == 0
    # ... and the status view lists the cell.
    assert status.edge_picks(tmp_path) == ["synthetic/mlp/none (smallest, lr 0.0001)"]


def test_an_interior_pick_has_no_warning(tmp_path, fake_candidate):
    rates = ((1e-4, 0.5), (3e-4, 0.7), (1e-3, 0.6))
    folders = [fake_candidate(tmp_path, lr, acc) for lr, acc in rates]
    out = tmp_path / "selected.json"
    argv = ["--out", str(out), *(str(f / "meta.json") for f in folders)]
    assert lr_search.main(argv) == 0
    assert json.loads(out.read_text())["at_edge"] is None
    assert status.edge_picks(tmp_path) == []


def test_the_report_names_the_cells_picked_at_the_edge(tmp_path, make_summary):
    summary = tmp_path / "summary"
    make_summary(summary, ("mnist",), ("mlp",))
    path = summary / "report.md"
    assert "picked the largest or smallest" not in rep.build_report(summary, path)
    search = pd.read_parquet(summary / "lr_search.parquet")
    cell = (search["variant"] == "bn") & (search["dataset"] == "mnist")
    search.loc[cell, "selected"] = search.loc[cell, "lr"] == 3e-3  # bn's pick: the largest rate
    search.to_parquet(summary / "lr_search.parquet")
    text = rep.build_report(summary, path)
    note = [line for line in text.splitlines() if "picked the largest or smallest" in line]
    assert len(note) == 1 and "1 cell(s): mnist/mlp/bn (lr 0.003, the largest)" in note[0]
    assert text.index("## Table 2") < text.index(note[0]) < text.index("## Parameter counts")


def test_the_report_marks_what_select_lr_marks_a_tie_is_no_edge(tmp_path, make_summary):
    summary = tmp_path / "summary"
    make_summary(summary, ("mnist",), ("mlp",))
    search = pd.read_parquet(summary / "lr_search.parquet")
    cell = (search["variant"] == "bn") & (search["dataset"] == "mnist")
    search.loc[cell, "selected"] = search.loc[cell, "lr"] == search.loc[cell, "lr"].min()
    search.loc[cell, "best_val_acc"] = 0.1  # every rate at chance: nothing told them apart
    search.to_parquet(summary / "lr_search.parquet")
    text = rep.build_report(summary, summary / "report.md")
    assert "picked the largest or smallest" not in text


@pytest.mark.parametrize(
    "lr, edge, nxt",
    [(3e-3, "largest", 9e-3), (1e-4, "smallest", 3.33333e-5), (1e-2, "largest", 0.03)],
)
def test_the_next_candidate_is_x3_or_div3_with_a_clean_name(lr, edge, nxt):
    assert next_candidate({"lr": lr, "at_edge": edge}) == nxt


def test_extension_trains_the_next_rate_records_it_and_reuses_it(
    tmp_path, tiny_data, fake_candidate
):
    cell = tmp_path / "lr_search" / "synthetic" / "mlp" / "none"
    metas = [
        fake_candidate(cell, lr, acc, tiny_data) / "meta.json"
        for lr, acc in ((1e-3, 0.3), (3e-3, 0.9))  # 3e-3 wins: at the largest edge
    ]
    scratch, events = tmp_path / "scratch", tmp_path / "tensorboard" / "lr_search" / "cell"
    run = {"device": "--device cpu", "tensorboard": events, "tracking": "--tensorboard"}
    choice = select_lr_extended(metas, 1, tiny_data, scratch, run)
    # Its event files sit beside the other candidates' (the tree mirrors the run folders).
    assert list((events / "lr0.009").glob("events.out.tfevents.*"))
    assert not (cell / "lr0.009" / "tensorboard").exists()
    extra = cell / "lr0.009" / "meta.json"
    meta = json.loads(extra.read_text())
    assert meta["lr"] == 0.009 and meta["status"] in ("completed", "diverged")
    recorded = json.loads(metas[0].read_text())["settings"]
    assert {k: v for k, v in meta["settings"].items() if k != "lr"} == {
        k: v for k, v in recorded.items() if k != "lr"
    }  # the same search settings, another rate
    assert [c["lr"] for c in choice["candidates"]] == [1e-3, 3e-3, 0.009]
    assert choice["extensions"] == 1 and choice["extend_at_edge"] == 1
    assert choice["lr"] in (3e-3, 0.009)
    # A rerun (say select_lr's job was rerun) reuses the finished extra candidate.
    before = extra.stat().st_mtime_ns
    again = select_lr_extended(metas, 1, tiny_data, scratch, run)
    assert extra.stat().st_mtime_ns == before and again == choice


def test_a_tie_with_another_rate_is_no_edge_and_is_not_extended(tmp_path, fake_candidate):
    metas = [fake_candidate(tmp_path, lr, 0.1) / "meta.json" for lr in (1e-3, 3e-3, 1e-2)]
    choice = select_lr_extended(metas, 2, None, None)  # would train, were it marked
    assert choice["lr"] == 1e-3 and choice["at_edge"] is None and choice["extensions"] == 0
    assert select_lr([m.parent for m in metas[1:]])["at_edge"] is None  # two tied: the same


def test_extension_off_trains_nothing(tmp_path, fake_candidate):
    metas = [fake_candidate(tmp_path, lr, a) / "meta.json" for lr, a in ((1e-3, 0.3), (3e-3, 0.9))]
    choice = select_lr_extended(metas, 0, None, None)
    assert choice["at_edge"] == "largest" and choice["extensions"] == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lr0.001", "lr0.003"]


def test_the_schema_offers_extend_at_edge_off_by_default():
    import yaml

    from normdrop.workflow_config import SCHEMA

    spec = yaml.safe_load(SCHEMA.read_text())["properties"]["lr_search"]["properties"]
    assert spec["extend_at_edge"]["default"] == 0
    assert yaml.safe_load((REPO / "config.yaml").read_text())["lr_search"]["extend_at_edge"] == 0


def test_a_two_rate_search_is_all_edge_said_once(tmp_path, make_summary, fake_candidate):
    # The demo's search: two rates per cell, so every pick is the largest or the smallest.
    summary = tmp_path / "summary"
    make_summary(summary, ("mnist",), ("mlp",))
    search = pd.read_parquet(summary / "lr_search.parquet")
    two = search[search["lr"].isin(sorted(search["lr"].unique())[:2])].copy()
    two["best_val_acc"] = two["lr"] * 100  # distinct, so each pick is a marked edge
    two["selected"] = two.groupby("variant")["lr"].transform("max") == two["lr"]
    two.to_parquet(summary / "lr_search.parquet")
    text = rep.build_report(summary, summary / "report.md")
    assert text.count(rep.TWO_RATES) == 1 and "picked the largest or smallest" not in text
    # The status view: one line for the whole grid, not one entry per cell.
    for variant in ("none", "bn"):
        cell = tmp_path / "lr_search" / "synthetic" / "mlp" / variant
        folders = [fake_candidate(cell, lr, acc) for lr, acc in ((1e-4, 0.7), (3e-4, 0.5))]
        argv = ["--out", str(cell / "selected.json"), *(str(f / "meta.json") for f in folders)]
        assert lr_search.main(argv) == 0
    assert len(status.edge_picks(tmp_path)) == 2 and status.two_rate_searches(tmp_path)
    shown = status.status_text([], estimate([], None), tmp_path, "test", False)
    lines = [line for line in shown.splitlines() if "grid's edge" in line]
    assert lines == [
        "Learning-rate pick at the grid's edge: 2, as every search tried two rates; give "
        "lr_search.candidates three or more to tell"
    ]
