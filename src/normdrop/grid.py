"""The grid the workflow runs: the config's datasets, models and variants with `select` and
`sweep` applied (`grid_config`, `grid_cells`), and the rules of a grid that the schema cannot
express (`check_grid`, called by `normdrop.workflow_config.validate_workflow_config`).
"""

from __future__ import annotations

import itertools
import math
import re

from normdrop.catalog import DATASETS, MODEL_NORMS, allowed_norms_text, check_input
from normdrop.config import ConfigError, RunConfig, did_you_mean, run_config

# A --configfile is deep-merged into config.yaml (dicts merge, lists replace), so a study cannot
# drop a model or variant by leaving it out: `select` names the ones to run (default: all), and
# `sweep` crosses the selected variants with values of a run setting. `grid_config` applies both;
# everything that enumerates the grid (the workflow, the aggregate) goes through it.

# setting -> tag in the generated variant's name: bn x batch_size 16 -> "bn_bs16"
SWEEP_TAGS = {"batch_size": "bs", "dropout_rate": "p"}


def model_depth(model: str) -> int | None:
    """Layer count of a ResNet of the 6n+2 family from its name (resnet32 -> 32), else None."""
    found = re.fullmatch(r"resnet(\d+)", model)
    return int(found[1]) if found else None


def swept_variants(name: str, spec: dict, sweep: dict) -> dict[str, dict]:
    """One variant per combination of swept values; a variant without dropout is not swept over
    the dropout rate (its runs would all be the same). Each keeps its `family` (the base name)."""
    axes = [s for s in sweep if not (s == "dropout_rate" and not spec["dropout"])]
    out = {}
    for values in itertools.product(*(sweep[s] for s in axes)):
        tags = [f"{SWEEP_TAGS[s]}{v:g}" for s, v in zip(axes, values, strict=True)]
        out["_".join([name, *tags])] = {
            **spec,
            "family": spec.get("family", name),
            **dict(zip(axes, values, strict=True)),
        }
    return out


def grid_config(config: dict) -> dict:
    """The config as it is run: the selected models, the selected variants crossed with the
    sweep, and the (dataset, model) cells as `select.cells`. Applying it twice changes nothing."""
    select = config.get("select") or {}
    sweep = config.get("sweep") or {}
    models = {m: config["models"][m] for m in select.get("models") or config["models"]}
    variants: dict[str, dict] = {}
    for name in select.get("variants") or config["variants"]:
        for vname, spec in swept_variants(name, config["variants"][name], sweep).items():
            if vname in variants:
                raise ConfigError(
                    f"config key 'sweep': the generated variant '{vname}' is also defined in "
                    "'variants'; rename that variant or leave it out of select.variants"
                )
            variants[vname] = spec
    cells = select.get("cells") or [f"{d}/{m}" for d in config["datasets"] for m in models]
    selected = {"models": models, "variants": variants, "select": {"cells": list(cells)}}
    return {**config, **selected, "sweep": {}}


def grid_cells(config: dict) -> list[tuple[str, str]]:
    """The (dataset, model) pairs that are run."""
    return [tuple(c.split("/")) for c in grid_config(config)["select"]["cells"]]


def _check_selection(config: dict) -> None:
    select = config.get("select") or {}
    for key, defined in (("models", config["models"]), ("variants", config["variants"])):
        unknown = [name for name in select.get(key, []) if name not in defined]
        if unknown:
            raise ConfigError(
                f"config key 'select.{key}': {unknown[0]!r} is not defined in '{key}'"
                f"{did_you_mean(unknown[0], defined)}; "
                f"allowed: {', '.join(defined)}"
            )
    models = select.get("models") or list(config["models"])
    allowed = [f"{d}/{m}" for d in config["datasets"] for m in models]
    bad = [c for c in select.get("cells", []) if c not in allowed]
    if bad:
        raise ConfigError(
            f"config key 'select.cells': {bad[0]!r} is not a selected dataset/model; "
            f"allowed: {', '.join(allowed)}"
        )
    sweep = config.get("sweep") or {}
    variants = select.get("variants") or list(config["variants"])
    if "dropout_rate" in sweep and not any(config["variants"][v]["dropout"] for v in variants):
        raise ConfigError(
            "config key 'sweep.dropout_rate': no selected variant has dropout: true; "
            "select one (e.g. select.variants: [dropout, bn_dropout])"
        )


