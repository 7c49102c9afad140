"""Settings: one frozen dataclass per training run.

`RunConfig` holds everything that determines a run. It refuses unknown keys, wrong types and
out-of-range values with a `ConfigError` whose one-line message names the setting and what is
allowed. `run_config` turns one cell of the workflow's grid into a `RunConfig`, and `to_cli_args`
turns a `RunConfig` into the flags of `python -m normdrop.train`. The workflow's config file is
loaded and checked in `normdrop.workflow_config`; its grid is enumerated in `normdrop.grid`.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import types
import typing
from dataclasses import dataclass

from normdrop.catalog import (
    AUGMENTS,
    CUDA_GRAPHS,
    DATASETS,
    INITS,
    LSTM_INPUTS,
    MEMORY_FORMATS,
    MODEL_NORMS,
    MODELS,
    NORMS,
    PRECISIONS,
)

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


# RunConfig's names are the workflow config's and the training CLI's (--dropout-rate,
# --lr-milestones, ...). Runs recorded before that renaming (issue 23) carry the old names in
# meta.json and in their checkpoints: new name -> old name, for reading those and for the hash.
LEGACY_NAMES = {
    "dropout_rate": "dropout",
    "lr_milestones": "milestones",
    "lr_gamma": "gamma",
    "adam_betas": "betas",
    "adam_eps": "eps",
}


def current_names(settings: dict) -> dict:
    """Recorded settings under RunConfig's names (old names of LEGACY_NAMES renamed)."""
    old_to_new = {old: new for new, old in LEGACY_NAMES.items()}
    return {old_to_new.get(k, k): v for k, v in settings.items()}


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


