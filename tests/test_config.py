"""RunConfig: one frozen dataclass per run; unknown keys and wrong types are refused. The
workflow's config: each fault stops `snakemake -n` before any job, with one line naming the key."""

import dataclasses
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from normdrop.config import (
    LEGACY_NAMES,
    ConfigError,
    RunConfig,
    run_config,
    search_config,
    to_cli_args,
)
from normdrop.train import _parser
from normdrop.workflow_config import validate_workflow_config

REPO = Path(__file__).resolve().parents[1]

BASE = dict(dataset="cifar10", model="resnet20", width=32)


def test_frozen_and_typed():
    cfg = RunConfig(**BASE)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.lr = 1.0
    with pytest.raises(ConfigError, match="setting 'epochs' must be of type int, got '10'"):
        RunConfig(**BASE, epochs="10")
    with pytest.raises(ConfigError, match="setting 'compile' must be of type bool"):
        RunConfig(**BASE, compile=1)
    assert RunConfig(**BASE, lr_milestones=[50, 75]).lr_milestones == (50, 75)  # lists from JSON


def test_renamed_settings_keep_the_hash_and_old_records_still_read():
    # RunConfig's names became the config's and the CLI's (issue 23: dropout -> dropout_rate,
    # milestones -> lr_milestones, gamma -> lr_gamma, betas -> adam_betas, eps -> adam_eps). The
    # hashes below are main's before that renaming (d21efdc): existing runs and checkpoints keep
    # theirs, so nothing is recomputed.
    paper = RunConfig(**BASE, norm="batch", dropout_rate=0.3, lr_milestones=(50, 75))
    assert paper.settings_hash() == "9826c85d1dff2679"
    other = dict(dataset="synthetic", model="mlp", width=8, dropout_rate=0.2, lr_gamma=0.5,
                 adam_betas=(0.8, 0.99), adam_eps=1e-6, warmup_epochs=1, epochs=4)  # fmt: skip
    assert RunConfig(**other, lr_milestones=(2,)).settings_hash() == "e9f52d26a487910b"
    # A meta.json written before the renaming holds the old names: read under the new ones.
    old = {k: v for k, v in paper.to_dict().items() if k not in LEGACY_NAMES}
    old |= {old_name: paper.to_dict()[new] for new, old_name in LEGACY_NAMES.items()}
    assert "dropout" in old and "dropout_rate" not in old
    assert RunConfig.from_recorded(old) == paper
    with pytest.raises(ConfigError, match=r"unknown setting\(s\) \['betas', 'dropout', "):
        RunConfig.from_dict(old)  # the CLI and the config take the new names only


def test_unknown_and_missing_keys_are_refused():
    with pytest.raises(ConfigError, match=r"unknown setting\(s\) \['learning_rate'\]; allowed: "):
        RunConfig.from_dict({**BASE, "learning_rate": 0.1})
    with pytest.raises(ConfigError, match=r"missing setting\(s\): width"):
        RunConfig.from_dict({"dataset": "mnist", "model": "mlp"})


def test_settings_hash_ignores_execution_only_settings():
    a = RunConfig(**BASE)
    assert a.settings_hash() == RunConfig(**BASE, precision="fp32", compile=True).settings_hash()
    assert a.settings_hash() != RunConfig(**BASE, seed=43).settings_hash()
    # The init rule changes what a run computes: a result from the other rule is stale.
    assert a.init == "stable" and a.settings_hash() != RunConfig(**BASE, init="he").settings_hash()


def test_grid_cell_and_cli_round_trip():
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    cfg = run_config(config, "cifar10", "resnet20", "bn_dropout", 44, lr=3e-4)
    assert (cfg.norm, cfg.dropout_rate, cfg.width, cfg.seed) == ("batch", 0.3, 32, 44)
    assert cfg.init == "stable"
    assert (cfg.epochs, cfg.lr_milestones, cfg.batch_size) == (100, (50, 75), 128)
    args = _parser().parse_args([*to_cli_args(cfg), "--data", "x.pt", "--out", "o"])
    assert RunConfig(**{f: getattr(args, f) for f in cfg.to_dict()}) == cfg
    search = search_config(config, "mnist", "mlp", "dropout", 1e-3)
    assert (search.epochs, search.lr_milestones, search.seed) == (10, (), 42)


