"""Datasets: download, verify, prepare once, load in well under a second, batch on the device.

Raw data is torchvision's (its download, checksums and on-disk formats). ``prepare`` converts a
dataset once into one file of uint8 tensors: images (N, C, H, W), int64 labels, the fixed
validation split and the per-channel mean/std of the training set. A training run loads that
file onto its device and never touches the disk or a DataLoader again.

The ``synthetic`` dataset is built into the package: class prototypes plus noise, generated from a
seed, so that the demo and the tests run offline.
"""

from __future__ import annotations

import hashlib
import io
import json
import shlex
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from normdrop.storage import atomic_write_bytes, atomic_write_json

# name -> (torchvision class name, sub-folder torchvision creates under root, classes, C, H, W).
DATASETS = {
    "mnist": ("MNIST", "MNIST/raw", 10, (1, 28, 28)),
    "cifar10": ("CIFAR10", "cifar-10-batches-py", 10, (3, 32, 32)),
    "cifar100": ("CIFAR100", "cifar-100-python", 100, (3, 32, 32)),
    "synthetic": (None, ".", None, None),
}
PREPARED_FORMAT = 1


class DataError(RuntimeError):
    """Missing, corrupt or inconsistent data; the message says what to place where."""


def _check_name(name: str) -> None:
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; allowed: {', '.join(DATASETS)}")


def _how_to_obtain(name: str, raw_dir: Path) -> str:
    return (
        f"run `python -m normdrop.data download {name} --raw-dir {raw_dir}` (what the workflow's "
        f"`download` rule does) on a machine with internet access, or copy torchvision's "
        f"'{DATASETS[name][1]}' folder for {name} into {raw_dir}"
    )


# --------------------------------------------------------------------------- synthetic data
@dataclass(frozen=True)
class SyntheticSpec:
    """An offline stand-in for CIFAR: `num_classes` smooth prototypes + per-image noise."""

    n_train: int = 2000
    n_test: int = 500
    num_classes: int = 10
    channels: int = 3
    size: int = 16
    noise: float = 0.35  # SD of the per-image noise, relative to the [0, 1] pixel range
    seed: int = 0


def make_synthetic(spec: SyntheticSpec) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(spec.seed)
    shape = (spec.channels, spec.size, spec.size)
    # Smooth prototypes: low-resolution noise upsampled, so that convolutions have structure.
    low = torch.rand(spec.num_classes, spec.channels, 4, 4, generator=g)
    protos = torch.nn.functional.interpolate(low, size=shape[1:], mode="bilinear")

    def draw(n):
        y = torch.randint(spec.num_classes, (n,), generator=g)
        # A random brightness per image and pixel noise make the classes overlap.
        scale = 0.6 + 0.8 * torch.rand(n, 1, 1, 1, generator=g)
        x = protos[y] * scale + spec.noise * torch.randn(n, *shape, generator=g)
        return (x.clamp(0, 1) * 255).round().to(torch.uint8), y

    train_x, train_y = draw(spec.n_train)
    test_x, test_y = draw(spec.n_test)
    return {"train_x": train_x, "train_y": train_y, "test_x": test_x, "test_y": test_y}


# --------------------------------------------------------------------------- content keys
def synthetic_settings(synthetic: dict | None = None) -> dict:
    """The synthetic spec as a plain dict: SyntheticSpec's defaults overridden by `synthetic`,
    each value of its field's type (a YAML `noise: 1` and `noise: 1.0` are one setting)."""
    spec = asdict(SyntheticSpec())
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


