"""normdrop.layout: the one place that spells where a run's files live, and the walk over the grid.

A template changed in layout.py moves the workflow's rules, the aggregate and the status command
together; no other file under src/, workflow/ or benchmarks/ spells a piece of a run's path."""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
import sys
import tokenize
from pathlib import Path

import pytest

from normdrop import layout
from normdrop.workflow_config import load_config

REPO = Path(__file__).resolve().parents[1]

DEMO = REPO / "workflow" / "demo.yaml"


# ------------------------------------------------------------------ one change, three users
# In a copy of the repository: runs named s42 (not seed42), candidates rate0.003 (not lr0.003),
# checkpoints under ckpt/ (not scratch/), logs under joblogs/ (not logs/).
CHANGES = {
    'RUN = CELL + "/seed{seed}"': 'RUN = CELL + "/s{seed}"',
    'CANDIDATE = CELL + "/lr{lr}"': 'CANDIDATE = CELL + "/rate{lr}"',
    'SCRATCH = "scratch"': 'SCRATCH = "ckpt"',
    'LOGS = "logs"': 'LOGS = "joblogs"',
}

# Run with the copy's src/: writes a finished-looking grid where the copy's layout puts it, then
# reads it back with the copy's aggregate and status.
AGGREGATE_AND_STATUS = """
import json, sys
from pathlib import Path
import pandas as pd
from normdrop import aggregate, layout, status
from normdrop.workflow_config import load_config

results, configfile = Path(sys.argv[1]), Path(sys.argv[2])
config = {**load_config([configfile]), "results_dir": str(results)}
for run in layout.iter_runs(config):
    paths = run.paths(results)
    paths["meta"].parent.mkdir(parents=True, exist_ok=True)
    meta = {"settings": run.settings.to_dict(), "lr": 0.003, "status": "diverged",
            "diverged_epoch": 1, "train_eval_acc": None, "param_count": 1, "wall_time_s": 1.0,
            "git_revision": "abc"}
    paths["meta"].write_text(json.dumps(meta))
    pd.DataFrame({"epoch": [1], "wall_time_s": [1.0]}).to_parquet(paths["epochs"])
    selected = Path(layout.selected(results, **run.wildcards))
    selected.write_text(json.dumps({"lr": 0.003, "candidates": []}))
runs, epochs, _ = aggregate.collect_runs(config)
grid = [status.inspect(r, 0.0) for r in status.grid_runs(config, results)]
print(json.dumps({
    "aggregated": len(runs),
    "status": sorted({r.state for r in grid}),
    "status_paths": [str(p) for r in grid for p in r.paths.values()],
}))
"""


@pytest.fixture(scope="module")
def changed_copy(tmp_path_factory) -> Path:
    copy = tmp_path_factory.mktemp("repo")
    for name in ("Snakefile", "config.yaml"):
        shutil.copy2(REPO / name, copy / name)
    for name in ("workflow", "src", "envs"):
        shutil.copytree(REPO / name, copy / name, ignore=shutil.ignore_patterns("__pycache__"))
    module = copy / "src" / "normdrop" / "layout.py"
    text = module.read_text()
    for old, new in CHANGES.items():
        assert text.count(old) == 1, old  # the template is defined once, here
        text = text.replace(old, new)
    module.write_text(text)
    return copy


