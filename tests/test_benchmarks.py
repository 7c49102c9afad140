"""The benchmark and the GPU check: their tiny modes on CPU (so that neither can rot), and the
graph-vs-eager comparison shown to catch the graphs that train wrong."""

from __future__ import annotations

import argparse
import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]

sys.path.insert(0, str(REPO / "benchmarks"))
gpu_check = importlib.import_module("gpu_check")
graph_steps = importlib.import_module("graph_steps")
speed = importlib.import_module("speed")

# What a GPU machine has: importing snakemake or jsonschema fails (a None in sys.modules).
WITHOUT_WORKFLOW_PACKAGES = (
    "import sys; sys.modules['snakemake'] = sys.modules['jsonschema'] = None"
)


@pytest.fixture(scope="module")
def run_gpu_check(train_env):
    def run_gpu_check(out, *args):
        code = (
            f"{WITHOUT_WORKFLOW_PACKAGES}; import runpy; sys.path.insert(0, 'benchmarks'); "
            "sys.argv = ['gpu_check.py', *sys.argv[1:]]; "
            "runpy.run_path('benchmarks/gpu_check.py', run_name='__main__')"
        )
        cmd = [sys.executable, "-c", code, "--device", "cpu", "--tiny", "--out", str(out), *args]
        res = subprocess.run(
            cmd, cwd=REPO, env=train_env, capture_output=True, text=True, timeout=900
        )
        assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
        report = json.loads((out / "gpu_check.json").read_text())
        first_line = (out / "gpu_check.md").read_text().splitlines()[0]
        assert first_line == f"# GPU check: {report['verdict']}"
        assert res.stdout.strip().splitlines()[-1] == f"gpu-check: {report['verdict']}"
        return report

    return run_gpu_check


@pytest.fixture
def check(tmp_path):
    return gpu_check.Check(argparse.Namespace(device="cpu", tiny=True, out=tmp_path / "out"))


def test_graphs_section_runs_the_comparison_on_cpu(tmp_path, run_gpu_check):
    report = run_gpu_check(tmp_path / "out", "--sections", "graphs")
    assert report["verdict"].startswith("PASS on cpu (tiny")
    rows = {r["check"]: r for r in report["sections"]["graphs"]["rows"]}
    for model in ("mlp", "cnn", "resnet20"):
        assert rows[f"graph == eager, {model}"]["status"] == "pass"
        assert "bitwise True" in rows[f"graph == eager, {model}"]["detail"]
        assert "eager stand-in" in rows[f"graph == eager, {model}"]["detail"]
        assert rows[f"lr reaches the graph, {model}"]["status"] == "pass"
        for needs_cuda in ("capture restores state", "no host sync per step"):
            assert rows[f"{needs_cuda}, {model}"]["status"] == "skipped: needs CUDA"
    for needs_cuda in ("resume eager -> graphs", "resume CPU -> CUDA", "compile + graphs"):
        assert rows[needs_cuda]["status"] == "skipped: needs CUDA"
    assert rows["lease without nvidia-smi"]["status"] == "skipped: needs CUDA"
    assert rows["augment crop_flip"]["status"] == "pass"
    assert list(report["sections"]) == ["graphs"]


def frozen_dropout_masks(step, model, optimizer, x_shape, memory_format, device):
    """A 'graph' that replays the RNG state of its capture: every step the same dropout masks."""
    rng = torch.get_rng_state()

    def replay(x, y):
        torch.set_rng_state(rng)
        return step(x, y)

    return replay


def stale_lr(step, model, optimizer, x_shape, memory_format, device):
    """A 'graph' that keeps reading the learning rate it was captured with."""
    captured = optimizer.param_groups[0]["lr"]

    def replay(x, y):
        current = optimizer.param_groups[0]["lr"]
        optimizer.param_groups[0]["lr"] = captured
        try:
            return step(x, y)
        finally:
            optimizer.param_groups[0]["lr"] = current

    return replay


def test_graph_vs_eager_catches_frozen_dropout_masks(check, monkeypatch):
    monkeypatch.setattr(graph_steps, "capture", frozen_dropout_masks)
    row = graph_steps.graph_vs_eager(check, "mlp")[0]
    assert row["status"] == "fail" and row["keep off"] == "cuda_graphs"
    # step 1 draws the same masks as eager; step 2 repeats them where eager draws new ones
    assert "first difference at step 2," in row["detail"], row


def test_lr_check_catches_a_graph_reading_a_stale_lr(check, monkeypatch):
    monkeypatch.setattr(graph_steps, "capture", stale_lr)
    row = graph_steps.lr_reaches_graph(check, "cnn")
    assert row["status"] == "fail" and "at lr 0 a replay changed" in row["detail"], row


