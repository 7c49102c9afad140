"""Settings: one frozen dataclass per training run, and the workflow's config file.

`RunConfig` holds everything that determines a run. It refuses unknown keys, wrong types and
out-of-range values with a `ConfigError` whose one-line message names the setting and what is
allowed. `validate_workflow_config` checks `config.yaml` (the grid) against the JSON schema in
`workflow/schemas/` plus the cross-field rules a schema cannot express, and `run_config` turns one
cell of the grid into a `RunConfig`.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import difflib
import hashlib
import itertools
import json
import re
import sys
import types
import typing
from dataclasses import dataclass
from pathlib import Path

from normdrop.data import DATASETS
from normdrop.models import INITS, MODEL_NORMS, MODELS, NORMS, allowed_norms_text, check_input

AUGMENTS = ("none", "crop_flip")
PRECISIONS = ("auto", "fp32", "bf16")
MEMORY_FORMATS = ("auto", "channels_last", "contiguous")
CUDA_GRAPHS = ("auto", "on", "off")
DATASET_NAMES = tuple(DATASETS)

# Settings that change how fast a run goes or where it runs, not what it computes (up to float
# rounding): they are left out of the settings hash that decides whether two runs are the same.
# `deterministic` is one of them: it picks other (deterministic) kernels, same math.
EXECUTION_FIELDS = (
    "precision",
    "memory_format",
    "compile",
    "cuda_graphs",
    "deterministic",
    "eval_batch_size",
    "checkpoint_every_s",
)


class ConfigError(ValueError):
    """A setting is unknown, of the wrong type or out of range; the message says which."""


def _setting(default=dataclasses.MISSING, *, help: str, allowed: tuple | str = ""):
    """A RunConfig field with its one-sentence `help` and its `allowed` values (a tuple of
    choices, or a range such as '> 0'): the one source of the CLI's --help and of the messages
    that refuse a value."""
    return dataclasses.field(default=default, metadata={"help": help, "allowed": allowed})


def allowed_text(allowed: tuple | str) -> str:
    """'a, b, c' for choices; a range as written ('> 0', '[0, 1)')."""
    return ", ".join(map(str, allowed)) if isinstance(allowed, tuple) else allowed


@dataclass(frozen=True)
class RunConfig:
    dataset: str = _setting(help="dataset the --data file holds", allowed=DATASET_NAMES)
    model: str = _setting(help="network architecture", allowed=tuple(MODELS))
    width: int = _setting(
        help="hidden units per layer (mlp, lstm), channels of the first stage (cnn, resnet*) "
        "or token dim (vit)",
        allowed=">= 1",
    )
    init: str = _setting(
        "stable",
        help="weight initialization: stable (every variant starts from a stable network, "
        "docs/protocol.md) or he (plain He init)",
        allowed=tuple(INITS),
    )
    variant: str = _setting(
        "custom",
        help="label of the run in paths and tables (none, bn, dropout, bn_dropout in the "
        "workflow); --norm and --dropout decide what is trained",
        allowed="any name",
    )
    norm: str = _setting(
        "none",
        help="normalization layer after each hidden layer (which ones each model takes: "
        "models.MODEL_NORMS)",
        allowed=tuple(NORMS),
    )
    dropout: float = _setting(0.0, help="dropout rate; 0 turns dropout off", allowed="[0, 1)")
    seed: int = _setting(
        42, help="seed of the initialization, dropout masks, data order and augmentation",
        allowed=">= 0",
    )  # fmt: skip
    lr: float = _setting(1e-3, help="Adam's initial learning rate", allowed="> 0")
    epochs: int = _setting(100, help="training epochs", allowed=">= 1")
    batch_size: int = _setting(
        128, help="mini-batch size (an epoch's last, smaller batch is kept)", allowed=">= 1"
    )
    milestones: tuple[int, ...] = _setting(
        (50, 75),
        help="epochs after which the learning rate is multiplied by --gamma (none: constant)",
        allowed="strictly increasing epochs in [1, epochs-1]",
    )
    warmup_epochs: int = _setting(
        0,
        help="linear learning-rate warm-up over these first epochs, then the milestones "
        "(0: none, the paper's; docs/protocol.md)",
        allowed="[0, epochs - 1]",
    )
    gamma: float = _setting(
        0.1, help="factor applied to the learning rate at each milestone", allowed="(0, 1]"
    )
    betas: tuple[float, float] = _setting(
        (0.9, 0.999), help="Adam's two betas", allowed="two values in [0, 1)"
    )
    eps: float = _setting(1e-8, help="Adam's epsilon", allowed="> 0")
    weight_decay: float = _setting(0.0, help="Adam's L2 weight decay", allowed=">= 0")
    augment: str = _setting(
        "none",
        help="training-data augmentation; crop_flip: random crop after 4-pixel zero padding, "
        "then a random horizontal flip (CIFAR-like data)",
        allowed=AUGMENTS,
    )
    precision: str = _setting(
        "auto",
        help="arithmetic of the forward pass; auto: bf16 autocast on GPUs with bf16 units "
        "(sm >= 80), else fp32",
        allowed=PRECISIONS,
    )
    memory_format: str = _setting(
        "auto",
        help="layout of image tensors; auto: channels_last on CUDA, contiguous on CPU",
        allowed=MEMORY_FORMATS,
    )
    compile: bool = _setting(False, help="torch.compile the model", allowed=(True, False))
    cuda_graphs: str = _setting(
        "auto",
        help="capture the training step as one CUDA graph; auto: off until measured on a GPU "
        "(README, 'Speed'); on: CUDA only",
        allowed=CUDA_GRAPHS,
    )
    deterministic: bool = _setting(
        False,
        help="deterministic kernels (cuDNN, cuBLAS): bitwise-equal reruns, slower on a GPU",
        allowed=(True, False),
    )
    eval_batch_size: int = _setting(
        1024, help="batch size of the evaluation passes (speed only)", allowed=">= 1"
    )
    checkpoint_every_s: float = _setting(
        300.0,
        help="also checkpoint mid-epoch when this many seconds have passed since the last save",
        allowed=">= 0",
    )

    def __post_init__(self):
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, list):  # from JSON/YAML
                value = tuple(value)
                object.__setattr__(self, f.name, value)
            if not _is_instance(value, hints[f.name]):
                raise ConfigError(
                    f"setting '{f.name}' must be of type {_type_name(hints[f.name])}, got {value!r}"
                )
        self._check_values()

    def _check_values(self):
        allowed = {f.name: f.metadata["allowed"] for f in dataclasses.fields(self)}

        def need(ok, key):
            if not ok:
                text = allowed_text(allowed[key])
                if isinstance(allowed[key], tuple):
                    text = f"allowed: {text}"
                else:  # 'must be > 0', 'must lie in [0, 1)'
                    text = ("must lie in " if text[0] in "[(" else "must be ") + text
                raise ConfigError(f"setting '{key}' = {getattr(self, key)!r}: {text}")

        for key, choices in allowed.items():
            if isinstance(choices, tuple):
                need(getattr(self, key) in choices, key)
        # The ranges below are the `allowed` texts of the fields above, in code.
        need(0 <= self.dropout < 1, "dropout")
        need(self.width >= 1, "width")
        need(self.seed >= 0, "seed")
        need(self.lr > 0, "lr")
        need(self.epochs >= 1, "epochs")
        need(0 <= self.warmup_epochs < self.epochs, "warmup_epochs")
        if self.model in MODEL_NORMS and self.norm not in MODEL_NORMS[self.model]:
            raise ConfigError(
                f"setting 'norm' = {self.norm!r}: not defined for {self.model}; "
                f"allowed: {', '.join(MODEL_NORMS[self.model])}"
            )
        need(self.batch_size >= 1, "batch_size")
        need(self.eval_batch_size >= 1, "eval_batch_size")
        need(0 < self.gamma <= 1, "gamma")
        need(self.eps > 0, "eps")
        need(self.weight_decay >= 0, "weight_decay")
        need(self.checkpoint_every_s >= 0, "checkpoint_every_s")
        need(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "betas")
        if not (
            all(1 <= m < self.epochs for m in self.milestones)
            and list(self.milestones) == sorted(set(self.milestones))
        ):
            raise ConfigError(
                f"setting 'milestones' = {self.milestones!r}: strictly increasing epochs in "
                f"[1, epochs-1] = [1, {self.epochs - 1}] (a milestone at or beyond the last epoch "
                "never takes effect)"
            )

    @classmethod
    def from_dict(cls, d: dict) -> RunConfig:
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(d) - set(names))
        if unknown:
            raise ConfigError(f"unknown setting(s) {unknown}; allowed: {', '.join(names)}")
        missing = [
            f.name
            for f in dataclasses.fields(cls)
            if f.name not in d and f.default is dataclasses.MISSING
        ]
        if missing:
            raise ConfigError(f"missing setting(s): {', '.join(missing)}")
        return cls(**d)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def settings_hash(self) -> str:
        """Hash of what determines the run's numbers (execution-only settings left out)."""
        d = {k: v for k, v in self.to_dict().items() if k not in EXECUTION_FIELDS}
        if d["warmup_epochs"] == 0:  # added later: left out at its default, so that the runs
            del d["warmup_epochs"]  # made before it keep their hash
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def _is_instance(value, hint) -> bool:
    origin = typing.get_origin(hint)
    if origin is tuple:
        args = typing.get_args(hint)
        if not isinstance(value, tuple):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_is_instance(v, args[0]) for v in value)
        return len(args) == len(value) and all(map(_is_instance, value, args))
    if origin in (typing.Union, types.UnionType):
        return any(_is_instance(value, a) for a in typing.get_args(hint))
    if hint is float:  # an int is a fine float (YAML reads 1e-3 as str, 0 as int)
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def _type_name(hint) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


