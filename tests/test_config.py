"""RunConfig: one frozen dataclass per run; unknown keys and wrong types are refused."""

import dataclasses

import pytest
import yaml
from conftest import REPO

from normdrop.config import ConfigError, RunConfig, run_config, search_config, to_cli_args
from normdrop.train import _parser

BASE = dict(dataset="cifar10", model="resnet20", width=32)


def test_frozen_and_typed():
    cfg = RunConfig(**BASE)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.lr = 1.0
    with pytest.raises(ConfigError, match="setting 'epochs' must be of type int, got '10'"):
        RunConfig(**BASE, epochs="10")
    with pytest.raises(ConfigError, match="setting 'compile' must be of type bool"):
        RunConfig(**BASE, compile=1)
    assert RunConfig(**BASE, milestones=[50, 75]).milestones == (50, 75)  # lists from JSON


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
    assert (cfg.norm, cfg.dropout, cfg.width, cfg.seed) == ("batch", 0.3, 32, 44)
    assert cfg.init == "stable"
    assert (cfg.epochs, cfg.milestones, cfg.batch_size) == (100, (50, 75), 128)
    args = _parser().parse_args([*to_cli_args(cfg), "--data", "x.pt", "--out", "o"])
    assert RunConfig(**{f: getattr(args, f) for f in cfg.to_dict()}) == cfg
    search = search_config(config, "mnist", "mlp", "dropout", 1e-3)
    assert (search.epochs, search.milestones, search.seed) == (10, (), 42)