def digest_path(prepared: Path) -> Path:
    """The sidecar beside a prepared file that records its SHA-256 (written by `prepare`)."""
    return Path(prepared).with_suffix(".json")


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def data_sha256(prepared: Path) -> str:
    """The prepared file's SHA-256, as `prepare` recorded it beside the file (computed once);
    hashed here only for a file prepared without its sidecar (by an older version, by hand)."""
    sidecar = digest_path(prepared)
    try:
        recorded = json.loads(sidecar.read_text())
        if recorded["bytes"] == Path(prepared).stat().st_size:
            return recorded["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return file_sha256(prepared)


# --------------------------------------------------------------------------- download
def download(name: str, raw_dir: Path, synthetic: SyntheticSpec | None = None) -> Path:
    """Fetch (or, for `synthetic`, generate) the raw dataset into `raw_dir`; returns a marker."""
    _check_name(name)
    raw_dir = Path(raw_dir)
    raw_dir.mkdir(parents=True, exist_ok=True)
    if name == "synthetic":
        buf = io.BytesIO()
        torch.save(make_synthetic(synthetic or SyntheticSpec()), buf)
        atomic_write_bytes(raw_dir / "synthetic.pt", buf.getvalue())
    else:
        import torchvision.datasets as tvd  # slow import (~2 s): only where needed

        cls = getattr(tvd, DATASETS[name][0])
        for train in (True, False):
            try:
                # torchvision checks the archive's md5 after downloading and before extracting.
                cls(root=str(raw_dir), train=train, download=True)
            except Exception as err:  # network errors, md5 mismatch: one clear message
                raise DataError(
                    f"downloading {name} into {raw_dir} failed: {err}. Delete {raw_dir} and "
                    f"retry, or {_how_to_obtain(name, raw_dir)}"
                ) from err
    return raw_dir


# --------------------------------------------------------------------------- raw loading
def _verify_mnist(raw_dir: Path) -> None:
    """torchvision's MNIST class checks no md5 when loading: check the .gz archives we keep."""
    from torchvision.datasets import MNIST
    from torchvision.datasets.utils import check_integrity

    folder = raw_dir / DATASETS["mnist"][1]
    for archive, md5 in MNIST.resources:
        gz = folder / archive
        if gz.exists() and not check_integrity(str(gz), md5):
            raise DataError(
                f"{gz} fails its md5 checksum (expected {md5}): the download is truncated or "
                f"corrupt. Delete it and {_how_to_obtain('mnist', raw_dir)}"
            )


def load_raw(name: str, raw_dir: Path) -> dict[str, torch.Tensor]:
    """The raw train/test split as uint8 (N, C, H, W) images and int64 labels."""
    _check_name(name)
    raw_dir = Path(raw_dir)
    if name == "synthetic":
        path = raw_dir / "synthetic.pt"
        if not path.exists():
            raise DataError(f"{path} is missing: {_how_to_obtain(name, raw_dir)}")
        try:
            return torch.load(path, weights_only=True)
        except Exception as err:
            raise DataError(f"{path} is corrupt ({err}); delete it and rerun download") from err

    import torchvision.datasets as tvd

    cls_name, folder, _, shape = DATASETS[name]
    if not (raw_dir / folder).is_dir():
        raise DataError(f"{raw_dir / folder} is missing: {_how_to_obtain(name, raw_dir)}")
    if name == "mnist":
        _verify_mnist(raw_dir)
    out = {}
    for split, train in (("train", True), ("test", False)):
        try:
            # download=False: torchvision parses its own on-disk format (MNIST idx files, CIFAR
            # pickles) and, for CIFAR, verifies each batch file's md5 first.
            ds = getattr(tvd, cls_name)(root=str(raw_dir), train=train, download=False)
            x = torch.as_tensor(ds.data)
            y = torch.as_tensor(ds.targets, dtype=torch.int64)
        except Exception as err:
            raise DataError(
                f"{name} in {raw_dir / folder} is missing files or corrupt ({err}). "
                f"Delete that folder and {_how_to_obtain(name, raw_dir)}"
            ) from err
        # MNIST arrives as (N, H, W), CIFAR as (N, H, W, C): make both (N, C, H, W).
        x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)
        if tuple(x.shape[1:]) != shape or x.dtype != torch.uint8 or len(x) != len(y):
            raise DataError(f"{name} {split} data in {raw_dir} has shape {tuple(x.shape)}")
        out[f"{split}_x"], out[f"{split}_y"] = x.contiguous(), y
    return out


