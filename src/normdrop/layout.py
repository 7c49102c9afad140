"""Where every file of the grid lives, and the one walk over the grid's runs.

Under the results folder (config key `results_dir`):

    runs/{dataset}/{model}/{variant}/seed{seed}/        a training run: steps.parquet,
    lr_search/{dataset}/{model}/{variant}/lr{lr}/         epochs.parquet, meta.json (last)
    lr_search/{dataset}/{model}/{variant}/selected.json   the search's choice
    scratch/runs/.../seed{seed}.ckpt, scratch/lr_search/.../lr{lr}.ckpt
                                   checkpoints: not Snakemake outputs, so never deleted by it
    scratch/gpu-locks/             GPU lease lock files
    logs/<rule>/...                one log per job: logs/train/.../seed{seed}.log, ...
    tensorboard/runs/..., tensorboard/lr_search/...   event files, mirroring the run folders
    tensorboard/mean/{dataset}/{model}/{variant}/{mean,mean+sd,mean-sd}/   seed-averaged curves
    summary/, tables/, figures/    the aggregate and what is drawn from it

and under `resources_dir`: raw/{source}/ (with a .downloaded flag; the source is the dataset, or
for `synthetic` the dataset plus a hash of its spec) and prepared/{dataset}-{key}.pt with its
SHA-256 in prepared/{dataset}-{key}.json, the key a hash of every setting that shapes the file
(normdrop.catalog.prepared_key), so that different settings never share, nor overwrite, a file.

This module alone spells these paths. The templates hold Snakemake's wildcards ({dataset}, ...):
a function called without keys returns the template under a root, for a rule's input and output;
with keys it fills them, for Python. The rules (workflow/*.smk), the aggregate and the status
command all go through it, and `iter_runs` is the loop over the grid that they share.
"""

from __future__ import annotations

import re
from base64 import urlsafe_b64encode
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from normdrop.catalog import prepared_key, raw_source
from normdrop.config import RunConfig, run_config, search_config
from normdrop.grid import grid_cells, grid_config

# A run's name: its path below its kind's folder (and below scratch/ and logs/).
CELL = "{dataset}/{model}/{variant}"
RUN = CELL + "/seed{seed}"
CANDIDATE = CELL + "/lr{lr}"
# kind -> (name template, folder under results, folder under logs/ = the rule's name)
KINDS = {"train": (RUN, "runs", "train"), "lr_search": (CANDIDATE, "lr_search", "lr_search")}
RUN_FILES = ("steps.parquet", "epochs.parquet", "meta.json")  # meta.json written last
SCRATCH = "scratch"
LOGS = "logs"
SELECTED = "selected.json"
TENSORBOARD = "tensorboard"
SUMMARY, TABLES, FIGURES = "summary", "tables", "figures"
# A norm's short name in variant names (config.yaml's bn, studies' gn, ln); others: the norm.
NORM_TAGS = {"batch": "bn", "group": "gn", "layer": "ln"}


class _Keep(dict):
    """format_map's mapping that leaves a wildcard without a value in place: `{lr}` stays."""

    def __missing__(self, key):
        return "{" + key + "}"


def lr_tag(lr: float | str) -> str:
    """A learning rate as its folder spells it (0.003 -> 0.003, 1e-05 -> 1e-05)."""
    return lr if isinstance(lr, str) else f"{lr:g}"


def fill(template: str, keys: dict) -> str:
    """`template` with the wildcards that `keys` gives filled in, the others kept."""
    keys = {k: lr_tag(v) if k == "lr" else v for k, v in keys.items()}
    return template.format_map(_Keep(keys))


def _under(root, *parts) -> str:
    """`parts` joined below `root`; relative to the results folder when `root` is None."""
    return "/".join(parts if root is None else [str(root), *parts])


# --------------------------------------------------------------------------- results folder
def run_name(kind: str, **keys) -> str:
    """'synthetic/mlp/bn/seed42' (train) or 'synthetic/mlp/bn/lr0.003' (lr_search)."""
    return fill(KINDS[kind][0], keys)


def run_key(kind: str, **keys) -> str:
    """The last part of a run's name, telling one cell's runs apart: 'seed42', 'lr0.003'."""
    return fill(KINDS[kind][0].rsplit("/", 1)[-1], keys)


def run_dir(results, kind: str, **keys) -> str:
    template, folder, _ = KINDS[kind]
    return _under(results, folder, fill(template, keys))


def run_files(results, kind: str, **keys) -> dict[str, str]:
    """The files every run writes, by file name: steps.parquet, epochs.parquet, meta.json."""
    folder = run_dir(results, kind, **keys)
    return {name: _under(folder, name) for name in RUN_FILES}


