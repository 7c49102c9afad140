# Helpers shared by the .smk files -- config validation, the grid, paths and per-job arguments.
import json
import os
import shlex
import sys
from argparse import Namespace
from pathlib import Path

from snakemake.settings.types import DeploymentMethod

SRC = str(Path(workflow.basedir) / "src")
sys.path.insert(0, SRC)

# Every path of the results and resources folders: normdrop.layout.
from normdrop import layout  # noqa: E402
from normdrop.config import run_config, search_config, to_cli_args  # noqa: E402
from normdrop.grid import grid_cells, grid_config  # noqa: E402
from normdrop.workflow_config import check_workflow_config  # noqa: E402

# --config values typed by the schema, then checked; a bad config: one line, exit status 2.
check_workflow_config(config)

# The grid as it is run: `select` applied, `sweep` expanded into variants (normdrop.grid).
GRID = grid_config(config)
CELLS = grid_cells(GRID)  # (dataset, model) pairs
STUDY = config.get("study")
RESULTS = config["results_dir"]
RESOURCES = config["resources_dir"]
DATASETS = [d for d in config["datasets"] if any(d == c[0] for c in CELLS)]
MODELS = list(GRID["models"])
VARIANTS = list(GRID["variants"])
EXEC = config["execution"]

# A training job holds one GPU slot unless the config pins it to the CPU.
GPU_PER_JOB = 0 if EXEC["device"] == "cpu" else 1

# Jobs run `python -m normdrop.<module>` from this checkout: src/ goes on PYTHONPATH and, unless
# --use-conda provides python, the interpreter running Snakemake comes first on PATH, so that an
# un-activated virtual environment works. Jobs inherit this environment (also through sbatch).
os.environ["PYTHONPATH"] = os.pathsep.join(
    filter(None, [SRC, os.environ.get("PYTHONPATH")])
)
if DeploymentMethod.CONDA not in workflow.deployment_settings.deployment_method:
    os.environ["PATH"] = os.pathsep.join(
        [str(Path(sys.executable).parent), os.environ["PATH"]]
    )

# TensorBoard on or off (tracking.tensorboard) reaches the training jobs as an environment
# variable, not through params or the shell text: Snakemake reruns a finished job whose params or
# shell command changed, and turning the live view off is no reason to train again.
os.environ["NORMDROP_TRACKING"] = (
    "--tensorboard" if config["tracking"]["tensorboard"] else "--no-tensorboard"
)


envvars:
    "PATH",
    "PYTHONPATH",
    "NORMDROP_TRACKING",


# A cluster job reruns Snakemake with the working directory on its command line, quoted there
# with Python's repr (snakemake-interface-executor-plugins 9.4): a folder name that holds a single
# quote comes out in double quotes, where a `$`, a backquote or a backslash would be live. Known
# only once the executor is (onstart), before any job is submitted.
onstart:
    here = os.getcwd()
    if workflow.non_local_exec and "'" in here and any(c in here for c in '$`\\"'):
        raise WorkflowError(
            f"working directory {here!r}: a folder name with both a single quote and one of "
            '$ ` \\ " is not passed safely to cluster jobs; rename it or run from elsewhere'
        )


# Every value below that reaches a shell command is a string or a list of strings, each put in
# the command with Snakemake's `:q` (shell-quoted): a path may hold spaces, quotes or `$(...)`.


# Each dataset's raw flag, prepared file and digest under this config (layout.data_files), and
# back from a file's name to its dataset.
DATA_FILES = {d: layout.data_files(config, d) for d in DATASETS}
RAW_SOURCES = {Path(f["downloaded"]).parent.name: d for d, f in DATA_FILES.items()}
PREPARED_KEYS = {Path(f["prepared"]).stem: d for d, f in DATA_FILES.items()}


def source_dataset(wildcards):
    return RAW_SOURCES[wildcards.source]


def prepared_dataset(wildcards):
    return PREPARED_KEYS[wildcards.prepared]


def raw_flag(wildcards):
    return DATA_FILES[PREPARED_KEYS[wildcards.prepared]]["downloaded"]


def prepared_data(wildcards):
    """The prepared file of the job's dataset and its digest (for meta.json's data_sha256)."""
    files = DATA_FILES[wildcards.dataset]
    return {"data": files["prepared"], "digest": files["digest"]}


def synthetic_args(wildcards):
    if source_dataset(wildcards) != "synthetic":
        return []
    spec = config["data"]["synthetic"]
    return [
        arg
        for k, v in spec.items()
        for arg in (f"--synthetic-{k.replace('_', '-')}", str(v))
    ]


