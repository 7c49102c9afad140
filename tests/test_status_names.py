"""`python -m normdrop.status` names what it looks at: a results folder that does not exist (and
where its path came from), and each run by the variant its meta.json records."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from normdrop import layout
from normdrop.status import main

REPO = Path(__file__).resolve().parents[1]

DEMO = REPO / "workflow" / "demo.yaml"


def status(capsys, *args) -> tuple[int, str, str]:
    try:
        code = main([str(a) for a in args])
    except SystemExit as exit:  # argparse's errors
        code = exit.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    "args,folder,given",
    [
        (["--results", "nowhere"], "nowhere", "given by --results"),
        (["--configfile", DEMO, "--results", "nowhere"], "nowhere", "given by --results"),
        (["--configfile", DEMO], "results/demo", f"results_dir of config.yaml + {DEMO}"),
        ([], "results", "results_dir of config.yaml"),
    ],
    ids=["results", "results-and-config", "config", "default"],
)
def test_a_missing_results_folder_is_one_line_naming_it(capsys, tmp_path, args, folder, given):
    code, out, err = status(capsys, *args, "--directory", tmp_path)
    where = folder if folder == "nowhere" else tmp_path / folder
    assert code == 2 and out == ""
    assert err == (
        f"python -m normdrop.status: error: results folder {where} does not exist ({given})\n"
    )


def test_an_existing_empty_results_folder_is_not_an_error(capsys, tmp_path):
    (tmp_path / "results" / "demo").mkdir(parents=True)
    code, out, _ = status(capsys, "--configfile", DEMO, "--directory", tmp_path)
    assert code == 0 and "0/36 training runs done" in out


def test_a_run_trained_by_hand_is_named_as_its_meta_json_records_it(
    capsys, tmp_path, tiny_data, train_cli, train_env
):
    # BN + dropout (train_cli's network), no --variant, in a folder that says `none`.
    results = tmp_path / "results"
    keys = {"dataset": "synthetic", "model": "cnn", "variant": "none", "seed": 42}
    out = layout.run_dir(results, "train", **keys)
    cmd = train_cli(tiny_data, out, "--epochs", "1", "--lr-milestones")
    res = subprocess.run(cmd, env=train_env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    meta_path = results / "runs/synthetic/cnn/none/seed42/meta.json"
    meta = json.loads(meta_path.read_text())
    assert meta["variant"] == meta["settings"]["variant"] == "bn_dropout"

    def listed():
        code, text, err = status(capsys, "--results", results, "--json")
        assert code == 0, err
        (run,) = json.loads(text)["runs"]
        return run

    run = listed()
    assert (run["variant"], run["folder_variant"], run["state"]) == (
        "bn_dropout",
        "none",
        "finished",
    )
    code, text, _ = status(capsys, "--results", results)
    assert "synthetic cnn   bn_dropout 1/1 done" in text, text
    assert "train synthetic/cnn/none/seed42: bn_dropout" in text, text

    # A run recorded before variants were named from norm and dropout: `custom`.
    meta_path.write_text(json.dumps({**meta, "variant": "custom"}))
    assert listed()["variant"] == "bn_dropout"


def test_a_run_named_as_its_folder_has_no_note(capsys, tmp_path, tiny_data, train_cli, train_env):
    results = tmp_path / "results"
    keys = {"dataset": "synthetic", "model": "cnn", "variant": "bn_dropout", "seed": 42}
    out = layout.run_dir(results, "train", **keys)
    cmd = train_cli(tiny_data, out, "--epochs", "1", "--lr-milestones", "--variant", "bn_dropout")
    res = subprocess.run(cmd, env=train_env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    code, text, _ = status(capsys, "--results", results)
    assert code == 0 and "another variant" not in text
    assert "synthetic cnn   bn_dropout 1/1 done" in text, text