def checkpoint(results, kind: str, **keys) -> str:
    template, folder, _ = KINDS[kind]
    return _under(results, SCRATCH, folder, fill(template, keys) + ".ckpt")


def checkpoint_dir(results, kind: str, **keys) -> str:
    """The folder of one cell's checkpoints (select_lr trains extra candidates into it)."""
    return checkpoint(results, kind, **keys).rsplit("/", 1)[0]


def fused_checkpoint(results, kind: str, **keys) -> str:
    """A fused job's one checkpoint (config `fuse`: a cell's seeds or search candidates trained
    as one job), beside its members' unfused ones in scratch/."""
    return _under(checkpoint_dir(results, kind, **keys), "fused.ckpt")


def fused_log(results, kind: str, **keys) -> str:
    """A fused job's log: logs/train_fused/<cell>.log or logs/lr_search_fused/<cell>.log."""
    return log(results, KINDS[kind][2] + "_fused", CELL, **keys)


def tensorboard_dir(results, kind: str, **keys) -> str:
    """A run's TensorBoard event files: tensorboard/ mirrors the run folders."""
    template, folder, _ = KINDS[kind]
    return _under(results, TENSORBOARD, folder, fill(template, keys))


def tensorboard_cell_dir(results, kind: str, **keys) -> str:
    """The folder of one cell's TensorBoard runs (select_lr trains extra candidates into it)."""
    return tensorboard_dir(results, kind, **keys).rsplit("/", 1)[0]


def tensorboard_mean_dir(results, stat: str, **keys) -> str:
    """One cell's seed-averaged curves as a TensorBoard run of its own: tensorboard/mean/<cell>/
    {mean, mean+sd, mean-sd} (normdrop.tracking.write_mean_curves)."""
    return _under(results, TENSORBOARD, "mean", fill(CELL, keys), stat)


def log(results, rule: str, name: str = "", **keys) -> str:
    """A job's log: logs/<rule>/<name>.log, or logs/<rule>.log for a rule run once."""
    if not name:
        return _under(results, LOGS, f"{rule}.log")
    return _under(results, LOGS, rule, fill(name, keys) + ".log")


def run_log(results, kind: str, **keys) -> str:
    template, _, rule = KINDS[kind]
    return log(results, rule, template, **keys)


def selected(results, **keys) -> str:
    """The learning rate chosen for a (dataset, model, variant) cell."""
    return _under(results, KINDS["lr_search"][1], fill(CELL, keys), SELECTED)


def selected_files(results) -> list[tuple[str, Path]]:
    """Every selected.json under `results`, with its cell's name ('synthetic/mlp/bn')."""
    results = Path(results)
    glob, regex = _pattern(selected(None))
    found = []
    for path in sorted(results.glob(glob)):
        if m := regex.match(path.relative_to(results).as_posix()):
            found.append((fill(CELL, m.groupdict()), path))
    return found


def gpu_locks(results) -> str:
    return _under(results, SCRATCH, "gpu-locks")


def summary_dir(results) -> str:
    return _under(results, SUMMARY)


def tables_dir(results) -> str:
    return _under(results, TABLES)


def figures_dir(results) -> str:
    return _under(results, FIGURES)


# --------------------------------------------------------------------------- resources folder
def raw_dir(resources, source: str = "{source}") -> str:
    """A dataset's raw files: raw/mnist, raw/synthetic-<spec hash> (catalog.raw_source)."""
    return _under(resources, "raw", source)


def downloaded(resources, source: str = "{source}") -> str:
    """The flag that download leaves once the raw files are complete."""
    return _under(raw_dir(resources, source), ".downloaded")


def prepared(resources, key: str = "{prepared}") -> str:
    """A prepared file, named by its content key: prepared/synthetic-1a2b3c4d5e.pt."""
    return _under(resources, "prepared", f"{key}.pt")


def prepared_digest(resources, key: str = "{prepared}") -> str:
    """The prepared file's SHA-256 and size, written by prepare beside it (data.digest_path)."""
    return _under(resources, "prepared", f"{key}.json")


def data_files(config: dict, dataset: str) -> dict[str, str]:
    """The raw flag, prepared file and its digest that `config` gives `dataset`."""
    data = config["data"]
    synthetic = data.get("synthetic")
    key = prepared_key(dataset, data["val_fraction"], data["split_seed"], synthetic)
    resources = config["resources_dir"]
    return {
        "downloaded": downloaded(resources, raw_source(dataset, synthetic)),
        "prepared": prepared(resources, key),
        "digest": prepared_digest(resources, key),
    }


