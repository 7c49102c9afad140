"""normdrop.compare: two results folders (built from the summary fixtures, not by training)."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from normdrop import compare

CELLS = dict(datasets=("synthetic",), models=("mlp",))


@pytest.fixture(scope="module")
def folders(tmp_path_factory, make_summary, write_run_folders):
    """A: seeds 42-44; B: the same seeds drawn anew (another rerun), 4 epochs recorded instead
    of 5; C: seeds 45-47; D: another dataset. Each with run folders (meta.json)."""
    root = tmp_path_factory.mktemp("compare")
    specs = {
        "A": (dict(seeds=(42, 43, 44)), {}),
        "B": (dict(seeds=(42, 43, 44), noise_seed=1), dict(epochs=4)),
        "C": (dict(seeds=(45, 46, 47), noise_seed=2), {}),
        "D": (dict(seeds=(42, 43, 44), datasets=("mnist",), models=("mlp",)), {}),
    }
    for name, (summary, settings) in specs.items():
        frames = make_summary(root / name / "summary", **{**CELLS, **summary})
        write_run_folders(root / name, frames, **settings)
    return root


def test_a_folder_against_itself_has_no_difference_and_no_flip(folders):
    a, _ = compare.read_folder(folders / "A")
    diffs = compare.metric_differences(a, a)
    assert len(diffs) == 4 * len(compare.METRICS)  # 4 variants x every metric of Table 2
    assert (diffs["diff"] == 0).all()
    assert (diffs[["ci_low", "ci_high"]] == 0).all().all()
    assert (diffs["differs"] == "").all()
    assert set(diffs["test"]) == {"paired (n=3)"}
    assert not compare.verdict_flips(a, a)["flip"].any()
    _, settings = compare.read_folder(folders / "A")
    assert compare.setting_differences(settings, settings).empty


def test_matching_seeds_are_paired_and_the_ci_is_scipys(folders):
    (a, _), (b, _) = compare.read_folder(folders / "A"), compare.read_folder(folders / "B")
    diffs = compare.metric_differences(a, b).set_index(["metric", "variant"])
    row = diffs.loc[("final_test_acc", "bn")]
    va = a[a["variant"] == "bn"].set_index("seed")["final_test_acc"] * 100
    vb = b[b["variant"] == "bn"].set_index("seed")["final_test_acc"] * 100
    ci = sps.ttest_rel(vb.to_numpy(), va.loc[vb.index].to_numpy()).confidence_interval(0.95)
    assert row["test"] == "paired (n=3)"
    assert row["diff"] == pytest.approx(vb.mean() - va.mean())
    assert (row["ci_low"], row["ci_high"]) == pytest.approx((ci.low, ci.high))


def test_other_seeds_use_welch(folders):
    (a, _), (c, _) = compare.read_folder(folders / "A"), compare.read_folder(folders / "C")
    diffs = compare.metric_differences(a, c)
    assert set(diffs["test"]) <= {"Welch (3 vs 3)", "inconclusive (zero variance)"}
    loss = diffs[diffs["metric"] == "loss_sd"].set_index("variant")
    va = a[a["variant"] == "none"]["loss_sd"].to_numpy()
    vc = c[c["variant"] == "none"]["loss_sd"].to_numpy()
    ci = sps.ttest_ind(vc, va, equal_var=False).confidence_interval(0.95)
    assert (loss.loc["none", "ci_low"], loss.loc["none", "ci_high"]) == pytest.approx(ci)


def test_holm_by_hand():
    adjusted = compare.holm([0.01, 0.04, np.nan, 0.03, 0.5])
    # sorted 0.01, 0.03, 0.04, 0.5 (m = 4): 0.04, 0.09, max(0.09, 0.08), max(.., 0.5)
    assert adjusted[[0, 3, 1, 4]] == pytest.approx([0.04, 0.09, 0.09, 0.5])
    assert np.isnan(adjusted[2])


def test_a_marked_difference_holds_after_holm(runs_from_values):
    same = [0.70, 0.72, 0.71]
    a = runs_from_values(
        {"bn": {"final_test_acc": [0.80, 0.81, 0.82]}, "none": {"final_test_acc": same}}
    )
    far = runs_from_values(
        {"bn": {"final_test_acc": [0.90, 0.92, 0.91]}, "none": {"final_test_acc": same}}
    )
    diffs = compare.metric_differences(a, far).set_index(["metric", "variant"])
    assert diffs.loc[("final_test_acc", "bn"), "differs"] == "yes"
    assert diffs.loc[("final_test_acc", "none"), "differs"] == ""


def test_the_cli_names_a_protocol_difference_above_the_tables(folders, capsys):
    assert compare.main([str(folders / "A"), str(folders / "B")]) == 0
    text = capsys.readouterr().out
    settings = text.split("**H1-H3")[0]  # the settings come first, above the tables
    assert "| protocol | epochs    | 5   | 4   | 4/4     |" in settings
    assert "**B − A per metric and cell" in text.split("**H1-H3")[1]


@pytest.mark.slow  # draws and saves the figure (PNG and PDF): ~5 s on 2 busy cores
def test_the_cli_writes_every_format_and_the_figure(folders):
    out = folders / "AB"
    assert compare.main([str(folders / "A"), str(folders / "B"), "--out-dir", str(out)]) == 0
    for stem in ("comparison_settings", "comparison_metrics", "comparison_verdicts"):
        for ext in ("md", "tex", "html", "csv"):
            assert (out / f"{stem}.{ext}").stat().st_size > 0
    assert "\\toprule" in (out / "comparison_metrics.tex").read_text()
    page = (out / "comparison.html").read_text()
    assert page.count("<table") == 3 and "Settings that differ" in page
    assert (out / "comparison.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "comparison.pdf").read_bytes()[:4] == b"%PDF"
    flips = pd.read_csv(out / "comparison_verdicts.csv")
    assert list(flips["flip"]) == sorted(flips["flip"], reverse=True)  # flips first
    assert (out / "comparison.md").read_text().startswith("# Comparison")


def test_different_datasets_are_refused_in_one_line(folders, capsys):
    assert compare.main([str(folders / "A"), str(folders / "D")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert err.startswith("error: cannot compare: A has datasets synthetic, B has mnist")


def test_a_folder_without_a_summary_is_one_line(tmp_path, capsys):
    assert compare.main([str(tmp_path), str(tmp_path)]) == 2
    assert "file not found" in capsys.readouterr().err


def test_a_folder_without_run_folders_compares_what_runs_parquet_records(folders, tmp_path):
    """Only the summary (no meta.json): runs.parquet's settings are compared, and what only the
    other folder records is named as not compared, not reported as a difference."""
    shutil.copytree(folders / "A" / "summary", tmp_path / "summary")
    (_, plain), (_, full) = compare.read_folder(tmp_path), compare.read_folder(folders / "A")
    assert compare.setting_differences(plain, full).empty
    (_, other) = compare.read_folder(folders / "B")
    diffs = compare.setting_differences(plain, other)
    assert diffs[["kind", "setting", "a", "b"]].values.tolist() == [
        ["protocol", "epochs", "5", "4"]
    ]
    note = compare.settings_table(diffs).notes[-1]
    assert note.startswith("Recorded in one folder only, not compared:") and "torch" in note
