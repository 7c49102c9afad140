"""The workflow's config file: config.yaml with each --configfile merged over it (`load_config`),
the --config overrides typed by the schema (`coerce_workflow_config`), and the checks
(`validate_workflow_config`): the JSON schema in `workflow/schemas/` plus the cross-field rules a
schema cannot express, the grid's in `normdrop.grid.check_grid`. Every message is one line that
names the key and what is allowed.
"""

from __future__ import annotations

import contextlib
import copy
import re
import sys
from pathlib import Path

from normdrop.config import ConfigError, did_you_mean
from normdrop.grid import check_grid

SCHEMA = Path(__file__).resolve().parents[2] / "workflow" / "schemas" / "config.schema.yaml"


def _schema(schema_path: Path = SCHEMA) -> dict:
    import yaml

    return yaml.safe_load(Path(schema_path).read_text())


def _schema_error(err) -> ConfigError:
    """One line from a jsonschema error: the user's key, what is wrong, what is allowed."""
    path = [str(p) for p in err.absolute_path]
    message = err.message
    if "propertyNames" in err.absolute_schema_path:  # a key of the mapping is wrong: name it
        path.append(str(err.instance))
    if err.validator == "enum":
        allowed = [str(a) for a in err.validator_value]
        message = f"{err.instance!r} is not allowed{did_you_mean(err.instance, allowed)}"
        message += f"; allowed: {', '.join(allowed)}"
    elif err.validator == "additionalProperties":
        allowed = list(err.schema.get("properties", {}))
        unknown = [k for k in err.instance if k not in allowed][0]
        path.append(unknown)  # name the user's key, not its parent
        message = f"unknown key{did_you_mean(unknown, allowed)}"
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
    for key in ("results_dir", "resources_dir"):  # Snakemake reads {...} in a path as a wildcard
        if set(config[key]) & set("{}"):
            raise ConfigError(
                f"config key '{key}': {config[key]!r} holds a brace, which Snakemake would read "
                "as a wildcard; allowed: a folder name without '{' or '}'"
            )
    if config["data"]["augment"] != "none" and "mnist" in config["datasets"]:
        raise ConfigError("config key 'data.augment': crop_flip is for CIFAR-like data, not mnist")
    check_grid(config)
    return config


def load_config(configfiles: list[Path], overrides: dict | None = None) -> dict:
    """The repository's config.yaml with each --configfile merged over it and the --config
    overrides (KEY=VALUE strings, dotted keys allowed) over those, as Snakemake does, validated:
    the workflow's config for tools that read results without Snakemake."""
    import yaml

    config = {}
    for path in [SCHEMA.parents[2] / "config.yaml", *configfiles]:
        try:
            with open(path) as f:
                loaded = yaml.safe_load(f) or {}
        except OSError as err:
            raise ConfigError(f"config file {path}: {err.strerror or err}") from None
        except yaml.YAMLError as err:  # the file, line and column, on one line
            mark = getattr(err, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            what = getattr(err, "problem", None) or str(err).splitlines()[0]
            raise ConfigError(f"config file {path}: not valid YAML{where}: {what}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {path}: not a mapping of keys to values")
        config = deep_merge(config, loaded)
    config = deep_merge(config, overrides or {})
    return validate_workflow_config(coerce_workflow_config(config))


def parse_overrides(items: list[str]) -> dict:
    """--config KEY=VALUE ... as a dict of strings (typed later by the schema, as the Snakefile
    types Snakemake's); an item without '=' is a ConfigError."""
    bad = [i for i in items if "=" not in i]
    if bad:
        raise ConfigError(f"--config {bad[0]!r}: give KEY=VALUE (e.g. seeds=[42])")
    return dict(i.split("=", 1) for i in items)


def deep_merge(base: dict, override: dict) -> dict:
    """Snakemake's merge of a --configfile into the config: dicts recursively, the rest replaced."""
    out = copy.deepcopy(base)
    for k, v in override.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


# --resources names: the rules' own (gpu) and Snakemake's standard ones.
RESOURCES = ("gpu", "mem_mb", "mem_mib", "mem", "disk_mb", "disk_mib", "disk", "runtime", "tmpdir")


def check_resources(items: list[str]) -> None:
    """--resources NAME=N ...: a name no rule asks for would be accepted silently by Snakemake
    (`gpus=4` for `gpu=4` then limits nothing); a ConfigError naming it instead."""
    for item in items:
        name, _, value = item.partition("=")
        if name not in RESOURCES:
            raise ConfigError(
                f"--resources {item!r}: no rule uses {name!r}{did_you_mean(name, RESOURCES)}; "
                f"allowed: {', '.join(RESOURCES)}"
            )
        if name == "gpu" and not value.isdigit():
            raise ConfigError(f"--resources {item!r}: give gpu=N, a whole number")


def main(argv=None) -> int:
    """`python -m normdrop.workflow_config [snakemake arguments]`: what Snakemake reads before
    the Snakefile can check it (config files, --config values, --resources), checked first with
    one line and exit status 2 each; prints the results folder. dev.sh runs it before Snakemake."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m normdrop.workflow_config", allow_abbrev=False)
    # As Snakemake reads them: a later --configfile replaces an earlier one's list.
    p.add_argument("--configfile", "--configfiles", nargs="+", type=Path, default=[])
    p.add_argument("--config", "-C", nargs="+", default=[])
    p.add_argument("--resources", "--res", nargs="+", default=[])
    p.add_argument("--directory", "-d", type=Path, default=Path("."))
    args, _ = p.parse_known_args(argv)
    try:
        check_resources(args.resources)
        config = load_config(args.configfile, parse_overrides(args.config))
    except ConfigError as err:
        print(f"invalid config: {err}", file=sys.stderr)
        return 2
    print(args.directory / config["results_dir"])
    return 0


__all__ = [
    "SCHEMA",
    "check_workflow_config",
    "coerce_workflow_config",
    "deep_merge",
    "expand_dotted_keys",
    "load_config",
    "parse_overrides",
    "validate_workflow_config",
]


if __name__ == "__main__":
    raise SystemExit(main())
