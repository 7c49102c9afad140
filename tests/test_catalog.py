"""normdrop.catalog: the study's facts named once. The schema's enums, config.yaml's defaults
and the modules' own tables agree with it, and planning the workflow imports no torch."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from normdrop import catalog, figure_style, summary_data
from normdrop.config import ConfigError
from normdrop.data import SyntheticSpec
from normdrop.models import MODELS
from normdrop.workflow_config import validate_workflow_config

REPO = Path(__file__).resolve().parents[1]
SCHEMA = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())
CONFIG = yaml.safe_load((REPO / "config.yaml").read_text())
# A meta-path finder that refuses the heavy libraries, installed by a sitecustomize module first
# on PYTHONPATH: a subprocess that imports any of them fails.
BLOCKER = """import sys


class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "torchvision", "scipy", "matplotlib"):
            raise ImportError(f"{name} is blocked by tests/test_catalog.py")


sys.meta_path.insert(0, Blocker())
"""


def _props(*path):
    node = SCHEMA
    for key in path:
        node = node["properties"][key]
    return node


def test_schema_enums_are_the_catalogs():
    assert _props("datasets")["items"]["enum"] == list(catalog.DATASETS)
    models = _props("models")
    assert models["propertyNames"]["enum"] == list(catalog.MODELS)
    assert models["additionalProperties"]["properties"]["init"]["enum"] == list(catalog.INITS)
    variant = _props("variants")["additionalProperties"]["properties"]
    assert variant["norm"]["enum"] == list(catalog.NORMS)
    assert _props("data", "augment")["enum"] == list(catalog.AUGMENTS)
    execution = _props("execution")["properties"]
    assert execution["device"]["enum"] == list(catalog.DEVICES)
    assert execution["precision"]["enum"] == list(catalog.PRECISIONS)
    assert execution["memory_format"]["enum"] == list(catalog.MEMORY_FORMATS)
    # YAML reads a bare on/off as a boolean: the schema also takes true/false
    assert execution["cuda_graphs"]["enum"] == [*catalog.CUDA_GRAPHS, True, False]
    study = _props("study")["properties"]
    assert study["axis"]["enum"] == list(catalog.STUDY_AXES)
    effect = study["effects"]["items"]["properties"]
    assert effect["metric"]["enum"] == list(catalog.EFFECT_METRICS)
    assert _props("data", "synthetic")["required"] == list(catalog.SYNTHETIC)


def test_defaults_agree_with_config_yaml():
    assert CONFIG["data"]["synthetic"] == catalog.SYNTHETIC
    assert vars(SyntheticSpec()) == catalog.SYNTHETIC
    assert CONFIG["metrics"]["convergence_fraction"] == catalog.CONVERGENCE_FRACTION
    assert catalog.percent(catalog.CONVERGENCE_FRACTION) == "95%"
    assert catalog.percent(0.875) == "87.5%"


def test_modules_tables_have_the_catalogs_keys():
    assert tuple(MODELS) == catalog.MODELS
    assert tuple(figure_style.FIG_SIZES) == catalog.PAIR_FIGURES
    assert set(catalog.METRICS) <= set(summary_data.RUN_COLUMNS)
    assert set(catalog.MODEL_NAMES) <= set(catalog.MODELS)
    for metric in catalog.METRICS.values():
        assert metric.better in ("higher", "lower")
        assert metric.unit in catalog.UNIT_ABBREVIATIONS
    for column in catalog.PLOTTED_METRICS:  # a panel of the metrics figure: title and y label
        assert catalog.METRICS[column].title and catalog.METRICS[column].axis, column
    assert catalog.DATASETS["cifar100"].chance_acc == 0.01
    assert catalog.DATASETS["synthetic"].chance_acc is None


def _without_torch(tmp_path) -> dict:
    (tmp_path / "block").mkdir()
    (tmp_path / "block" / "sitecustomize.py").write_text(BLOCKER)
    path = [str(tmp_path / "block"), str(REPO / "src"), os.environ.get("PYTHONPATH", "")]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, path))}


def test_the_blocker_blocks(tmp_path):
    res = subprocess.run(
        [sys.executable, "-c", "import torch"], env=_without_torch(tmp_path), capture_output=True
    )
    assert res.returncode == 1 and b"torch is blocked" in res.stderr


def test_planning_imports_no_torch(tmp_path):
    """`snakemake -n` of the demo plans every job with torch, scipy and matplotlib unimportable."""
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-n", "--cores", "1"]
    cmd += ["--configfile", str(REPO / "workflow" / "demo.yaml")]
    cmd += ["--config", f"results_dir={tmp_path / 'results'}"]
    env = _without_torch(tmp_path)
    res = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "summary_report" in res.stdout and "This was a dry-run" in res.stdout


def test_augmentations_per_dataset_come_from_the_catalog(merged_config):
    assert catalog.DATASETS["mnist"].augments == ("none",)
    with pytest.raises(
        ConfigError, match="'data.augment': crop_flip is for CIFAR-like data, not mnist"
    ):
        validate_workflow_config(
            merged_config({"datasets": ["synthetic", "mnist"], "data": {"augment": "crop_flip"}})
        )
    validate_workflow_config(
        merged_config({"datasets": ["cifar10", "synthetic"], "data": {"augment": "crop_flip"}})
    )