def search_args(wildcards):
    lr = float(wildcards.lr)
    cfg = search_config(GRID, wildcards.dataset, wildcards.model, wildcards.variant, lr)
    return to_cli_args(cfg)


def train_args(wildcards):
    seed = int(wildcards.seed)
    cfg = run_config(GRID, wildcards.dataset, wildcards.model, wildcards.variant, seed)
    return to_cli_args(cfg, skip=("lr",))


# fuse.train / fuse.lr_search: a cell's seeds, or a search's candidates, train as one fused job
# (normdrop.train with K members) whose outputs are the members' run folders (docs/speed.md).
FUSE = {"train": False, "lr_search": False, **config.get("fuse", {})}
MEMBERS = {"train": config["seeds"], "lr_search": config["lr_search"]["candidates"]}
MEMBER_KEY = {"train": "seed", "lr_search": "lr"}


def cell_keys(wildcards):
    return {k: getattr(wildcards, k) for k in ("dataset", "model", "variant")}


def fused_outputs(kind):
    """Every member's run files, the cell's wildcards left open."""
    key = MEMBER_KEY[kind]
    return [
        path
        for value in MEMBERS[kind]
        for path in layout.run_files(RESULTS, kind, **{key: value}).values()
    ]


def fused_checkpoint(kind):
    """A fused job's one checkpoint, beside its members' unfused ones in scratch/."""
    return layout.fused_checkpoint(RESULTS, kind)


def fused_members(kind):
    """The training CLI's member arguments of a fused job: --seeds or --lrs, each member's run
    folder and TensorBoard folder, as the unfused rule would give them."""

    def args(wildcards):
        key, values = MEMBER_KEY[kind], MEMBERS[kind]
        keys = [{**cell_keys(wildcards), key: value} for value in values]
        return [
            "--seeds" if kind == "train" else "--lrs",
            *map(str, values),
            "--outs",
            *(layout.run_dir(RESULTS, kind, **k) for k in keys),
            "--tensorboard-dirs",
            *(layout.tensorboard_dir(RESULTS, kind, **k) for k in keys),
            "--member-logs",  # each member's epoch lines where normdrop.status reads them
            *(layout.run_log(RESULTS, kind, **k) for k in keys),
        ]

    return args


def fused_settings(kind):
    """A fused job's settings: those of its first member (--seeds / --lrs give the rest)."""

    def args(wildcards):
        first = {MEMBER_KEY[kind]: MEMBERS[kind][0]}
        settings = {"train": train_args, "lr_search": search_args}[kind]
        return settings(Namespace(**cell_keys(wildcards), **first))

    return args


def device_args(wildcards):
    """Device, GPU lease folder and slots: where a job runs, not what it computes."""
    return [
        "--device",
        EXEC["device"],
        "--gpu-lock-dir",
        layout.gpu_locks(RESULTS),
        "--gpu-slots",
        str(EXEC["gpu_slots_per_gpu"]),
    ]


def device_line(wildcards):
    """device_args as one string: select_lr passes it on to the training CLI it starts."""
    return shlex.join(device_args(wildcards))


def lr_candidates(wildcards):
    """The meta.json of each learning-rate candidate of the rule's (dataset, model, variant)."""
    return [
        layout.run_files(RESULTS, "lr_search", lr=lr, **wildcards)["meta.json"]
        for lr in config["lr_search"]["candidates"]
    ]


def all_run_metas():
    return [
        layout.run_files(RESULTS, r.kind, **r.wildcards)["meta.json"]
        for r in layout.iter_runs(GRID)
        if r.kind == "train"
    ]


def all_selected_lrs():
    return list(
        dict.fromkeys(
            layout.selected(RESULTS, **r.wildcards) for r in layout.iter_runs(GRID)
        )
    )


def config_json():
    """The grid's config as JSON: the aggregate checks every run against it."""
    return json.dumps(GRID, sort_keys=True)


def output_dir(wildcards, output):
    """The folder of a rule's first output (params derived from outputs, as the linter asks)."""
    return str(Path(output[0]).parent)


def input_dir(wildcards, input):
    return str(Path(input[0]).parent)


# ---- aggregate.smk and report.smk: the summary, tables, hypotheses, figures. Every file name
# comes from normdrop.catalog (torch-free: planning the DAG imports no torch, scipy or
# matplotlib); the HTML tables and the PNG figures are flagged for
# `snakemake --report report.html`, labelled by result, dataset, model and metric.
from normdrop import catalog