def snakemake_incomplete(workdir, output: str) -> bool:
    """Whether Snakemake marks `output` (the path as the rule names it) incomplete: it marks each
    output of a job when the job starts and unmarks it when the job ends, in
    <workdir>/.snakemake/incomplete/<urlsafe base64 of the path, split at NAME_MAX>, and reruns a
    marked job (one killed after it wrote its outputs) on the next run."""
    b64 = urlsafe_b64encode(output.encode()).decode()
    parts = [b64[i : i + 254] for i in range(0, len(b64), 254)]
    marker = Path(workdir, ".snakemake", "incomplete", *["@" + p for p in parts[:-1]], parts[-1])
    return marker.exists()


# --------------------------------------------------------------------------- the grid's runs
def _key_wildcard(kind: str) -> str:
    """The wildcard that tells a kind's runs of one cell apart: seed (train) or lr (lr_search)."""
    return re.findall(r"\{(\w+)\}", KINDS[kind][0])[-1]


@dataclass(frozen=True)
class RunSpec:
    """One training run or learning-rate candidate: where it sits in the grid and, when it comes
    from a config, its settings."""

    kind: str  # "train" or "lr_search"
    dataset: str
    model: str
    variant: str
    tag: str  # the seed ("42") or the learning rate as its folder spells it ("0.003")
    settings: RunConfig | None = None

    @property
    def wildcards(self) -> dict[str, str]:
        cell = {"dataset": self.dataset, "model": self.model, "variant": self.variant}
        return {**cell, _key_wildcard(self.kind): self.tag}

    @property
    def name(self) -> str:
        return run_name(self.kind, **self.wildcards)

    @property
    def key(self) -> str:
        """The last part of the name: 'seed42' or 'lr0.003'."""
        return run_key(self.kind, **self.wildcards)

    def paths(self, results) -> dict[str, Path]:
        """meta, epochs, steps, checkpoint and log, under `results`; and the checkpoint and log
        of the fused job it is a member of when its cell is fused."""
        files = run_files(results, self.kind, **self.wildcards)
        return {
            "meta": Path(files["meta.json"]),
            "epochs": Path(files["epochs.parquet"]),
            "steps": Path(files["steps.parquet"]),
            "checkpoint": Path(checkpoint(results, self.kind, **self.wildcards)),
            "log": Path(run_log(results, self.kind, **self.wildcards)),
            "fused_checkpoint": Path(fused_checkpoint(results, self.kind, **self.wildcards)),
            "fused_log": Path(fused_log(results, self.kind, **self.wildcards)),
        }


def iter_runs(config: dict) -> Iterator[RunSpec]:
    """Every run of the config's grid (`select` applied, `sweep` expanded: grid.grid_config):
    per (dataset, model) cell and variant, its learning-rate candidates, then its seeds."""
    config = grid_config(config)
    for dataset, model in grid_cells(config):
        for variant in config["variants"]:
            for lr in config["lr_search"]["candidates"]:
                cfg = search_config(config, dataset, model, variant, lr)
                yield RunSpec("lr_search", dataset, model, variant, lr_tag(lr), cfg)
            for seed in config["seeds"]:
                cfg = run_config(config, dataset, model, variant, seed)
                yield RunSpec("train", dataset, model, variant, str(seed), cfg)


def _pattern(template: str) -> tuple[str, re.Pattern]:
    """A template as a glob (each wildcard one path part) and as a regex naming the wildcards."""
    pieces = re.split(r"\{(\w+)\}", template)  # literal, name, literal, name, ...
    glob = "".join("*" if i % 2 else p for i, p in enumerate(pieces))
    regex = "".join(f"(?P<{p}>[^/]+)" if i % 2 else re.escape(p) for i, p in enumerate(pieces))
    return glob, re.compile(regex + "$")


def discover(results) -> list[RunSpec]:
    """Without a config: every run that has a meta.json, a checkpoint or a log under `results`."""
    results = Path(results)
    found = set()
    for kind in KINDS:
        which = _key_wildcard(kind)
        files = (run_files(None, kind)["meta.json"], checkpoint(None, kind), run_log(None, kind))
        for glob, regex in map(_pattern, files):
            for path in results.glob(glob):
                if m := regex.match(path.relative_to(results).as_posix()):
                    cell = m.group("dataset", "model", "variant")
                    found.add(RunSpec(kind, *cell, m[which]))
    return sorted(found, key=lambda r: (r.kind, r.dataset, r.model, r.variant, r.key))


def variant_name(norm: str, dropout_rate: float) -> str:
    """The grid's name for a (norm, dropout rate) pair: none, bn, dropout, bn_dropout, gn, ...;
    what a run trained by hand without --variant records, so that it reads as the grid's would."""
    parts = [] if norm == "none" else [NORM_TAGS.get(norm, norm)]
    return "_".join(parts + (["dropout"] if dropout_rate > 0 else [])) or "none"