# --------------------------------------------------------------------------- workflow config
SCHEMA = Path(__file__).resolve().parents[2] / "workflow" / "schemas" / "config.schema.yaml"


def _schema(schema_path: Path = SCHEMA) -> dict:
    import yaml

    return yaml.safe_load(Path(schema_path).read_text())


def _did_you_mean(word, allowed) -> str:
    """ " (did you mean 'epochs'?)" for a near miss of one of `allowed` (difflib), else ""."""
    close = difflib.get_close_matches(str(word), [str(a) for a in allowed], n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _schema_error(err) -> ConfigError:
    """One line from a jsonschema error: the user's key, what is wrong, what is allowed."""
    path = [str(p) for p in err.absolute_path]
    message = err.message
    if "propertyNames" in err.absolute_schema_path:  # a key of the mapping is wrong: name it
        path.append(str(err.instance))
    if err.validator == "enum":
        allowed = [str(a) for a in err.validator_value]
        message = f"{err.instance!r} is not allowed{_did_you_mean(err.instance, allowed)}"
        message += f"; allowed: {', '.join(allowed)}"
    elif err.validator == "additionalProperties":
        allowed = list(err.schema.get("properties", {}))
        unknown = [k for k in err.instance if k not in allowed][0]
        path.append(unknown)  # name the user's key, not its parent
        message = f"unknown key{_did_you_mean(unknown, allowed)}"
        message += f"; allowed keys: {', '.join(allowed) or 'none'}"
    return ConfigError(f"config key '{'.'.join(path) or '(top level)'}': {message}")


# --------------------------------------------------------------------------- --config overrides
# Snakemake 9 reads a top-level `--config key=value` as int, float, True/False or else YAML with
# BaseLoader, which keeps every nested scalar a string: `seeds=[1]` arrives as ['1'] and
# `train={epochs: 5}` as {'epochs': '5'}. Its CLI also refuses a dot in a key, so the nested-key
# shorthand is spelled `train__epochs=5` there (`train.epochs` works in a config file).
KEY_DELIMITER = re.compile(r"\.|__")


def expand_dotted_keys(config: dict) -> dict:
    """`{'train.epochs': 5}` or `{'train__epochs': 5}` -> `{'train': {'epochs': 5}}`, merged over
    the rest in order. Only top-level keys are split: no top-level key holds a dot or `__`."""
    out: dict = {}
    # A flat key wins over the nested one whatever their order: Snakemake puts --config entries
    # before the keys that only the Snakefile's config.yaml holds (`tracking`, ...).
    flat_last = sorted(config.items(), key=lambda item: bool(KEY_DELIMITER.search(item[0])))
    for key, value in flat_last:
        head, *rest = KEY_DELIMITER.split(key)
        for part in reversed(rest):
            value = {part: value}
        out = deep_merge(out, {head: value})
    return out


def coerce_workflow_config(config: dict, schema_path: Path = SCHEMA) -> dict:
    """The config with dotted keys expanded and each string read as the type the schema asks
    for (YAML, as in a config file, plus `1e-4` as a number); a ConfigError where it cannot be."""
    return _coerce(expand_dotted_keys(config), _schema(schema_path), [])


def _wanted_types(schema: dict) -> set[str]:
    names = {bool: "boolean", int: "integer", float: "number", str: "string"}
    if "enum" in schema:
        return {names.get(type(v), "string") for v in schema["enum"]}
    kind = schema.get("type", "string")
    return set(kind) if isinstance(kind, list) else {kind}


def _coerce(value, schema, path: list[str]):
    if not isinstance(schema, dict):  # a key the schema does not know: the validator names it
        return value
    if isinstance(value, dict):
        props, extra = schema.get("properties", {}), schema.get("additionalProperties")
        return {k: _coerce(v, props.get(k, extra), [*path, str(k)]) for k, v in value.items()}
    if isinstance(value, list):
        return [_coerce(v, schema.get("items"), [*path, str(i)]) for i, v in enumerate(value)]
    wanted = _wanted_types(schema)
    if not isinstance(value, str) or "string" in wanted and value in schema.get("enum", [value]):
        if type(value) in (int, float) and wanted == {"string"}:
            return str(value)  # `results_dir=2024` arrives as the int 2024
        return value
    import yaml

    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError:
        parsed = value
    if isinstance(parsed, str) and wanted & {"number", "integer"}:
        with contextlib.suppress(ValueError):  # YAML 1.1 reads 1e-4 (no dot) as a string
            parsed = float(value) if "number" in wanted else int(value)
    kinds = {"boolean": bool, "integer": int, "number": int | float, "array": list, "object": dict}
    numeric = {"integer", "number"}  # a bool is an int to Python, not to the schema
    if not any(
        isinstance(parsed, kinds[w]) and not (w in numeric and isinstance(parsed, bool))
        for w in wanted & set(kinds)
    ):
        if "string" in wanted:  # an enum of strings: the validator lists the allowed values
            return value
        expected = " or ".join(sorted(wanted))
        raise ConfigError(f"config key '{'.'.join(path)}': {value!r} is not of type '{expected}'")
    return _coerce(parsed, schema, path)


def check_workflow_config(config: dict) -> None:
    """For the Snakefile: type the --config overrides in place and validate; on a bad config,
    print one line and exit with status 2 (a WorkflowError would add a traceback line)."""
    try:
        coerced = coerce_workflow_config(config)
        validate_workflow_config(coerced)
    except ConfigError as err:
        print(f"invalid config: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    config.clear()  # in place: Snakemake's `config` is the object the rules see
    config.update(coerced)


def validate_workflow_config(config: dict, schema_path: Path = SCHEMA) -> dict:
    """Check the workflow config; raise ConfigError naming the key and the allowed values."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(_schema(schema_path))
    errors = sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        raise _schema_error(jsonschema.exceptions.best_match(errors))

    train = config["train"]
    seeds = config["seeds"]
    if len(set(seeds)) != len(seeds):
        dup = sorted({s for s in seeds if seeds.count(s) > 1})
        raise ConfigError(f"config key 'seeds': duplicate seed(s) {dup}; each seed once")
    if train["lr_milestones"] != sorted(train["lr_milestones"]):
        raise ConfigError(
            f"config key 'train.lr_milestones': {train['lr_milestones']} must be increasing"
        )
    bad = [m for m in train["lr_milestones"] if m >= train["epochs"]]
    if bad:
        raise ConfigError(
            f"config key 'train.lr_milestones': {bad} at or beyond the last epoch "
            f"(train.epochs = {train['epochs']}); allowed: 1 .. {train['epochs'] - 1}"
        )
    warmup, fits = train["warmup_epochs"], min(train["epochs"], config["lr_search"]["epochs"])
    if warmup >= fits:
        raise ConfigError(
            f"config key 'train.warmup_epochs': {warmup} epochs of warm-up do not fit in the run "
            f"(train.epochs = {train['epochs']}, lr_search.epochs = "
            f"{config['lr_search']['epochs']}); allowed: 0 .. {fits - 1}"
        )
    if config["data"]["augment"] != "none" and "mnist" in config["datasets"]:
        raise ConfigError("config key 'data.augment': crop_flip is for CIFAR-like data, not mnist")
    _check_selection(config)
    grid = grid_config(config)
    _check_study(config, grid)
    _check_models(config, grid)
    # Every cell of the grid must make a valid RunConfig: catches what the schema cannot.
    for dataset, model in grid_cells(grid):
        for variant in grid["variants"]:
            run_config(grid, dataset, model, variant, seeds[0])
    return config


# --------------------------------------------------------------------------- selection, sweeps
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
                f"{_did_you_mean(unknown[0], defined)}; "
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
    for i, effect in enumerate(study["effects"]):
        for side in ("plus", "minus"):
            unknown = [v for v in effect[side] if not _is_entry(v, families)]
            if unknown:
                raise ConfigError(
                    f"config key 'study.effects.{i}.{side}': {unknown[0]!r} is not a selected "
                    f"variant (or variant@axis value); allowed: {', '.join(sorted(families))}"
                )


def _is_entry(entry: str, families: set) -> bool:
    """`family` or `family@value` (the family taken at that axis value; normdrop.study)."""
    name, at, value = entry.partition("@")
    return name in families and (not at or re.fullmatch(r"-?[0-9.]+(e-?[0-9]+)?", value))


def input_shape(config: dict, dataset: str) -> tuple[int, int, int]:
    """(C, H, W) of a dataset's images: fixed for the real ones, from data.synthetic else."""
    shape = DATASETS[dataset][3]
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


def load_config(configfiles: list[Path]) -> dict:
    """The repository's config.yaml with each --configfile merged over it, as Snakemake does,
    validated: the workflow's config for tools that read results without Snakemake."""
    import yaml

    config = {}
    for path in [SCHEMA.parents[2] / "config.yaml", *configfiles]:
        try:
            loaded = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as err:
            raise ConfigError(f"config file {path}: {err}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {path}: not a mapping of keys to values")
        config = deep_merge(config, loaded)
    return validate_workflow_config(coerce_workflow_config(config))


def deep_merge(base: dict, override: dict) -> dict:
    """Snakemake's merge of a --configfile into the config: dicts recursively, the rest replaced."""
    out = copy.deepcopy(base)
    for k, v in override.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def run_config(
    config: dict, dataset: str, model: str, variant: str, seed: int, lr: float = 1e-3, **overrides
) -> RunConfig:
    """The RunConfig of one cell of the grid (the lr comes from the search at run time)."""
    m, v, t = config["models"][model], config["variants"][variant], config["train"]
    x = config["execution"]
    settings = dict(
        dataset=dataset,
        model=model,
        width=m["width"],
        init=m.get("init", "stable"),
        variant=variant,
        norm=v["norm"],
        # A variant may override the model's rate (a dropout-rate sweep; rate 0 = off).
        dropout=v.get("dropout_rate", m["dropout_rate"]) if v["dropout"] else 0.0,
        seed=seed,
        lr=lr,
        epochs=t["epochs"],
        batch_size=v.get("batch_size", t["batch_size"]),
        milestones=tuple(t["lr_milestones"]),
        warmup_epochs=t["warmup_epochs"],
        gamma=t["lr_gamma"],
        betas=tuple(t["adam_betas"]),
        eps=t["adam_eps"],
        weight_decay=t["weight_decay"],
        augment=config["data"]["augment"],
        precision=x["precision"],
        memory_format=x["memory_format"],
        compile=x["compile"],
        # YAML 1.1 reads a bare on/off as true/false
        cuda_graphs={True: "on", False: "off"}.get(x["cuda_graphs"], x["cuda_graphs"]),
        deterministic=x["deterministic"],
        eval_batch_size=t["eval_batch_size"],
        checkpoint_every_s=x["checkpoint_every_s"],
    )
    settings.update(overrides)
    try:
        return RunConfig.from_dict(settings)
    except ConfigError as err:
        raise ConfigError(f"{dataset}/{model}/{variant}: {err}") from None


def search_config(config: dict, dataset: str, model: str, variant: str, lr: float) -> RunConfig:
    """A learning-rate candidate: the run's settings, shortened to the search's epochs."""
    epochs = config["lr_search"]["epochs"]
    milestones = tuple(m for m in config["train"]["lr_milestones"] if m < epochs)
    seed = config["lr_search"]["seed"]
    return run_config(
        config, dataset, model, variant, seed, lr=lr, epochs=epochs, milestones=milestones
    )


def to_cli_args(cfg: RunConfig, skip: tuple[str, ...] = ()) -> list[str]:
    """The `python -m normdrop.train` flags that reproduce `cfg`."""
    args = []
    for k, v in cfg.to_dict().items():
        if k in skip:
            continue
        flag = "--" + k.replace("_", "-")
        if isinstance(v, bool):
            args.append(flag if v else "--no-" + k.replace("_", "-"))
        elif isinstance(v, tuple | list):
            args += [flag, *map(str, v)] if v else [flag]
        else:
            args += [flag, str(v)]
    return args


__all__ = [
    "ConfigError",
    "RunConfig",
    "allowed_text",
    "check_workflow_config",
    "coerce_workflow_config",
    "deep_merge",
    "expand_dotted_keys",
    "grid_cells",
    "grid_config",
    "load_config",
    "model_depth",
    "run_config",
    "search_config",
    "swept_variants",
    "to_cli_args",
    "validate_workflow_config",
]
