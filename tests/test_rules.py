"""The rule files as a user's paths meet them: every value in a shell command quoted, each rule's
sections in one order, and the demo's first jobs run under a folder named with a space, a single
quote, a `$(...)` and a `$HOME`."""

from __future__ import annotations

import ast
import json
import re
import string
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from normdrop import layout
from normdrop.catalog import prepared_key, raw_source
from normdrop.data import data_sha256

REPO = Path(__file__).resolve().parents[1]

RULE_FILES = sorted((REPO / "workflow").glob("*.smk")) + [REPO / "Snakefile"]
# The developers' guide: input, output, log, params, resources in that order; threads sits
# beside resources, and the software (conda) and the command come last.
ORDER = ["input", "output", "log", "params", "localrule", "threads", "resources", "conda", "shell"]


def rules(path) -> dict[str, dict[str, list[str]]]:
    """rule name -> section name -> the section's lines, as written in a rule file (a rule may
    sit indented under an `if`, as the fused and unfused rules chosen by `fuse:` do)."""
    found, rule, section, pad = {}, None, None, ""
    for line in path.read_text().splitlines():
        if m := re.match(r"( *)(?:local)?rule (\w+):", line):
            pad, rule, section = m[1], found.setdefault(m[2], {}), None
        elif rule is not None and (m := re.match(rf"{pad}    (\w+):(.*)", line)):
            section = rule.setdefault(m[1], [m[2]] if m[2].strip() else [])
        elif rule is not None and line.startswith(pad + "        ") and section is not None:
            section.append(line.strip())
        elif line and not line.startswith(pad + " "):
            rule = section = None
    return found


def shell_fields(command: str) -> list[tuple[str, str]]:
    """(field, format spec) of each `{...}` that Snakemake fills in a shell command."""
    return [(f, spec) for _, f, spec, _ in string.Formatter().parse(command) if f is not None]


ALL_RULES = {name: sections for path in RULE_FILES for name, sections in rules(path).items()}
SHELLS = {
    name: "".join(ast.literal_eval(line.rstrip(",")) for line in sections["shell"])
    for name, sections in ALL_RULES.items()
    if "shell" in sections
}


def test_every_rule_is_found():
    assert set(SHELLS) >= {"download", "prepare", "lr_search", "select_lr", "train", "aggregate"}
    assert set(SHELLS) >= {"train_fused", "lr_search_fused"}
    assert set(SHELLS) >= {"tables", "hypotheses", "figures", "summary_report", "study"}


@pytest.mark.parametrize("rule", sorted(SHELLS))
def test_every_value_in_a_shell_command_is_quoted(rule):
    fields = shell_fields(SHELLS[rule])
    assert fields, SHELLS[rule]
    assert [f for f, spec in fields if not spec.endswith("q")] == [], SHELLS[rule]


@pytest.mark.parametrize("rule", sorted(ALL_RULES))
def test_sections_of_every_rule_come_in_the_guides_order(rule):
    sections = list(ALL_RULES[rule])
    assert set(sections) <= set(ORDER), sections
    assert sections == sorted(sections, key=ORDER.index)


def test_the_rule_aggregate_lives_in_aggregate_smk():
    assert "aggregate" in rules(REPO / "workflow" / "aggregate.smk")
    assert not (REPO / "workflow" / "summary.smk").exists()
    assert 'include: "workflow/aggregate.smk"' in (REPO / "Snakefile").read_text()


# --------------------------------------------------------------------------- an awkward folder
# A space, a single quote, a command substitution and a variable: unquoted, the shell would split
# the path, fail on the quote, run `touch pwned` and expand $HOME.
AWKWARD = "it's my $(touch pwned) $HOME results"


@pytest.mark.slow
def test_the_demos_first_jobs_run_under_a_folder_with_a_space_a_quote_and_a_dollar(
    tmp_path, write_config, fast_config, snakemake, train_env
):
    root = tmp_path / AWKWARD
    work = root / "work dir"
    work.mkdir(parents=True)
    results, resources = root / "my results", root / "my resources"
    # A config file, not --config: the paths arrive as the user wrote them.
    override = write_config(
        root, {**fast_config, "results_dir": str(results), "resources_dir": str(resources)}
    )
    cell = {"dataset": "synthetic", "model": "mlp", "variant": "bn"}
    target = layout.run_files(results, "train", seed=42, **cell)["meta.json"]
    # download, prepare, both candidates of the search, select_lr, one training run
    res = snakemake(work, "--cores", "1", target, configs=[override], timeout=1200)
    assert res.returncode == 0, res.stderr[-4000:]
    meta = json.loads(Path(target).read_text())
    assert meta["status"] == "completed" and meta["variant"] == "bn"
    spec = fast_config["data"]["synthetic"]
    key = prepared_key("synthetic", 0.1, 0, spec)  # config.yaml's split
    assert meta["data_file"] == layout.prepared(resources, key)
    assert meta["data_sha256"] == data_sha256(meta["data_file"])
    selected = json.loads(Path(layout.selected(results, **cell)).read_text())
    assert len(selected["candidates"]) == 2
    assert Path(layout.log(results, "download", raw_source("synthetic", spec))).is_file()
    assert Path(layout.log(results, "prepare", key)).is_file()
    train_log = Path(layout.run_log(results, "train", seed=42, **cell)).read_text()
    assert "completed: wrote" in train_log and str(results) in train_log
    # Nothing ran that the path spelled: no `pwned` anywhere, no folder named after $HOME's value.
    assert not list(tmp_path.rglob("pwned")) and not (REPO / "pwned").exists()
    assert sorted(p.name for p in root.iterdir()) == sorted(
        ["work dir", "my results", "my resources", "override.yaml"]
    )

    # The status command reads the same folder back.
    cmd = [sys.executable, "-m", "normdrop.status", "--results", str(results), "--json"]
    res = subprocess.run(cmd, env=train_env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    states = {r["name"]: r["state"] for r in json.loads(res.stdout)["runs"]}
    assert states["synthetic/mlp/bn/seed42"] == "finished"
    assert states["synthetic/mlp/bn/lr0.003"] == "finished"


def test_a_cluster_run_from_a_folder_its_jobs_would_expand_stops_before_any_job(tmp_path):
    # Cluster jobs get the working directory quoted by Python's repr: with a single quote in the
    # name, `$x` would be live there. The workflow stops at its start, before any submission.
    work = tmp_path / "it's $x"
    work.mkdir()
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--executor", "slurm",
           "--jobs", "1", "--configfile", str(REPO / "workflow" / "demo.yaml")]  # fmt: skip
    res = subprocess.run(cmd, cwd=work, capture_output=True, text=True, timeout=300)
    assert res.returncode == 1
    assert "is not passed safely to cluster jobs; rename it" in res.stderr, res.stderr[-2000:]
    assert "sbatch" not in res.stdout + res.stderr and not (work / "results").exists()


def test_the_slurm_profile_hands_the_job_command_over_as_a_script():
    # Not `sbatch --wrap="<command>"`, where the submitting shell would expand `$(...)` in a path.
    profile = yaml.safe_load((REPO / "workflow" / "profiles" / "slurm" / "config.yaml").read_text())
    assert profile["slurm-pass-command-as-script"] is True