def _check_study(config: dict, grid: dict) -> None:
    study = config.get("study")
    if not study:
        if len(grid_cells(grid)) != len(config["datasets"]) * len(grid["models"]):
            raise ConfigError(
                "config key 'select.cells': a subset of dataset/model cells needs a 'study' "
                "section (the paper's tables and figures are per full dataset x model grid)"
            )
        return
    axis = study["axis"]
    if axis == "depth":
        shallow = [m for m in grid["models"] if model_depth(m) is None]
        if shallow or len(grid["models"]) < 2:
            raise ConfigError(
                f"config key 'study.axis': depth needs two or more ResNets of the 6n+2 family in "
                f"select.models, got {list(grid['models'])}; allowed: resnet20, resnet32, "
                "resnet44, resnet56"
            )
    elif axis not in (config.get("sweep") or {}):
        raise ConfigError(
            f"config key 'study.axis': {axis!r} is not swept; add sweep.{axis}: [values]"
        )
    families = {spec["family"] for spec in grid["variants"].values()}
    # A pin (`bn@16`, minus_at) off the axis would only show after training, as a missing group.
    values = [model_depth(m) for m in grid["models"]] if axis == "depth" else config["sweep"][axis]
    swept = f"{axis} on the sweep: {', '.join(f'{v:g}' for v in values)}"
    for i, effect in enumerate(study["effects"]):
        for side in ("plus", "minus"):
            unknown = [v for v in effect[side] if not _is_entry(v, families)]
            if unknown:
                raise ConfigError(
                    f"config key 'study.effects.{i}.{side}': {unknown[0]!r} is not a selected "
                    f"variant (or variant@axis value); allowed: {', '.join(sorted(families))}"
                )
            off = [v for v in effect[side] if "@" in v and not _on(v.partition("@")[2], values)]
            if off:
                raise ConfigError(
                    f"config key 'study.effects.{i}.{side}': {off[0]!r} pins a value that is not "
                    f"on the axis; allowed: {swept}"
                )
        if effect.get("minus_at") is not None and not _on(effect["minus_at"], values):
            raise ConfigError(
                f"config key 'study.effects.{i}.minus_at': {effect['minus_at']!r} is not on the "
                f"axis; allowed: {swept}"
            )


def _on(value, values) -> bool:
    return any(math.isclose(float(value), float(v)) for v in values)


def _is_entry(entry: str, families: set) -> bool:
    """`family` or `family@value` (the family taken at that axis value; normdrop.study)."""
    name, at, value = entry.partition("@")
    return name in families and (not at or re.fullmatch(r"-?[0-9.]+(e-?[0-9]+)?", value))


def input_shape(config: dict, dataset: str) -> tuple[int, int, int]:
    """(C, H, W) of a dataset's images: fixed for the real ones, from data.synthetic else."""
    shape = DATASETS[dataset].shape
    if shape is None:
        spec = config["data"]["synthetic"]
        shape = (spec["channels"], spec["size"], spec["size"])
    return shape


def _check_models(config: dict, grid: dict) -> None:
    """Each selected variant's norm is defined for each model, and each model reads its data."""
    for dataset, model in grid_cells(grid):
        for name, spec in grid["variants"].items():
            if spec["norm"] not in MODEL_NORMS[model]:
                key = f"variants.{spec.get('family', name)}.norm"  # the name the user wrote
                raise ConfigError(
                    f"config key '{key}': {spec['norm']!r} is not defined for {model}; "
                    f"allowed per model: {allowed_norms_text()}"
                )
        try:
            check_input(model, input_shape(config, dataset))
        except ValueError as err:
            key = "data.synthetic.size" if dataset == "synthetic" else "datasets"
            raise ConfigError(f"config key '{key}': {dataset}/{model}: {err}") from None


# The settings members may differ in: everything else (architecture, data, schedule) is shared.
MEMBER_KEYS = ("seed", "lr")


def fusion_refusal(cfgs: list[RunConfig]) -> str | None:
    """Why these runs cannot train fused (normdrop.fusion), in one line, or None. Here, without
    torch, so that planning refuses a fused grid's cell before any job (check_grid)."""
    first = cfgs[0].to_dict()
    for cfg in cfgs[1:]:
        other = cfg.to_dict()
        differ = sorted(k for k in first if k not in MEMBER_KEYS and first[k] != other[k])
        if differ:
            return f"members differ in {', '.join(differ)}: only {' and '.join(MEMBER_KEYS)} may"
    cfg = cfgs[0]
    if cfg.model == "lstm" and cfg.norm == "none":
        return "cannot fuse lstm with norm none (nn.LSTM has no vmap batching rule in torch)"
    if cfg.model == "vit" and cfg.norm in ("none", "batch"):
        return (
            f"cannot fuse vit with norm {cfg.norm}: under vmap its gradients differ from the "
            "unfused run's by an ulp (position embedding, attention) and drift past 1e-5"
        )
    if cfg.compile:
        return "cannot fuse with compile on (the vmapped step is not compiled); use --no-compile"
    return None


def check_grid(config: dict) -> None:
    """The cross-field rules of the grid: `select` names what is defined, the study's axis is
    swept (or spans ResNet depths), each variant's norm is defined for each model, each model
    reads its dataset, and every cell makes a valid RunConfig. A ConfigError names the key."""
    _check_selection(config)
    grid = grid_config(config)
    _check_study(config, grid)
    _check_models(config, grid)
    # Every cell of the grid must make a valid RunConfig: catches what the schema cannot.
    fused = [kind for kind, on in config.get("fuse", {}).items() if on]
    for dataset, model in grid_cells(grid):
        for variant in grid["variants"]:
            cfg = run_config(grid, dataset, model, variant, config["seeds"][0])
            refusal = fusion_refusal([cfg]) if fused else None
            if refusal:  # before any job, not when the cell's fused job starts
                raise ConfigError(
                    f"config key 'fuse.{fused[0]}': {dataset}/{model}/{variant}: {refusal}; set "
                    f"fuse.{fused[0]} false, or leave the cell out with `select`"
                )


__all__ = [
    "SWEEP_TAGS",
    "check_grid",
    "fusion_refusal",
    "grid_cells",
    "grid_config",
    "input_shape",
    "model_depth",
    "swept_variants",
]
