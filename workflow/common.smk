# Helpers shared by the rule files: config validation, the grid, paths and per-job arguments.
import json
import shlex
import sys
from pathlib import Path

from snakemake.settings.types import DeploymentMethod

SRC = str(Path(workflow.basedir) / "src")
sys.path.insert(0, SRC)

from normdrop.config import (  # noqa: E402
    ConfigError,
    run_config,
    search_config,
    to_cli_args,
    validate_workflow_config,
)

try:
    validate_workflow_config(config)
except ConfigError as err:
    raise WorkflowError(f"invalid config: {err}") from None

RESULTS = config["results_dir"]
RESOURCES = config["resources_dir"]
DATASETS = config["datasets"]
MODELS = list(config["models"])
VARIANTS = list(config["variants"])
SEEDS = config["seeds"]
LR_CANDIDATES = [f"{lr:g}" for lr in config["lr_search"]["candidates"]]
EXEC = config["execution"]
# A training job holds one GPU slot unless the config pins it to the CPU.
GPU_PER_JOB = 0 if EXEC["device"] == "cpu" else 1

# Jobs run the package from this checkout with the interpreter running Snakemake, so that an
# un-activated virtual environment works; under --use-conda the environment's python does.
_conda = DeploymentMethod.CONDA in workflow.deployment_settings.deployment_method
PY = ("python" if _conda else shlex.quote(sys.executable)) + " -m"
PY = f"PYTHONPATH={shlex.quote(SRC)}${{PYTHONPATH:+:$PYTHONPATH}} {PY}"

RUN = "{dataset}/{model}/{variant}/seed{seed}"
CANDIDATE = "{dataset}/{model}/{variant}/lr{lr}"


wildcard_constraints:
    dataset="|".join(DATASETS),
    model="|".join(MODELS),
    variant="|".join(VARIANTS),
    seed=r"\d+",
    lr=r"[0-9.e+-]+",


def run_files(folder):
    """The three files every training run writes (meta.json last)."""
    return {name: f"{folder}/{name}" for name in ("steps.parquet", "epochs.parquet", "meta.json")}


def prepared(wildcards):
    return f"{RESOURCES}/prepared/{wildcards.dataset}.pt"


def synthetic_args(wildcards):
    if wildcards.dataset != "synthetic":
        return ""
    spec = config["data"]["synthetic"]
    return " ".join(f"--synthetic-{k.replace('_', '-')} {v}" for k, v in spec.items())


def search_args(wildcards):
    cfg = search_config(
        config, wildcards.dataset, wildcards.model, wildcards.variant, float(wildcards.lr)
    )
    return shlex.join(to_cli_args(cfg))


def train_args(wildcards):
    cfg = run_config(
        config, wildcards.dataset, wildcards.model, wildcards.variant, int(wildcards.seed)
    )
    return shlex.join(to_cli_args(cfg, skip=("lr",)))


def device_args(wildcards):
    """Device, GPU lease folder and slots: where a job runs, not what it computes."""
    return (
        f"--device {EXEC['device']} --gpu-lock-dir {RESULTS}/scratch/gpu-locks "
        f"--gpu-slots {EXEC['gpu_slots_per_gpu']}"
    )


def lr_candidates(wildcards):
    return [
        f"{RESULTS}/lr_search/{wildcards.dataset}/{wildcards.model}/{wildcards.variant}"
        f"/lr{lr}/meta.json"
        for lr in LR_CANDIDATES
    ]


def all_run_metas():
    return expand(
        f"{RESULTS}/runs/{RUN}/meta.json",
        dataset=DATASETS,
        model=MODELS,
        variant=VARIANTS,
        seed=SEEDS,
    )


def all_selected_lrs():
    return expand(
        f"{RESULTS}/lr_search/{{dataset}}/{{model}}/{{variant}}/selected.json",
        dataset=DATASETS,
        model=MODELS,
        variant=VARIANTS,
    )


def config_json():
    """The merged config, quoted for the shell: the aggregate checks every run against it."""
    return shlex.quote(json.dumps(config, sort_keys=True))
