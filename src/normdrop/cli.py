"""What normdrop's command lines share: a mistake reported in one line with exit code 2, negative
numbers taken as values, an option's help built from a dataclass field's metadata (RunConfig's
`help` and `allowed`, config.py), so that --help and the checks say the same thing, and a training
run's progress in a terminal (a tqdm bar) or in a log file (plain lines)."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from tqdm import tqdm

from normdrop.config import allowed_text


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse, with a mistake reported in one line (exit 2) and negative numbers as values."""

    def error(self, message):  # one line, exit code 2 (argparse's default adds the usage)
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")

    def parse_known_args(self, args=None, namespace=None):
        # argparse takes only '-1' and '-.5' for negative numbers: '--lr -1e-3' would read as an
        # option without its value ("expected one argument"). Joined into '--lr=-1e-3', the value
        # reaches the setting's own check, which says what is allowed.
        args = list(sys.argv[1:] if args is None else args)
        joined = []
        for arg in args:
            if joined and _is_negative_number(arg) and _takes_value(self, joined[-1]):
                joined[-1] = f"{joined[-1]}={arg}"
            else:
                joined.append(arg)
        return super().parse_known_args(joined, namespace)


def _is_negative_number(arg: str) -> bool:
    """'-1e-3', '-.5', '-inf': what float() reads, with a minus sign."""
    try:
        return arg.startswith("-") and float(arg) <= 0 or arg.lower() == "-nan"
    except ValueError:
        return False


def _takes_value(parser: argparse.ArgumentParser, arg: str) -> bool:
    action = parser._option_string_actions.get(arg)  # argparse's own table of the flags
    return action is not None and action.nargs != 0 and "=" not in arg


def setting_help(f: dataclasses.Field) -> str:
    """A RunConfig field's --help: its sentence, default and allowed values (config.py)."""
    default = f.default
    if default is dataclasses.MISSING:
        shown = "required"
    elif isinstance(default, bool):
        return f"{f.metadata['help']} (default: {'on' if default else 'off'})"
    elif isinstance(default, tuple):
        shown = "default: " + (" ".join(map(str, default)) or "none")
    else:
        shown = f"default: {default}"
    return f"{f.metadata['help']} ({shown}; allowed: {allowed_text(f.metadata['allowed'])})"


class _EpochBar:
    """A run's progress in a terminal: a tqdm bar over epochs, log lines written above it."""

    def __init__(self, stream):
        self.stream, self.bar = stream, None

    def log(self, line: str) -> None:
        tqdm.write(line, file=self.stream)

    def __call__(self, done: int, epochs: int, row: dict | None) -> None:
        if self.bar is None:  # `done` > 0 when resumed: the rate counts this session's epochs
            self.bar = tqdm(total=epochs, initial=done, unit="epoch", file=self.stream)
            return
        if row:
            loss, val = f"{row['train_loss_mean']:.4f}", f"{row['val_acc']:.4f}"
            self.bar.set_postfix(loss=loss, val=val, refresh=False)
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def reporters(stream) -> tuple:
    """(log, progress, close) for `train`: a bar when `stream` is a terminal; otherwise (a file
    or a pipe, as the workflow's logs) one plain flushed line per epoch, no control characters."""
    if stream.isatty():
        bar = _EpochBar(stream)
        return bar.log, bar, bar.close
    return (lambda line: print(line, file=stream, flush=True)), None, lambda: None


def add_member_arguments(parser: argparse.ArgumentParser) -> None:
    """The training CLI's options for a fused job (normdrop.train.main, K members)."""
    g = parser.add_argument_group("fused runs: K members trained as one model (docs/speed.md)")
    g.add_argument(
        "--seeds", type=int, nargs="+",
        help="train these seeds fused, one member each, instead of --seed (default: none)",
    )  # fmt: skip
    g.add_argument(
        "--lrs", type=float, nargs="+",
        help="train these learning rates fused, one member each, instead of --lr (default: none)",
    )  # fmt: skip
    g.add_argument(
        "--outs", type=Path, nargs="+",
        help="the members' run folders, in member order (default: <out>/seed<S> or <out>/lr<LR>;"
        " --out then holds the job's checkpoint)",
    )  # fmt: skip
    g.add_argument(
        "--member-logs", type=Path, nargs="+",
        help="a log per member, in member order, that gets its epoch lines: what normdrop.status"
        " reads (default: none; the job's own output has every member's lines)",
    )  # fmt: skip
    g.add_argument(
        "--tensorboard-dirs", type=Path, nargs="+",
        help="the members' event-file folders, in member order (default: <member>/tensorboard)",
    )  # fmt: skip