def did_you_mean(word, allowed) -> str:
    """ " (did you mean 'epochs'?)" for a near miss of one of `allowed` (difflib), else ""."""
    close = difflib.get_close_matches(str(word), [str(a) for a in allowed], n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


@dataclass(frozen=True)
class RunConfig:
    dataset: str = _setting(help="dataset the --data file holds", allowed=DATASET_NAMES)
    model: str = _setting(help="network architecture", allowed=MODELS)
    width: int = _setting(
        help="hidden units per layer (mlp, lstm), channels of the first stage (cnn, resnet*) "
        "or token dim (vit)",
        allowed=">= 1",
    )
    init: str = _setting(
        "stable",
        help="weight initialization: stable (every variant starts from a stable network, "
        "docs/protocol.md) or he (plain He init)",
        allowed=INITS,
    )
    lstm_input: str = _setting(
        "rows",
        help="what the lstm reads per time step: an image row, a pixel, or a pixel in a fixed "
        "random order (permuted_pixels); lstm only",
        allowed=LSTM_INPUTS,
    )
    permutation_seed: int = _setting(
        0, help="seed of the pixel order of lstm_input permuted_pixels", allowed=">= 0"
    )
    variant: str = _setting(
        "custom",
        help="label of the run in paths and tables (none, bn, dropout, bn_dropout in the "
        "workflow); --norm and --dropout-rate decide what is trained",
        allowed="any name",
    )
    norm: str = _setting(
        "none",
        help="normalization layer after each hidden layer (which ones each model takes: "
        "catalog.MODEL_NORMS)",
        allowed=NORMS,
    )
    dropout_rate: float = _setting(0.0, help="dropout rate; 0 turns dropout off", allowed="[0, 1)")
    seed: int = _setting(
        42, help="seed of the initialization, dropout masks, data order and augmentation",
        allowed=">= 0",
    )  # fmt: skip
    lr: float = _setting(1e-3, help="Adam's initial learning rate", allowed="> 0")
    epochs: int = _setting(100, help="training epochs", allowed=">= 1")
    batch_size: int = _setting(
        128, help="mini-batch size (an epoch's last, smaller batch is kept)", allowed=">= 1"
    )
    lr_milestones: tuple[int, ...] = _setting(
        (50, 75),
        help="epochs after which the learning rate is multiplied by --lr-gamma (none: constant)",
        allowed="strictly increasing epochs in [1, epochs-1]",
    )
    warmup_epochs: int = _setting(
        0,
        help="linear learning-rate warm-up over these first epochs, then the milestones "
        "(0: none, the paper's; docs/protocol.md)",
        allowed="[0, epochs - 1]",
    )
    grad_clip_norm: float = _setting(
        0.0,
        help="clip the gradients' global L2 norm to this before each step (0: off, the paper's)",
        allowed=">= 0",
    )
    lr_gamma: float = _setting(
        0.1, help="factor applied to the learning rate at each milestone", allowed="(0, 1]"
    )
    adam_betas: tuple[float, float] = _setting(
        (0.9, 0.999), help="Adam's two betas", allowed="two values in [0, 1)"
    )
    adam_eps: float = _setting(1e-8, help="Adam's epsilon", allowed="> 0")
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
        "(docs/speed.md); on: CUDA only",
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
        need(0 <= self.dropout_rate < 1, "dropout_rate")
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
        need(self.permutation_seed >= 0, "permutation_seed")
        need(self.grad_clip_norm >= 0, "grad_clip_norm")
        if self.lstm_input != "rows" and self.model != "lstm":
            raise ConfigError(
                f"setting 'lstm_input' = {self.lstm_input!r}: for the lstm only, not "
                f"{self.model}; allowed: rows"
            )
        need(self.batch_size >= 1, "batch_size")
        need(self.eval_batch_size >= 1, "eval_batch_size")
        need(0 < self.lr_gamma <= 1, "lr_gamma")
        need(self.adam_eps > 0, "adam_eps")
        need(self.weight_decay >= 0, "weight_decay")
        need(self.checkpoint_every_s >= 0, "checkpoint_every_s")
        need(len(self.adam_betas) == 2 and all(0 <= b < 1 for b in self.adam_betas), "adam_betas")
        if not (
            all(1 <= m < self.epochs for m in self.lr_milestones)
            and list(self.lr_milestones) == sorted(set(self.lr_milestones))
        ):
            raise ConfigError(
                f"setting 'lr_milestones' = {self.lr_milestones!r}: strictly increasing epochs in "
                f"[1, epochs-1] = [1, {self.epochs - 1}] (a milestone at or beyond the last epoch "
                "never takes effect)"
            )

    @classmethod
    def from_recorded(cls, d: dict) -> RunConfig:
        """The RunConfig of settings as a meta.json or checkpoint recorded them, those written
        before the renames of LEGACY_NAMES included."""
        return cls.from_dict(current_names(d))

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

    def model_settings(self) -> dict:
        """The keyword arguments of models.build_model after (name, in_shape, num_classes)."""
        lstm = {"lstm_input": self.lstm_input, "permutation_seed": self.permutation_seed}
        return dict(width=self.width, norm=self.norm, dropout_rate=self.dropout_rate,
                    init=self.init, **(lstm if self.model == "lstm" else {}))  # fmt: skip

    def settings_hash(self) -> str:
        """Hash of what determines the run's numbers (execution-only settings left out). Hashed
        under the settings' names before LEGACY_NAMES' renames: a run keeps its hash."""
        d = {
            LEGACY_NAMES.get(k, k): v
            for k, v in self.to_dict().items()
            if k not in EXECUTION_FIELDS
        }
        # Settings added later are left out at their defaults, so that the runs made before
        # them keep their hash; the permutation's seed only counts for permuted pixels.
        for key, default in RUN_DEFAULTS.items():
            if d[key] == default and key != "permutation_seed":
                del d[key]
        if d.get("lstm_input") != "permuted_pixels":
            del d["permutation_seed"]
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


# The settings a run recorded before they existed had these values (settings_hash agrees).
RUN_DEFAULTS = {
    "warmup_epochs": 0,
    "grad_clip_norm": 0.0,
    "lstm_input": "rows",
    "permutation_seed": 0,
}


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
        lstm_input=m.get("input", "rows"),
        permutation_seed=m.get("permutation_seed", 0),
        variant=variant,
        norm=v["norm"],
        # A variant may override the model's rate (a dropout-rate sweep; rate 0 = off).
        dropout_rate=v.get("dropout_rate", m["dropout_rate"]) if v["dropout"] else 0.0,
        seed=seed,
        lr=lr,
        epochs=t["epochs"],
        batch_size=v.get("batch_size", t["batch_size"]),
        lr_milestones=tuple(t["lr_milestones"]),
        warmup_epochs=t["warmup_epochs"],
        grad_clip_norm=t["grad_clip_norm"],
        lr_gamma=t["lr_gamma"],
        adam_betas=tuple(t["adam_betas"]),
        adam_eps=t["adam_eps"],
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
    """A learning-rate candidate: the run's settings, shortened to the search's epochs. The
    milestones past its end are dropped; a warm-up keeps its share of the run, rounded up:
    ceil(warmup_epochs x search epochs / train epochs), at most the search's epochs - 1
    (docs/protocol.md: 5 of 100 epochs -> 1 of the search's 10)."""
    epochs, train_epochs = config["lr_search"]["epochs"], config["train"]["epochs"]
    milestones = tuple(m for m in config["train"]["lr_milestones"] if m < epochs)
    warmup = min(math.ceil(config["train"]["warmup_epochs"] * epochs / train_epochs), epochs - 1)
    seed = config["lr_search"]["seed"]
    return run_config(
        config, dataset, model, variant, seed, lr=lr, epochs=epochs, lr_milestones=milestones,
        warmup_epochs=warmup,
    )  # fmt: skip


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
    "LEGACY_NAMES",
    "RUN_DEFAULTS",
    "ConfigError",
    "RunConfig",
    "current_names",
    "allowed_text",
    "did_you_mean",
    "run_config",
    "search_config",
    "to_cli_args",
]