def test_first_difference_reports_step_and_tensor_and_tolerance():
    base = [{"w": torch.ones(3), "n": torch.tensor(1)} for _ in range(3)]
    same = [{k: v.clone() for k, v in s.items()} for s in base]
    same_run = graph_steps.first_difference(base, same)
    assert same_run == {"bitwise": True, "first difference": None, "ok": True}
    close = [{k: v.clone() for k, v in s.items()} for s in base]
    close[1]["w"][0] += 1e-7  # within GRAPH_TOLERANCE, not bitwise
    d = graph_steps.first_difference(base, close)
    assert d["ok"] and not d["bitwise"] and d["first difference"].startswith("step 2, w")
    counted = [{k: v.clone() for k, v in s.items()} for s in base]
    counted[2]["n"] += 1  # an integer (num_batches_tracked, RNG state) must be equal
    d = graph_steps.first_difference(base, counted)
    assert not d["ok"] and d["first difference"].startswith("step 3, n")


def test_verdict_names_the_setting_to_keep_off():
    rows = [
        {
            "check": "graph == eager, cnn",
            "status": "fail",
            "detail": "step 2",
            "keep off": "cuda_graphs",
        },
        {"check": "augment crop_flip", "status": "pass", "detail": "", "keep off": "augment"},
    ]
    report = {
        "machine": {"device": "cuda:0 (H100)"},
        "seconds": 61.0,
        "sections": {"graphs": {"status": "fail", "summary": "", "rows": rows}},
    }
    verdict = gpu_check.verdict(report, tiny=False)
    assert verdict.startswith("FAIL on cuda:0 (H100) in 61 s: keep off: cuda_graphs (graphs: graph")
    assert "augment" not in verdict


def test_grid_epochs_counts_every_run_of_the_grid():
    import yaml

    config = yaml.safe_load((REPO / "config.yaml").read_text())
    cells = speed.grid_epochs(config)
    per_cell = len(config["variants"]) * (
        len(config["seeds"]) + len(config["lr_search"]["candidates"])
    )
    assert len(cells) == len(config["datasets"]) * len(config["models"])
    assert all(c["runs"] == per_cell for c in cells)
    epochs = len(config["variants"]) * (
        len(config["seeds"]) * config["train"]["epochs"]
        + len(config["lr_search"]["candidates"]) * config["lr_search"]["epochs"]
    )
    assert all(c["epochs"] == epochs for c in cells)
    config["select"] = {"models": ["cnn"], "cells": ["cifar10/cnn"]}
    assert [(c["dataset"], c["model"]) for c in speed.grid_epochs(config)] == [("cifar10", "cnn")]


@pytest.mark.slow  # a minute or more on a loaded 2-core machine
def test_bench_tiny_runs_and_prints_every_model(train_env):
    cmd = [sys.executable, "benchmarks/bench_train.py", "--device", "cpu", "--tiny"]
    res = subprocess.run(cmd, cwd=REPO, env=train_env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    rows = [line for line in res.stdout.splitlines() if line.startswith("| ")]
    for model in ("mlp", "cnn", "resnet20"):
        assert any(r.startswith(f"| {model} | cifar |") for r in rows), res.stdout
        assert any(r.startswith(f"| {model} | mnist |") for r in rows), res.stdout
        assert any(r.startswith(f"| {model} |") and r.endswith(" h |") for r in rows), res.stdout
    assert any(r.startswith("| **grid** | **") and r.endswith(" h** |") for r in rows)
    assert "| textbook | eager | best | best / textbook |" in res.stdout


@pytest.mark.slow  # a few minutes on a loaded 2-core machine
def test_gpu_check_tiny_runs_every_section_that_cpu_can(tmp_path, run_gpu_check):
    report = run_gpu_check(tmp_path / "out")
    assert report["verdict"].startswith("PASS on cpu (tiny: figures mean nothing)")
    sections = report["sections"]
    assert list(sections) == ["graphs", "smoke", "resume", "leases", "precision", "speed", "fusion"]
    for name, s in sections.items():
        assert s["status"] in ("pass", "info"), (name, s)
        assert s["summary"] and "traceback" not in s
    assert sections["smoke"]["summary"].startswith("24/24 runs")
    assert [r["bitwise"] for r in sections["resume"]["rows"]][0] is True
    assert sorted(r["slot"] for r in sections["leases"]["rows"]) == [0, 1]
    assert len(sections["precision"]["rows"]) == 6
    assert {r["model"] for r in sections["speed"]["rows"]} == {"mlp", "cnn", "resnet20"}
    assert all(r["eager"] > 0 and r["textbook"] > 0 for r in sections["speed"]["rows"])
    assert sections["speed"]["grid_hours"] > 0
    assert sections["fusion"]["rows"][0]["fused images/s"] > 0
