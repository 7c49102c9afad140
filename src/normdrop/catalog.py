"""The study's facts, named once: datasets, models and their norms, metrics, the choices of a
run's settings, the defaults the code and config.yaml share, and the names of every summary,
table and figure file. Plain Python, no torch, scipy or matplotlib: planning the workflow
(`snakemake -n`, `common.smk`) imports only this, the config and the layout.

Every other module takes these facts from here; `workflow/schemas/config.schema.yaml` spells
the same choices as enums, and a test (tests/test_catalog.py) checks that they are equal.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

# --------------------------------------------------------------------------------------------
# Datasets


@dataclass(frozen=True)
class Dataset:
    name: str
    display: str  # name in tables and figures
    torchvision: str | None  # torchvision.datasets class (None: built into normdrop)
    folder: str  # the sub-folder torchvision creates under its root
    classes: int | None  # None: set by the data (synthetic: data.synthetic.num_classes)
    shape: tuple[int, int, int] | None  # (C, H, W); None: set by the data
    augments: tuple[str, ...] = ("none", "crop_flip")  # crop_flip: for CIFAR-like images

    @property
    def chance_acc(self) -> float | None:
        """Test accuracy (fraction) of guessing a class, for classes of equal size."""
        return 1.0 / self.classes if self.classes else None


DATASETS = {
    d.name: d
    for d in (
        Dataset("mnist", "MNIST", "MNIST", "MNIST/raw", 10, (1, 28, 28), ("none",)),
        Dataset("cifar10", "CIFAR-10", "CIFAR10", "cifar-10-batches-py", 10, (3, 32, 32)),
        Dataset("cifar100", "CIFAR-100", "CIFAR100", "cifar-100-python", 100, (3, 32, 32)),
        Dataset("synthetic", "Synthetic", None, ".", None, None),
    )
}
# The synthetic dataset's defaults (normdrop.data.SyntheticSpec); config.yaml's data.synthetic
# holds the same values (a test checks). noise: SD of the per-image noise, relative to the
# [0, 1] pixel range; 1.0 is what the workflow has always generated (0.35 was SyntheticSpec's
# own default, used only by the benchmarks' speed data, where pixel values do not matter).
PREPARED_FORMAT = 1  # version of the prepared file's layout (normdrop.data.prepare)
AUGMENTS = ("none", "crop_flip")  # crop_flip: 4-pixel zero padding, random crop, random h-flip
SYNTHETIC = dict(n_train=2000, n_test=500, num_classes=10, channels=3, size=16, noise=1.0, seed=0)


# --------------------------------------------------------------------------- content keys
def synthetic_settings(synthetic: dict | None = None) -> dict:
    """The synthetic spec as a plain dict: catalog.SYNTHETIC overridden by `synthetic`,
    each value of its field's type (a YAML `noise: 1` and `noise: 1.0` are one setting)."""
    spec = dict(SYNTHETIC)  # data.SyntheticSpec's defaults
    spec.update({k: type(spec[k])(v) for k, v in (synthetic or {}).items() if k in spec})
    return spec