def test_a_changed_template_moves_the_rules_the_aggregate_and_status(changed_copy, tmp_path):
    # The rules: a dry run of the copy's Snakefile plans outputs, logs and checkpoints there.
    cmd = [sys.executable, "-m", "snakemake", "-s", str(changed_copy / "Snakefile"), "-n", "-p",
           "--directory", str(tmp_path), "--cores", "1", "--configfile", str(DEMO)]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    plan = res.stdout
    assert "results/demo/runs/synthetic/mlp/bn/s43/meta.json" in plan
    assert "results/demo/lr_search/synthetic/mlp/bn/rate0.003/meta.json" in plan
    assert "results/demo/joblogs/train/synthetic/mlp/bn/s43.log" in plan
    assert "--checkpoint results/demo/ckpt/runs/synthetic/mlp/bn/s43.ckpt" in plan
    assert "results/demo/joblogs/select_lr/synthetic/mlp/bn.log" in plan
    assert "--gpu-lock-dir results/demo/ckpt/gpu-locks" in plan
    for old in ("/seed4", "/lr0.0", "/scratch/", "/logs/"):
        assert old not in plan, old

    # The aggregate and status of the copy read the grid where the copy's layout writes it.
    script = tmp_path / "check.py"
    script.write_text(AGGREGATE_AND_STATUS)
    results = tmp_path / "results"
    env = {"PYTHONPATH": str(changed_copy / "src"), "OMP_NUM_THREADS": "1", "PATH": ""}
    res = subprocess.run([sys.executable, str(script), str(results), str(DEMO)], env=env,
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    got = json.loads(res.stdout)
    assert got["aggregated"] == 3 * 4 * 3  # models x variants x seeds, every one found
    assert got["status"] == ["diverged"]  # every run's meta.json read where it was written
    assert (results / "runs/synthetic/cnn/bn_dropout/s44/meta.json").is_file()
    assert (results / "lr_search/synthetic/cnn/bn_dropout/rate0.01/epochs.parquet").is_file()
    paths = got["status_paths"]
    assert f"{results}/ckpt/runs/synthetic/cnn/bn/s42.ckpt" in paths
    assert f"{results}/joblogs/lr_search/synthetic/cnn/bn/rate0.01.log" in paths
    assert not [p for p in paths if "seed4" in p or "/lr0" in p or "scratch" in p]


# --------------------------------------------------------------------------- spelled once
# Pieces of a run's path: the seed and lr wildcards as their folders spell them, the checkpoint
# and log folders, the search's choice. A string literal of code that holds one builds a path
# that layout.py should build; docstrings and comments may still describe the layout.
PIECES = re.compile(r"seed\{|\blr\{|(^|/)scratch(/|$)|(^|/)logs(/|$)|selected\.json")
SCANNED = ["src", "workflow", "benchmarks", "Snakefile"]


def _code_strings(path: Path) -> list[tuple[int, str]]:
    """(line, text) of each string literal in a Python or Snakemake file, docstrings left out."""
    found = []
    tokens = list(tokenize.generate_tokens(io.StringIO(path.read_text()).readline))
    for i, tok in enumerate(tokens):
        if tok.type != tokenize.STRING:
            continue
        before = next((t for t in reversed(tokens[:i]) if t.type not in _LAYOUT_TOKENS), None)
        if before is None or before.type in (tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT):
            after = tokens[i + 1] if i + 1 < len(tokens) else None
            if after is None or after.type in (tokenize.NEWLINE, tokenize.ENDMARKER):
                continue  # a string alone on its line: a docstring (a rule's shell is indented)
        if _is_help(tokens[:i]):
            continue  # a CLI option's help may name a file for the user
        found.append((tok.start[0], tok.string))
    return found


def _is_help(before: list[tokenize.TokenInfo]) -> bool:
    """Whether the string after `before` is (part of) an argparse `help=` value."""
    code = [t for t in before if t.type not in _LAYOUT_TOKENS]
    while code and code[-1].type == tokenize.STRING:  # implicitly concatenated pieces
        code.pop()
    return len(code) >= 2 and code[-1].string == "=" and code[-2].string == "help"


_LAYOUT_TOKENS = (tokenize.NL, tokenize.COMMENT)


def spelled_outside_layout(root: Path) -> list[str]:
    hits = []
    for top in SCANNED:
        files = [root / top] if (root / top).is_file() else sorted((root / top).rglob("*"))
        for path in files:
            if path.suffix not in (".py", ".smk", "") or not path.is_file():
                continue
            if path.name == "layout.py" and path.parent.name == "normdrop":
                continue
            for line, text in _code_strings(path):
                if any(PIECES.search(part) for part in re.split(r"[\"'\s]", text)):
                    hits.append(f"{path.relative_to(root)}:{line}: {text}")
    return hits


def test_run_paths_are_spelled_only_in_layout():
    assert spelled_outside_layout(REPO) == []


def test_the_scan_finds_a_path_spelled_elsewhere(tmp_path):
    # The same scan on a tree where a module builds a checkpoint path itself.
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "x.py").write_text(
        '"""Checkpoints live in scratch/ (a docstring may say so)."""\n'
        "def f(results, seed):\n"
        '    return f"{results}/scratch/runs/x/seed{seed}.ckpt"  # not in code\n'
    )
    (tmp_path / "Snakefile").write_text('rule a:\n    log:\n        f"{R}/logs/a.log",\n')
    (tmp_path / "src" / "cli.py").write_text('p.add_argument("--x", help="the selected.json")\n')
    hits = spelled_outside_layout(tmp_path)
    assert [h.split(":")[:2] for h in hits] == [["src/x.py", "3"], ["Snakefile", "3"]], hits


# --------------------------------------------------------------------------- the walk
def test_iter_runs_walks_the_workflows_grid():
    paper = list(layout.iter_runs(load_config([])))
    kinds = [r.kind for r in paper]
    assert kinds.count("train") == 108 and kinds.count("lr_search") == 144
    first = paper[0]  # per cell and variant: the candidates, then the seeds
    assert (first.kind, first.name, first.key) == (
        "lr_search",
        "mnist/mlp/none/lr0.0001",
        "lr0.0001",
    )
    assert first.settings.lr == 1e-4 and first.settings.epochs == 10  # lr_search.epochs
    train = next(r for r in paper if r.kind == "train")
    assert train.name == "mnist/mlp/none/seed42" and train.settings.seed == 42
    assert train.wildcards == {"dataset": "mnist", "model": "mlp", "variant": "none", "seed": "42"}
    study = list(layout.iter_runs(load_config([REPO / "studies" / "batch_size.yaml"])))
    assert {r.variant for r in study} >= {"bn_bs8", "gn_bs128"}  # `sweep` expanded


def test_discover_finds_each_run_by_any_of_its_files(tmp_path):
    runs = [r for r in layout.iter_runs(load_config([DEMO])) if r.model == "mlp"][:7]
    for i, run in enumerate(runs):  # one file each: meta.json, checkpoint or log in turn
        path = run.paths(tmp_path)[("meta", "checkpoint", "log")[i % 3]]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("{}")
    (tmp_path / "runs" / "stray.txt").write_text("")  # not a run's file
    found = layout.discover(tmp_path)
    assert {(r.kind, r.name) for r in found} == {(r.kind, r.name) for r in runs}


def test_a_variant_is_named_from_its_norm_and_dropout_as_the_shipped_configs_name_it():
    shipped = {}
    for extra in ([], [REPO / "studies" / "batch_size.yaml"]):
        shipped.update(load_config(extra)["variants"])
    assert set(shipped) == {"none", "bn", "dropout", "bn_dropout", "gn", "ln"}
    for name, spec in shipped.items():
        assert layout.variant_name(spec["norm"], 0.5 if spec["dropout"] else 0.0) == name
    assert layout.variant_name("layer", 0.1) == "ln_dropout"
