"""Any setting from the command line (issue 18): Snakemake's own `--config`, typed by the schema.

Snakemake 9 reads `--config key=value` with its `parse_config`: a top-level number stays a number,
but a nested value is read by YAML's BaseLoader, which keeps every scalar a string. These tests
feed our coercion what that real parser returns, then run the real Snakefile in a dry run.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml
from snakemake.cli import parse_config

from normdrop.config import ConfigError
from normdrop.workflow_config import (
    coerce_workflow_config,
    deep_merge,
    expand_dotted_keys,
    validate_workflow_config,
)

REPO = Path(__file__).resolve().parents[1]

BASE = deep_merge(
    yaml.safe_load((REPO / "config.yaml").read_text()),
    yaml.safe_load((REPO / "workflow" / "demo.yaml").read_text()),
)


def overridden(*entries: str) -> dict:
    """The config as the workflow checks it after `snakemake --config <entries>`."""
    return validate_workflow_config(coerce_workflow_config(deep_merge(BASE, parse_config(entries))))


def test_snakemake_hands_nested_values_over_as_strings():
    """What the coercion is for; if Snakemake starts typing values, this test says so."""
    assert parse_config(["seeds=[1]"]) == {"seeds": ["1"]}
    assert parse_config(["train={epochs: 5}"]) == {"train": {"epochs": "5"}}
    with pytest.raises(ConfigError):  # today's failure, a041c63
        validate_workflow_config(deep_merge(BASE, parse_config(["seeds=[1]"])))
    # Its CLI refuses a dot in a key (hence `train__epochs=5` on the command line).
    with pytest.raises(ValueError, match="valid identifier"):
        parse_config(["train.epochs=5"])
    assert parse_config(["train__epochs=5"]) == {"train__epochs": 5}


@pytest.mark.parametrize(
    "entry, key, value",
    [
        ("seeds=[1]", ("seeds",), [1]),
        ("seeds=[1, 2]", ("seeds",), [1, 2]),
        ("train={epochs: 5}", ("train", "epochs"), 5),
        ("train__epochs=5", ("train", "epochs"), 5),  # the dotted shorthand as Snakemake lets it
        ("execution={compile: true}", ("execution", "compile"), True),
        ("execution={deterministic: True}", ("execution", "deterministic"), True),
        ("execution={cuda_graphs: on}", ("execution", "cuda_graphs"), "on"),  # an enum's string
        ("lr_search={candidates: [1e-4, 3.0e-3]}", ("lr_search", "candidates"), [1e-4, 3e-3]),
        ("train={adam_betas: [0.8, 0.99]}", ("train", "adam_betas"), [0.8, 0.99]),
        ("datasets=[mnist]", ("datasets",), ["mnist"]),
        ("results_dir=2024", ("results_dir",), "2024"),  # a number where a path is wanted
    ],
)
def test_a_command_line_value_gets_the_schema_type(entry, key, value):
    config = overridden(entry)
    for k in key:
        config = config[k]
    assert config == value and type(config) is type(value)


def test_a_nested_mapping_merges_into_the_config_file_value():
    config = overridden("models={mlp: {width: 64, dropout_rate: 0.2}}", "train={epochs: 5}")
    assert config["models"]["mlp"] == {"width": 64, "dropout_rate": 0.2, "init": "stable"}
    assert config["models"]["cnn"] == BASE["models"]["cnn"]  # untouched
    assert config["train"]["epochs"] == 5
    assert config["train"]["lr_milestones"] == BASE["train"]["lr_milestones"]  # untouched


def test_dotted_keys_expand_into_the_nested_form_and_merge():
    assert expand_dotted_keys({"train": {"epochs": 9, "batch_size": 4}, "train.epochs": 5}) == {
        "train": {"epochs": 5, "batch_size": 4}
    }
    config = validate_workflow_config(
        coerce_workflow_config(deep_merge(BASE, {"lr_search.epochs": "3", "models.mlp.width": 7}))
    )
    assert config["lr_search"]["epochs"] == 3 and config["models"]["mlp"]["width"] == 7
    assert "lr_search.epochs" not in config
    # Snakemake puts --config entries first, before keys only config.yaml holds: still they win.
    flat_first = {"tracking__tensorboard": False, "tracking": {"tensorboard": True}}
    assert expand_dotted_keys(flat_first) == {"tracking": {"tensorboard": False}}


@pytest.mark.parametrize(
    "entry, message",
    [
        ("train={epochs: five}", "config key 'train.epochs': 'five' is not of type 'integer'"),
        ("execution={compile: maybe}", "config key 'execution.compile': 'maybe' is not of type"),
        ("seeds=[one]", "config key 'seeds.0': 'one' is not of type 'integer'"),
        ("train={lr_gamma: tenth}", "config key 'train.lr_gamma': 'tenth' is not of type 'number'"),
    ],
)
def test_a_string_that_cannot_be_coerced_gets_one_line(entry, message):
    with pytest.raises(ConfigError) as err:
        overridden(entry)
    assert str(err.value).startswith(message) and "\n" not in str(err.value), str(err.value)


@pytest.mark.parametrize(
    "entry, message",
    [
        (
            "train={epoch: 5}",
            "config key 'train.epoch': unknown key (did you mean 'epochs'?); allowed keys: epochs,",
        ),
        (
            "lr_serch={epochs: 3}",
            "config key 'lr_serch': unknown key (did you mean 'lr_search'?); allowed keys: ",
        ),
        (
            "datasets=[mnsit]",
            "config key 'datasets.0': 'mnsit' is not allowed (did you mean 'mnist",
        ),
        (
            "models={mpl: {width: 4, dropout_rate: 0.3}}",
            "config key 'models.mpl': 'mpl' is not allowed (did you mean 'mlp'?); allowed: mlp,",
        ),
        (
            "select={models: [cnnn]}",
            "config key 'select.models': 'cnnn' is not defined in 'models' (",
        ),
    ],
)
def test_a_near_miss_key_or_value_gets_did_you_mean(entry, message):
    with pytest.raises(ConfigError) as err:
        overridden(entry)
    assert str(err.value).startswith(message) and "\n" not in str(err.value), str(err.value)


def test_a_far_miss_gets_no_guess():
    with pytest.raises(ConfigError) as err:
        overridden("train={zzzz: 5}")
    assert "did you mean" not in str(err.value) and "allowed keys: epochs" in str(err.value)


# --------------------------------------------------------------------------- the real Snakefile
@pytest.fixture(scope="module")
def dry_run(snakemake_cmd):
    def dry_run(tmp_path, *config: str, profile=()) -> subprocess.CompletedProcess:
        cmd = snakemake_cmd(tmp_path, "-n", "-p", *profile, "--config", *config)
        return subprocess.run(cmd, capture_output=True, text=True, timeout=300)

    return dry_run


def test_overrides_reach_the_jobs_in_a_dry_run(tmp_path, dry_run):
    res = dry_run(tmp_path, "seeds=[7]", "train__epochs=5", "execution={compile: true}")
    assert res.returncode == 0, res.stderr[-3000:]
    trains = [line for line in res.stdout.splitlines() if "--lr-from" in line]
    assert len(trains) == 12  # 3 models x 4 variants x one seed
    assert all("seed7" in line and "--epochs 5 " in line for line in trains)
    assert all("--compile " in line for line in trains)


def test_a_config_error_is_one_line_on_stderr_and_exit_2(tmp_path, dry_run):
    res = dry_run(tmp_path, "train={epoch: 5}", profile=("--workflow-profile", "none"))
    assert res.returncode == 2
    assert res.stderr.splitlines() == [
        "invalid config: config key 'train.epoch': unknown key (did you mean 'epochs'?); "
        "allowed keys: epochs, batch_size, lr_milestones, warmup_epochs, lr_gamma, adam_betas, "
        "adam_eps, weight_decay, eval_batch_size, grad_clip_norm"
    ], res.stderr
    assert "common.smk" not in res.stdout + res.stderr