def short_hash(settings: dict) -> str:
    """10 hex digits of the SHA-256 of `settings` as sorted JSON: a file name's content key."""
    text = json.dumps(settings, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def raw_source(name: str, synthetic: dict | None = None) -> str:
    """The raw data's folder name: the dataset itself (torchvision's files have no settings), or
    for `synthetic` the dataset plus a short hash of its spec, since the spec shapes the data."""
    if name != "synthetic":
        return name
    return f"{name}-{short_hash(synthetic_settings(synthetic))}"


def prepared_settings(name, val_fraction, split_seed, synthetic: dict | None = None) -> dict:
    """Every setting that shapes a prepared file's content: the format version, the dataset, the
    validation split and (synthetic only) the generator's spec."""
    settings = {
        "format": PREPARED_FORMAT,
        "dataset": name,
        "val_fraction": float(val_fraction),
        "split_seed": int(split_seed),
    }
    if name == "synthetic":
        settings["synthetic"] = synthetic_settings(synthetic)
    return settings


def prepared_key(name, val_fraction, split_seed, synthetic: dict | None = None) -> str:
    """The prepared file's name without its suffix: 'synthetic-1a2b3c4d5e'. Different settings
    give different names, so their files live side by side and never overwrite each other."""
    return f"{name}-{short_hash(prepared_settings(name, val_fraction, split_seed, synthetic))}"


# --------------------------------------------------------------------------------------------
# Models, their norms and initializations

NORMS = ("none", "batch", "group", "layer", "rms")
INITS = ("stable", "he")
# How the LSTM reads an image (docs/protocol.md): a row per step, a pixel per step, or the pixels
# in a fixed random order (permuted pixel MNIST, Le et al. 2015; Cooijmans et al. 2016).
LSTM_INPUTS = ("rows", "pixels", "permuted_pixels")
# The norms each model accepts. RMSNorm (nn.RMSNorm) normalizes a feature vector: it fits the
# MLP's hidden layers and the transformer's tokens; for conv maps torch has no channel-wise
# RMSNorm (it would be hand-written), and the LSTM takes the two norms of its literature.
# resnet20 is the paper's model; the deeper members of the 6n+2 family are for the depth study;
# vit and lstm answer the paper's future work (transformers and recurrent networks).
_CONV_NORMS = ("none", "batch", "group", "layer")
MODEL_NORMS = {
    "mlp": (*_CONV_NORMS, "rms"),
    "cnn": _CONV_NORMS,
    **{f"resnet{d}": _CONV_NORMS for d in (20, 32, 44, 56)},
    "vit": NORMS,
    "lstm": ("none", "layer", "batch"),
}
MODELS = tuple(MODEL_NORMS)
MODEL_NAMES = {"mlp": "MLP", "cnn": "CNN", "resnet20": "ResNet-20", "vit": "ViT", "lstm": "LSTM"}


def dataset_name(dataset: str) -> str:
    """The display name of a dataset ('cifar10' -> 'CIFAR-10'); an unknown one as given."""
    return DATASETS[dataset].display if dataset in DATASETS else dataset


def model_name(model: str) -> str:
    """The display name of a model ('resnet20' -> 'ResNet-20'); others as given."""
    return MODEL_NAMES.get(model, model)


PATCH = 4  # ViT patch side in pixels: 28x28 -> 7x7 = 49 tokens, 32x32 -> 8x8 = 64 tokens
CNN_MIN_SIZE = 16  # the CNN's four 2x2 max-pools halve H and W four times: 16 -> 1


def allowed_norms_text() -> str:
    """One line naming the norms each model accepts, for error messages and docs."""
    return "; ".join(f"{m}: {', '.join(n)}" for m, n in MODEL_NORMS.items())


def check_input(name: str, in_shape) -> None:
    """Raise ValueError when model `name` cannot read images of `in_shape` (C, H, W)."""
    _, height, wide = in_shape
    if name == "vit" and (height % PATCH or wide % PATCH):
        raise ValueError(
            f"vit cuts images into {PATCH}x{PATCH} patches: height and width must be multiples "
            f"of {PATCH}, got {height}x{wide}"
        )
    if name == "cnn" and min(height, wide) < CNN_MIN_SIZE:
        side = CNN_MIN_SIZE
        raise ValueError(f"cnn needs images of at least {side}x{side} pixels, got {height}x{wide}")


# --------------------------------------------------------------------------------------------
# Execution choices of a run (normdrop.config, the schema's `execution`)

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16")
MEMORY_FORMATS = ("auto", "channels_last", "contiguous")
CUDA_GRAPHS = ("auto", "on", "off")

# --------------------------------------------------------------------------------------------
# Metrics (columns of runs.parquet) as displayed

CONVERGENCE_FRACTION = 0.95  # default of metrics.convergence_fraction (config.yaml's too)


@dataclass(frozen=True)
class Metric:
    column: str  # column of runs.parquet
    label: str  # table header and study panel title
    quantity: str  # words for sentences
    unit: str  # unit of a difference (effect) in the displayed scale; "" for none
    scale: float  # factor from the stored unit to the displayed one
    decimals: int
    csv_name: str  # column stem in the CSV outputs (names the displayed unit)
    better: str  # "higher" or "lower"
    title: str = ""  # title of its panel in the metrics figure (normdrop.plots)
    axis: str = ""  # y label there; {fraction}: metrics.convergence_fraction in percent

    @property
    def value_unit(self) -> str:
        """The unit of a displayed value, short: '%' for accuracies, else 'pts', 'ep' or ''."""
        return "%" if self.scale == 100.0 else UNIT_ABBREVIATIONS[self.unit]

    @property
    def panel_title(self) -> str:
        """'Final test accuracy (%)': a panel's title with the unit of its values."""
        return f"{self.title} ({self.value_unit})" if self.value_unit else self.title


def _metric(column, label, quantity, unit, decimals, csv_name, better, scale=1.0, **plot):
    return Metric(column, label, quantity, unit, scale, decimals, csv_name, better, **plot)


# fmt: off
METRICS = {m.column: m for m in (
    _metric("loss_sd", "Loss SD", "loss SD", "", 4, "loss_sd", "lower",
            title="Training stability", axis="loss SD (mean within-epoch SD)"),
    _metric("loss_sd_late", "Loss SD ep. 2+", "loss SD, epochs 2+", "", 4, "loss_sd_late",
            "lower"),
    _metric("convergence_epoch", "Conv. epoch", "convergence epoch", "epochs", 1,
            "convergence_epoch", "lower",
            title="Convergence speed", axis="epoch reaching {fraction} of final val. acc."),
    _metric("final_test_acc", "Test acc. (%)", "test accuracy", "points", 2,
            "final_test_acc_pct", "higher", scale=100.0,
            title="Final test accuracy", axis="test accuracy (%), axis zoomed"),
    _metric("gen_gap", "Gen. gap (pts)", "generalization gap", "points", 2, "gen_gap_pts",
            "lower", title="Generalization gap", axis="train − test accuracy (points)"),
    _metric("es_test_acc", "ES test acc. (%)", "early-stopping test accuracy", "points", 2,
            "es_test_acc_pct", "higher", scale=100.0),
    _metric("es_epoch", "ES epoch", "early-stopping epoch", "epochs", 1, "es_epoch", "lower"),
)}
# fmt: on
PLOTTED_METRICS = ("loss_sd", "convergence_epoch", "final_test_acc", "gen_gap")  # metrics figure
STUDY_METRICS = ("final_test_acc", "gen_gap", "loss_sd", "convergence_epoch")  # study panels
# What a study effect may test: the panels' metrics and the loss SD over epochs 2+ (H1a beside
# H1a on loss_sd, as the paper grid's H1a2: docs/protocol.md, "Loss SD is sensitive ...").
EFFECT_METRICS = (*STUDY_METRICS, "loss_sd_late")
UNIT_ABBREVIATIONS = {"points": "pts", "epochs": "ep", "": ""}
STUDY_AXES = ("batch_size", "dropout_rate", "depth")


def percent(fraction: float) -> str:
    """0.95 -> '95%' (the convergence fraction in words)."""
    return f"{round(fraction * 100, 6):g}%"


def convergence_text(fraction: float = CONVERGENCE_FRACTION) -> str:
    """How the convergence epoch is defined, in the words of the tables' notes."""
    return f"first epoch whose validation accuracy reaches {percent(fraction)} of the final one"


def load_claims() -> list[dict]:
    """The paper's claims, verbatim (reference/paper_claims.yaml), tested by normdrop.hypotheses."""
    import yaml

    ref = resources.files("normdrop") / "reference" / "paper_claims.yaml"
    with ref.open("r", encoding="utf-8") as f:
        return yaml.safe_load(f)["claims"]


# --------------------------------------------------------------------------------------------
# Output files: the summary (normdrop.aggregate), tables and figures (the report modules)

SUMMARY_FILES = {
    "runs": "runs.parquet",
    "epochs": "epochs.parquet",
    "lr_search": "lr_search.parquet",
}
REPORT_FILE = "report.md"
TABLE_FORMATS = ("md", "csv", "tex", "html")  # the files of one table (render.write_table)
FIGURE_FORMATS = ("png", "pdf")
TABLE1, COMPARISON, TABLE2, TABLE2_ALL = "table1_params", "paper_comparison", "table2", "table2_all"
HYPOTHESES_TABLE, VERDICTS_TABLE = "hypotheses", "verdicts"
STUDY_TABLE, STUDY_FIGURE = "study_effects", "study_metrics"
OVERVIEW = "overview_test_acc"
PAIR_FIGURES = ("curves", "loss_sd", "metrics", "interaction", "lr_search")  # per dataset/model


def summary_paths(summary_dir: Path | str) -> list[Path]:
    """The aggregate's three parquet files."""
    return [Path(summary_dir) / name for name in SUMMARY_FILES.values()]


def table_paths(out_dir: Path | str, datasets: Sequence[str], models: Sequence[str]) -> list[Path]:
    """Every file normdrop.tables writes."""
    out = Path(out_dir)
    paths = [out / f"{stem}.{ext}" for stem in (TABLE1, COMPARISON) for ext in TABLE_FORMATS]
    paths += [out / f"{TABLE2_ALL}.md", out / f"{TABLE2_ALL}.csv"]
    for d in datasets:
        for m in models:
            paths += [out / d / m / f"{TABLE2}.{ext}" for ext in TABLE_FORMATS]
    return paths


def hypothesis_paths(out_dir: Path | str) -> list[Path]:
    """Every file normdrop.hypotheses writes."""
    stems = (HYPOTHESES_TABLE, VERDICTS_TABLE)
    return [Path(out_dir) / f"{stem}.{ext}" for stem in stems for ext in TABLE_FORMATS]


def figure_paths(out_dir: Path | str, datasets: Sequence[str], models: Sequence[str]) -> list:
    """Every file normdrop.plots writes."""
    out = Path(out_dir)
    paths = [out / f"{OVERVIEW}.{fmt}" for fmt in FIGURE_FORMATS]
    for d in datasets:
        for m in models:
            paths += [out / d / m / f"{k}.{f}" for k in PAIR_FIGURES for f in FIGURE_FORMATS]
    return paths


def study_paths(tables_dir: Path | str, figures_dir: Path | str) -> tuple[list, list]:
    """(table files, figure files) that normdrop.study writes."""
    tables = [Path(tables_dir) / f"{STUDY_TABLE}.{ext}" for ext in TABLE_FORMATS]
    figures = [Path(figures_dir) / f"{STUDY_FIGURE}.{ext}" for ext in FIGURE_FORMATS]
    return tables, figures