# --------------------------------------------------------------------------- config faults
CONFIG_FAULTS = {
    "unknown_key": ({"bogus": 1}, "bogus", "allowed keys: results_dir, resources_dir"),
    "unknown_nested_key": (
        {"train": {"epoch": 3}}, "train.epoch",
        "unknown key (did you mean 'epochs'?); allowed keys: epochs, batch_size",
    ),
    "wrong_type": ({"train": {"epochs": "ten"}}, "train.epochs", "'ten' is not of type 'integer'"),
    "unknown_dataset": (
        {"datasets": ["imagenet"]}, "datasets.0",
        "'imagenet' is not allowed; allowed: mnist, cifar10, cifar100, synthetic",
    ),
    "unknown_model": (
        {"models": {"vgg": {"width": 4, "dropout_rate": 0.3}}}, "models.vgg",
        "'vgg' is not allowed; allowed: mlp, cnn, resnet20",
    ),
    "unknown_norm": (
        {"variants": {"gn": {"norm": "instance", "dropout": False}}}, "variants.gn.norm",
        "'instance' is not allowed; allowed: none, batch, group, layer",
    ),
    "unknown_init": (
        {"models": {"mlp": {"init": "xavier"}}}, "models.mlp.init",
        "'xavier' is not allowed; allowed: stable, he",
    ),
    "empty_grid": ({"datasets": []}, "datasets", "[] should be non-empty"),
    "duplicate_seeds": ({"seeds": [42, 43, 42]}, "seeds", "duplicate seed(s) [42]"),
    "milestone_beyond_last_epoch": (
        {"train": {"epochs": 6, "lr_milestones": [4, 6]}}, "train.lr_milestones",
        "[6] at or beyond the last epoch (train.epochs = 6); allowed: 1 .. 5",
    ),
    "brace_in_results_dir": (
        {"results_dir": "results/{run}"}, "results_dir",
        "holds a brace, which Snakemake would read as a wildcard",
    ),
}  # fmt: skip
DRY_RUN_FAULTS = [k for k in CONFIG_FAULTS if k != "unknown_nested_key"]


@pytest.fixture(scope="module")
def config_dry_runs(tmp_path_factory, write_config, run, snakemake_cmd):
    """`snakemake -n` with each faulty override, two at a time (each is a few seconds)."""
    root = tmp_path_factory.mktemp("config-faults")

    def dry_run(name):
        folder = root / name
        folder.mkdir()
        override = write_config(folder, CONFIG_FAULTS[name][0])
        return name, run(snakemake_cmd(folder, "-n", "--cores", "1", configs=[override]), 300)

    with ThreadPoolExecutor(2) as pool:
        return dict(pool.map(dry_run, DRY_RUN_FAULTS))


@pytest.mark.slow
@pytest.mark.parametrize("name", DRY_RUN_FAULTS)
def test_config_fault_stops_the_workflow_before_any_job(config_dry_runs, name, output, tail):
    _, key, allowed = CONFIG_FAULTS[name]
    res = config_dry_runs[name]
    text = output(res)
    assert res.returncode != 0, tail(text)
    lines = [line for line in text.splitlines() if "invalid config:" in line]
    assert len(lines) == 1, text
    assert f"invalid config: config key '{key}': " in lines[0] and allowed in lines[0], text
    assert "Job stats" not in text and "localrule" not in text


@pytest.mark.parametrize("name", list(CONFIG_FAULTS))
def test_config_fault_in_process(name, merged_config):
    override, key, allowed = CONFIG_FAULTS[name]
    with pytest.raises(ConfigError) as err:
        validate_workflow_config(merged_config(override))
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"config key '{key}': ") and allowed in message, message


def test_milestones_out_of_order_name_the_config_key(merged_config):
    """Caught only by RunConfig (the schema checks uniqueness, not order): the message should
    still name the workflow's config key, as every other config fault does."""
    with pytest.raises(ConfigError) as err:
        validate_workflow_config(merged_config({"train": {"epochs": 6, "lr_milestones": [4, 2]}}))
    assert str(err.value).startswith("config key 'train.lr_milestones'"), str(err.value)


def test_merged_demo_and_grid_configs_are_valid(merged_config, grid_config):
    validate_workflow_config(merged_config())
    validate_workflow_config(merged_config(grid_config))