# --------------------------------------------------------------------------- prepared file
@dataclass(frozen=True)
class Prepared:
    """A prepared dataset: uint8 images (N, C, H, W), int64 labels, per-channel mean/std."""

    name: str
    num_classes: int
    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    mean: torch.Tensor  # (C,) float32
    std: torch.Tensor  # (C,) float32
    val_indices: torch.Tensor  # indices into the raw training set, for traceability

    @property
    def in_shape(self) -> tuple[int, int, int]:
        return tuple(self.train_x.shape[1:])

    def to(self, device: torch.device) -> Prepared:
        fields = {k: v.to(device) for k, v in self.__dict__.items() if torch.is_tensor(v)}
        return Prepared(name=self.name, num_classes=self.num_classes, **fields)


def split_train_val(n: int, val_fraction: float, split_seed: int) -> tuple[torch.Tensor, ...]:
    """Fixed (train, val) index split of a training set of n examples; identical for every run."""
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must lie in (0, 1), got {val_fraction}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(split_seed))
    n_val = round(n * val_fraction)
    return perm[n_val:].sort().values, perm[:n_val].sort().values


def prepare(name: str, raw_dir: Path, out: Path, val_fraction=0.1, split_seed=0) -> Path:
    """Convert the raw dataset once into the prepared file `out` (written atomically)."""
    raw = load_raw(name, raw_dir)
    train_idx, val_idx = split_train_val(len(raw["train_y"]), val_fraction, split_seed)
    # Per-channel statistics over the whole raw training set: this is how the usual published
    # values (e.g. MNIST 0.1307 / 0.3081) were computed, so real datasets get those values.
    pixels = raw["train_x"].transpose(0, 1).flatten(1).double() / 255
    num_classes = DATASETS[name][2] or int(raw["train_y"].max()) + 1
    payload = {
        "format": PREPARED_FORMAT,
        "name": name,
        "num_classes": num_classes,
        "train_x": raw["train_x"][train_idx].contiguous(),
        "train_y": raw["train_y"][train_idx].contiguous(),
        "val_x": raw["train_x"][val_idx].contiguous(),
        "val_y": raw["train_y"][val_idx].contiguous(),
        "test_x": raw["test_x"],
        "test_y": raw["test_y"],
        "mean": pixels.mean(1).float(),
        "std": pixels.std(1).float(),
        "val_indices": val_idx,
        "split": {"val_fraction": val_fraction, "split_seed": split_seed},
    }
    buf = io.BytesIO()
    torch.save(payload, buf)
    content = buf.getvalue()
    atomic_write_bytes(Path(out), content)
    # The SHA-256 once, here: every run records it (meta.json's data_sha256).
    digest = {"sha256": hashlib.sha256(content).hexdigest(), "bytes": len(content)}
    atomic_write_json(digest_path(out), {**digest, "dataset": name, **payload["split"]})
    return Path(out)


def prepare_command(name: str, out: Path, raw_dir: Path | None = None) -> str:
    """The shell command that creates the prepared file `out` for dataset `name` by hand, as the
    workflow's `download` and `prepare` rules do (raw data in resources/raw/<name> by default;
    `synthetic` with SyntheticSpec's defaults). Rerun, it replaces `out`."""
    raw = str(raw_dir or Path("resources") / "raw" / name)
    download = ["python", "-m", "normdrop.data", "download", name, "--raw-dir", raw]
    prepare = ["python", "-m", "normdrop.data", "prepare", name, "--raw-dir", raw]
    return f"{shlex.join(download)} && {shlex.join([*prepare, '--out', str(out)])}"


