"""The training CLI's bad inputs: one line in our own words, exit code 2, nothing written; and a
--help that documents every option from the same source as RunConfig's checks."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys

import pytest

from normdrop.config import RunConfig, allowed_text
from normdrop.data import load_prepared
from normdrop.train import _parser, main


def run_main(capsys, argv) -> tuple[int, list[str]]:
    """The CLI in this process: (exit code, stderr lines)."""
    try:
        code = main(argv)
    except SystemExit as exit:  # argparse's way out
        code = exit.code
    return code, capsys.readouterr().err.strip().splitlines()


@pytest.fixture(scope="module")
def cli_args(train_cli):
    def cli_args(data, out, *extra) -> list[str]:
        return train_cli(data, out, *extra)[3:]  # without `python -m normdrop.train`

    return cli_args


def test_missing_data_file_says_how_to_create_it_with_a_command_that_works(
    capsys, tmp_path, train_env, cli_args
):
    missing, out = tmp_path / "missing.pt", tmp_path / "run"
    code, lines = run_main(capsys, cli_args(missing, out))
    assert code == 2 and len(lines) == 1, lines
    assert f"prepared dataset {missing} is missing: create it with `" in lines[0]
    assert not out.exists()  # nothing written
    command = re.search(r"`(.+)`", lines[0])[1]
    # The command as given, run from a fresh folder (python: this interpreter).
    command = command.replace("python -m", f"{sys.executable} -m")
    res = subprocess.run(command, shell=True, cwd=tmp_path, env=train_env, capture_output=True)
    assert res.returncode == 0, res.stderr
    assert load_prepared(missing).name == "synthetic"


@pytest.mark.parametrize("damage", ["truncated", "no zip archive"])
def test_corrupt_data_file_is_named_in_our_words_with_how_to_rebuild_it(
    capsys, tmp_path, tiny_data, damage, cli_args
):
    broken, out = tmp_path / "broken.pt", tmp_path / "run"
    whole = tiny_data.read_bytes()
    # Cut short; or zeros, no zip archive (torch then hints at _use_new_zipfile_serialization).
    broken.write_bytes(whole[:5000] if damage == "truncated" else bytes(len(whole)))
    code, lines = run_main(capsys, cli_args(broken, out))
    assert code == 2 and len(lines) == 1, lines
    assert f"prepared dataset {broken} is corrupt or truncated" in lines[0]
    assert "rebuild it with `python -m normdrop.data download synthetic" in lines[0]
    assert f"prepare synthetic --raw-dir resources/raw/synthetic --out {broken}`" in lines[0]
    assert "zipfile" not in lines[0] and "torch" not in lines[0]  # not PyTorch's hint
    assert not out.exists()


@pytest.mark.parametrize(
    "args,shown",
    [
        (["--lr", "-1e-3"], "-0.001"),  # argparse alone: "expected one argument"
        (["--lr=-1e-3"], "-0.001"),
        (["--lr", "-.5"], "-0.5"),
        (["--lr", "0"], "0.0"),
    ],
)
def test_a_rate_that_is_not_positive_says_so(capsys, tmp_path, tiny_data, args, shown, cli_args):
    code, lines = run_main(capsys, cli_args(tiny_data, tmp_path / "run", *args))
    assert code == 2 and len(lines) == 1, lines
    assert f"setting 'lr' = {shown}: must be > 0" in lines[0]
    assert not (tmp_path / "run").exists()


def test_help_gives_every_option_a_sentence_its_default_and_allowed_values():
    actions = {a.dest: a for a in _parser()._actions if a.dest != "help"}
    for dest, action in actions.items():
        assert action.help and ("default: " in action.help or "(required" in action.help), dest
    for f in dataclasses.fields(RunConfig):
        help = actions[f.name].help
        assert help.startswith(f.metadata["help"]), f.name  # RunConfig's own words
        if not isinstance(f.default, bool):
            assert f"allowed: {allowed_text(f.metadata['allowed'])})" in help, f.name
    assert "(required; allowed: mlp, cnn, resnet20" in actions["model"].help
    assert "(default: 0.001; allowed: > 0)" in actions["lr"].help
    assert "(default: 50 75; allowed: strictly increasing" in actions["lr_milestones"].help


def test_help_from_the_command_line_documents_every_flag(train_env):
    cmd = [sys.executable, "-m", "normdrop.train", "--help"]
    res = subprocess.run(cmd, env=train_env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0
    options = res.stdout.split("options:")[1].split("\n\n")[0]
    entries = [" ".join(e.split()) for e in re.split(r"\n  (?=-)", options)[1:]]  # one per flag
    assert len(entries) == 1 + 10 + len(dataclasses.fields(RunConfig))  # --help, ours, settings
    undocumented = [e for e in entries[1:] if not re.search(r"\((default: |required)", e)]
    assert not undocumented, undocumented
    assert sum("allowed: " in e for e in entries) >= 20
