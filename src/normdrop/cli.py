"""What normdrop's command lines share: a mistake reported in one line with exit code 2, negative
numbers taken as values, and an option's help built from a dataclass field's metadata (RunConfig's
`help` and `allowed`, config.py), so that --help and the checks say the same thing."""

from __future__ import annotations

import argparse
import dataclasses
import sys

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