def load_prepared(path: Path, dataset: str = "<dataset>") -> Prepared:
    """Load a prepared file (CPU tensors); a missing or corrupt file gives a one-line DataError
    with the command that (re)builds it for `dataset`."""
    path = Path(path)
    rebuild = f"`{prepare_command(dataset, path)}`"
    if not path.exists():
        raise DataError(f"prepared dataset {path} is missing: create it with {rebuild}")
    try:
        d = torch.load(path, weights_only=True, mmap=True)
        fields = {k: d[k] for k in Prepared.__dataclass_fields__}
    except Exception as err:  # torch's words (a hint about saving options) stay in the chain
        raise DataError(
            f"prepared dataset {path} is corrupt or truncated (not a file that "
            f"`normdrop.data prepare` wrote, or cut short): rebuild it with {rebuild}"
        ) from err
    ok = d.get("format") == PREPARED_FORMAT and all(
        fields[f"{s}_x"].dtype == torch.uint8
        and fields[f"{s}_x"].ndim == 4
        and len(fields[f"{s}_x"]) == len(fields[f"{s}_y"])
        for s in ("train", "val", "test")
    )
    if not ok:
        raise DataError(
            f"prepared dataset {path} has an unexpected layout (an older format?): rebuild it "
            f"with {rebuild}"
        )
    return Prepared(**fields)


# --------------------------------------------------------------------------- on-device batches
def standardization(mean: torch.Tensor, std: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift), each (1, C, 1, 1), for `normalize`: per-channel mean and std (C,) of pixels
    in [0, 1], folded into one multiply-subtract on the uint8 values. Computed once per run, so the
    training step does not recompute them for every batch."""
    return (1 / (255 * std)).view(1, -1, 1, 1), (mean / std).view(1, -1, 1, 1)


def normalize(x_u8: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """uint8 (N, C, H, W) -> float32, scaled to [0, 1] and standardised per channel, with the
    (scale, shift) of `standardization`."""
    return x_u8.float() * scale - shift


def crop_flip(x_u8: torch.Tensor, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Per-image random crop after zero padding, then a random horizontal flip, on the device.

    Equals torchvision's RandomCrop(size, padding=pad) (fill 0, on the uint8 image, so padding is
    black) followed by RandomHorizontalFlip(0.5), drawing from `generator` instead of the global
    RNG. (N, C, H, W) uint8 -> same shape.
    """
    n, _, h, w = x_u8.shape
    dev = x_u8.device
    padded = torch.nn.functional.pad(x_u8, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n, 1, 1), device=dev, generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (n, 1, 1), device=dev, generator=generator)
    flip = torch.rand(n, 1, 1, device=dev, generator=generator) < 0.5
    rows = dy + torch.arange(h, device=dev).view(1, h, 1)  # (N, H, 1)
    cols = torch.arange(w, device=dev).view(1, 1, w)
    cols = dx + torch.where(flip, w - 1 - cols, cols)  # (N, 1, W): flipped columns read backwards
    batch = torch.arange(n, device=dev).view(n, 1, 1)
    # Advanced indexing over (N, H, W) with the channel axis sliced: result is (N, H, W, C).
    return padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)


# --------------------------------------------------------------------------- CLI
def main(argv=None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m normdrop.data", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("download", help="fetch a dataset (or generate the synthetic one)")
    d.add_argument("dataset", choices=list(DATASETS))
    d.add_argument("--raw-dir", type=Path, required=True)
    for field, default in SyntheticSpec().__dict__.items():
        d.add_argument(
            f"--synthetic-{field.replace('_', '-')}", type=type(default), default=default
        )
    r = sub.add_parser("prepare", help="convert raw data into one prepared file")
    r.add_argument("dataset", choices=list(DATASETS))
    r.add_argument("--raw-dir", type=Path, required=True)
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--val-fraction", type=float, default=0.1)
    r.add_argument("--split-seed", type=int, default=0)
    args = p.parse_args(argv)
    try:
        if args.cmd == "download":
            spec = SyntheticSpec(
                **{f: getattr(args, f"synthetic_{f}") for f in SyntheticSpec.__dataclass_fields__}
            )
            download(args.dataset, args.raw_dir, spec)
            print(f"{args.dataset}: raw data in {args.raw_dir}")
        else:
            prepare(args.dataset, args.raw_dir, args.out, args.val_fraction, args.split_seed)
            print(f"{args.dataset}: prepared {args.out}")
    except (DataError, ValueError) as err:
        p.exit(1, f"error: {err}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