SUMMARY = layout.summary_dir(RESULTS)
TABLES = layout.tables_dir(RESULTS)
FIGURES = layout.figures_dir(RESULTS)
# name ("runs", "epochs", "lr_search") -> its parquet file under SUMMARY
SUMMARY_FILES = {n: f"{SUMMARY}/{f}" for n, f in catalog.SUMMARY_FILES.items()}
RUNS = SUMMARY_FILES["runs"]
REPORT_MD = f"{SUMMARY}/{catalog.REPORT_FILE}"
OVERALL = "All datasets and models"  # report category of the cross-cutting results
# stem -> (caption file in workflow/report/, name shown in the report, the metric(s) it shows)
ALL_METRICS = "all of Table 2"
REPORT_ITEMS = {
    catalog.TABLE2: ("table2", "Table 2: metrics per variant", ALL_METRICS),
    catalog.TABLE1: ("table1", "Table 1: parameter counts", "parameter count"),
    catalog.COMPARISON: (
        "paper_comparison",
        "Paper's Table 2 beside ours",
        "loss SD, convergence epoch, test accuracy",
    ),
    catalog.HYPOTHESES_TABLE: ("hypotheses", "Hypothesis tests H1-H3", "H1-H3's"),
    catalog.VERDICTS_TABLE: ("verdicts", "Verdicts H1-H3", "H1-H3's"),
    "curves": ("curves", "Learning curves", "loss, accuracy per epoch"),
    "loss_sd": ("loss_sd", "Training-loss SD per epoch", "loss SD per epoch"),
    "metrics": (
        "metrics",
        "Metrics per variant",
        "loss SD, conv. epoch, test acc., gap",
    ),
    "interaction": ("interaction", "BN x dropout interaction (H3)", "test accuracy"),
    "lr_search": ("lr_search", "Learning-rate search", "validation accuracy"),
    catalog.OVERVIEW: (
        "overview_test_acc",
        "Final test accuracy, all datasets and models",
        "test accuracy",
    ),
    catalog.STUDY_TABLE: (
        "study_effects",
        "Study: effect per value of the swept setting",
        ALL_METRICS,
    ),
    catalog.STUDY_FIGURE: (
        "study_metrics",
        "Study: metrics against the swept setting",
        "test acc., gap, loss SD, conv. epoch",
    ),
}
PER_PAIR = (
    "Per dataset and model"  # report category of the results of one dataset and model
)


def _for_report(path, root, kind, shown=(".html", ".png")):
    """Flag an HTML table or PNG figure for the report; other formats stay plain outputs.

    Its labels (result, dataset, model, metric) make each subcategory of the report a table
    with a column per label (Snakemake's report browser), not a list of file names: the results
    of every dataset and model sit in one table of figures and one of tables."""
    path = Path(path)
    if path.suffix not in shown:
        return str(path)
    caption, name, metric = REPORT_ITEMS[path.stem]
    parts = path.relative_to(root).parts
    dataset, model = "all", "all"
    if len(parts) == 3:  # {dataset}/{model}/{stem}.{ext}
        category = PER_PAIR
        dataset, model = catalog.dataset_name(parts[0]), catalog.model_name(parts[1])
    elif STUDY:
        category = f"Study: {STUDY['name']}"
    else:
        category = OVERALL
    return report(
        str(path),
        caption=f"report/{caption}.rst",
        category=category,
        subcategory="Figures" if kind == "figure" else "Tables",
        labels={"result": name, "dataset": dataset, "model": model, "metric": metric},
    )


def table_outputs():
    return [
        _for_report(p, TABLES, "table")
        for p in catalog.table_paths(TABLES, DATASETS, MODELS)
    ]


def hypothesis_outputs():
    return [_for_report(p, TABLES, "table") for p in catalog.hypothesis_paths(TABLES)]


def figure_outputs():
    return [
        _for_report(p, FIGURES, "figure")
        for p in catalog.figure_paths(FIGURES, DATASETS, MODELS)
    ]


def study_outputs():
    tables, figures = catalog.study_paths(TABLES, FIGURES)
    return [_for_report(p, TABLES, "table") for p in tables] + [
        _for_report(p, FIGURES, "figure") for p in figures
    ]


def study_json():
    return json.dumps(STUDY, sort_keys=True)


def summary_dir(wildcards, input):
    return SUMMARY


def tables_dir(wildcards, output):
    return TABLES


def figures_dir(wildcards, output):
    return FIGURES


def report_targets():
    """The outputs of this file for the Snakefile's `all` rule: a study's own figure and table,
    else the paper's tables, hypothesis tests, figures and summary."""
    if STUDY:
        return rules.study.output
    return (
        rules.tables.output
        + rules.hypotheses.output
        + rules.figures.output
        + rules.summary_report.output
    )
