"""The benchmark and the GPU check: their tiny modes on CPU (so that neither can rot), and the
graph-vs-eager comparison shown to catch the graphs that train wrong."""

from __future__ import annotations

import argparse
import importlib
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]

sys.path.insert(0, str(REPO / "benchmarks"))
gpu_check = importlib.import_module("gpu_check")
graph_steps = importlib.import_module("graph_steps")
speed = importlib.import_module("speed")
check_rows = importlib.import_module("check_rows")

# What the loaned GPU machine has: snakemake and jsonschema cannot be imported, in the check's
# process and in every process it starts (a sitecustomize first on PYTHONPATH blocks them).
BLOCKER = REPO / "tests" / "no_workflow_packages"


@pytest.fixture(scope="module")
def gpu_machine_env(train_env) -> dict[str, str]:
    return {**train_env, "PYTHONPATH": f"{BLOCKER}{os.pathsep}{REPO / 'src'}"}


# The documented command, with --device cpu --tiny: PYTHONPATH=src python3 benchmarks/gpu_check.py
GPU_CHECK = [sys.executable, "benchmarks/gpu_check.py", "--device", "cpu", "--tiny"]
MAX_FILES = 6  # what may come back from a loaned machine: at most 8 files; the check keeps to 6


def files_under(out) -> list:
    return [p for p in out.rglob("*") if p.is_file()]


@pytest.fixture(scope="module")
def run_gpu_check(gpu_machine_env):
    def run_gpu_check(out, *args):
        cmd = [*GPU_CHECK, "--out", str(out), *args]
        res = subprocess.run(
            cmd, cwd=REPO, env=gpu_machine_env, capture_output=True, text=True, timeout=1500
        )
        assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
        report = json.loads((out / "gpu_check.json").read_text())
        first_line = (out / "gpu_check.md").read_text().splitlines()[0]
        assert first_line == f"# GPU check: {report['verdict']}"
        assert res.stdout.strip().splitlines()[-1] == f"gpu-check: {report['verdict']}"
        assert len(files_under(out)) <= MAX_FILES, files_under(out)
        return report

    return run_gpu_check


def test_everything_the_check_imports_imports_without_snakemake_and_jsonschema(gpu_machine_env):
    # the check, its libraries, and what its subprocesses run (the training CLI, the lease
    # holder, the speed workers); the blocker itself must work, or this proves nothing
    modules = ["gpu_check", "graph_steps", "check_rows", "speed", "fused_speed"]
    modules += ["normdrop.train", "normdrop.gpu_lease", "normdrop.checkpoints"]
    code = (
        "import importlib, sys; sys.path.insert(0, 'benchmarks')\n"
        "for blocked in ('snakemake', 'jsonschema'):\n"
        "    try:\n        importlib.import_module(blocked)\n    except ModuleNotFoundError:\n"
        "        pass\n    else:\n        raise SystemExit(f'{blocked} was importable')\n"
        f"for m in {modules!r}:\n    importlib.import_module(m)\n"
        "print(sorted(m for m in sys.modules if m.startswith(('snakemake', 'jsonschema'))))"
    )
    res = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=gpu_machine_env, capture_output=True,
        text=True, timeout=300,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.strip() == "[]"


def test_killed_after_its_first_section_the_check_leaves_that_sections_report(
    tmp_path, gpu_machine_env
):
    out = tmp_path / "out"
    cmd = [*GPU_CHECK, "--out", str(out), "--sections", "leases", "precision"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=gpu_machine_env, stdout=subprocess.PIPE, text=True)
    try:
        for line in proc.stdout:  # printed once the report holds the section
            if line.startswith("leases: "):
                os.kill(proc.pid, signal.SIGKILL)
                break
    finally:
        proc.kill()
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    report = json.loads((out / "gpu_check.json").read_text())
    assert sorted(r["slot"] for r in report["sections"]["leases"]["rows"]) == [0, 1]
    assert report["verdict"].startswith("INCOMPLETE on cpu")
    assert "not run yet: precision" in report["verdict"]
    md = (out / "gpu_check.md").read_text()
    assert md.splitlines()[0] == f"# GPU check: {report['verdict']}"
    assert "## leases: pass" in md and "process 2" in md
    assert len(files_under(out)) <= MAX_FILES


def boom():
    raise ValueError("boom: the graph was captured wrong")


def crashing_section(c):
    raise RuntimeError("outside any row")


def test_a_failure_fails_its_row_and_the_rest_still_runs(tmp_path, monkeypatch, capsys):
    def graphs(c):
        rows = check_rows.guard("graph == eager, cnn", "cuda_graphs", boom)
        return check_rows.section(rows + [check_rows.row("graph == eager, vit", True)])

    sections = {"graphs": graphs, "smoke": crashing_section, "leases": gpu_check.leases}
    monkeypatch.setattr(gpu_check, "SECTIONS", sections)
    monkeypatch.setitem(os.environ, "PYTHONPATH", str(REPO / "src"))
    out = tmp_path / "out"
    assert gpu_check.main(["--device", "cpu", "--tiny", "--out", str(out)]) == 1
    report = json.loads((out / "gpu_check.json").read_text())
    rows = {r["check"]: r for r in report["sections"]["graphs"]["rows"]}
    assert rows["graph == eager, cnn"]["status"] == "fail"
    assert rows["graph == eager, cnn"]["detail"] == (
        "crashed: ValueError: boom: the graph was captured wrong"
    )
    assert rows["graph == eager, vit"]["status"] == "pass"
    assert "outside any row" in report["sections"]["smoke"]["traceback"]
    assert report["sections"]["leases"]["status"] == "pass"  # after the crash: still run
    assert report["verdict"].startswith("FAIL on cpu")
    assert (
        "keep off: cuda_graphs (graphs: graph == eager, cnn: crashed: ValueError"
        in (report["verdict"])
    )
    assert "what section smoke checks (crashed: RuntimeError" in report["verdict"]


def test_sections_past_the_time_budget_are_skipped_and_named(tmp_path, monkeypatch):
    ran = []
    sections = {name: (lambda c, n=name: ran.append(n) or check_rows.section([])) for name in
                ("graphs", "smoke", "leases")}  # fmt: skip
    monkeypatch.setattr(gpu_check, "SECTIONS", sections)
    projected = {"graphs": (0, 1), "smoke": (0, 500), "leases": (0, 1)}
    monkeypatch.setattr(gpu_check, "PROJECTED_S", projected)
    out = tmp_path / "out"
    argv = ["--device", "cpu", "--tiny", "--out", str(out), "--budget-s", "60"]
    assert gpu_check.main(argv) == 0
    assert ran == ["graphs", "leases"]
    report = json.loads((out / "gpu_check.json").read_text())
    assert list(report["skipped"]) == ["smoke"] and "projected 500 s" in report["skipped"]["smoke"]
    assert report["verdict"].endswith("skipped for time: smoke")
    md = (out / "gpu_check.md").read_text()
    assert "## smoke: skipped for time (projected 500 s" in md
    assert "projected seconds per section" in md and "smoke 500" in md


def test_precision_comparison_fails_beyond_the_seed_spread():
    fp32 = {("fp32", s): {"test_acc": 0.80 + 0.01 * i, "train_loss": 0.50 + 0.02 * i}
            for i, s in enumerate((42, 43, 44, 45))}  # fmt: skip

    def bf16(acc_shift, loss_shift):
        return {("bf16", s): {"test_acc": v["test_acc"] + acc_shift,
                              "train_loss": v["train_loss"] + loss_shift}
                for (_, s), v in fp32.items()}  # fmt: skip

    close = fp32 | bf16(0.002, 0.001)
    far = fp32 | bf16(-0.05, 0.2)
    for metric in ("test_acc", "train_loss"):
        assert gpu_check.compare(close, "bf16", "fp32", metric, 1024)["status"] == "pass"
        row = gpu_check.compare(far, "bf16", "fp32", metric, 1024)
        assert row["status"] == "fail" and row["keep off"] == "precision: bf16", row
    # accuracies: seed SD 0.0129 (binomial floor at 1,024 images 0.0121), x 2 x sqrt(2 / 4)
    row = gpu_check.compare(close, "bf16", "fp32", "test_acc", 1024)
    assert "tolerance 0.0183" in row["detail"], row["detail"]


def test_concurrent_windows_start_together_and_count_their_images(tmp_path):
    cfg = speed.bench_config("mlp", 16, 0.5, batch_size=32)
    run = speed.prepare_window(cfg, speed.synthetic(tmp_path, 64, "cifar"), torch.device("cpu"))
    start = time.time() + 0.3
    r = run(start, 0.2)
    assert r["start"] == start and r["end"] - start >= 0.2
    assert r["images"] > 0 and r["images"] % 32 == 0


@pytest.fixture
def check(tmp_path):
    return gpu_check.Check(argparse.Namespace(device="cpu", tiny=True, out=tmp_path / "out"))


def test_graphs_section_runs_the_comparison_on_cpu(tmp_path, run_gpu_check):
    report = run_gpu_check(tmp_path / "out", "--sections", "graphs")
    assert report["verdict"].startswith("PASS on cpu (tiny")
    rows = {r["check"]: r for r in report["sections"]["graphs"]["rows"]}
    for model in ("mlp", "cnn", "resnet20", "vit", "lstm"):
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
    for model, layout in itertools.product(("cnn", "resnet20"), ("contiguous", "channels_last")):
        fused = rows[f"fused graph == fused eager, {model} K=3 {layout}"]
        assert fused["status"] == "pass" and "bitwise True" in fused["detail"]
        assert "eager stand-in" in fused["detail"]
        restored = rows[f"fused capture restores state, {model} {layout}"]
        assert restored["status"] == "skipped: needs CUDA"
    refused = rows["graphs refused: lstm, norm none + dropout"]
    assert refused["status"] == "pass" and "lstm with norm none and dropout" in refused["detail"]
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


def test_fused_graph_row_catches_a_graph_that_skips_the_optimizer(check, monkeypatch):
    def frozen_weights(step, model, optimizer, x_shape, device):
        """A 'graph' whose replays update no member (as if Adam's step were not captured)."""
        return lambda x, y, active: step(x, y, torch.zeros_like(active))

    monkeypatch.setattr(graph_steps, "capture_fused", frozen_weights)
    row = graph_steps.fused_graph_vs_eager(check, "cnn", "channels_last")[0]
    assert row["status"] == "fail" and row["keep off"] == "cuda_graphs with fuse"
    # step 1's losses are computed before the update: equal; step 2's are not
    assert "first difference at step 2, losses" in row["detail"], row


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
        assert any(r.startswith(f"| {model} | 3 |") for r in rows), res.stdout  # fused K = 3
    assert any(r.startswith("| **grid** | **") and r.endswith(" h** |") for r in rows)
    assert "| textbook | eager | best | best / textbook |" in res.stdout


@pytest.mark.slow  # a few minutes on a loaded 2-core machine
def test_gpu_check_tiny_runs_every_section_that_cpu_can(tmp_path, run_gpu_check):
    report = run_gpu_check(tmp_path / "out", "--budget-s", "3600")  # a loaded machine
    assert report["verdict"].startswith("PASS on cpu (tiny: figures mean nothing)")
    assert report["skipped"] == {}
    sections = report["sections"]
    assert list(sections) == ["graphs", "smoke", "resume", "leases", "precision", "speed", "fusion"]
    for name, s in sections.items():
        assert s["status"] in ("pass", "info"), (name, s)
        assert s["summary"] and "traceback" not in s
    assert sections["smoke"]["summary"].startswith("40/40 runs")  # 5 models x 4 variants x 2
    smoked = {r["check"].split()[1] for r in sections["smoke"]["rows"]}
    assert smoked == {"mlp", "cnn", "resnet20", "vit", "lstm"}
    assert [r["bitwise"] for r in sections["resume"]["rows"]][0] is True
    assert sorted(r["slot"] for r in sections["leases"]["rows"]) == [0, 1]
    precision = sections["precision"]["rows"]
    assert len(precision) == 6  # 2 seeds x fp32, bf16; test_acc and train_loss compared
    assert [r["status"] for r in precision[-2:]] == ["info", "info"]  # tiny: information only
    assert {r["model"] for r in sections["speed"]["rows"]} == {"mlp", "cnn", "resnet20"}
    assert all(r["eager"] > 0 and r["textbook"] > 0 for r in sections["speed"]["rows"])
    mlp = next(r for r in sections["speed"]["rows"] if r["model"] == "mlp")
    assert mlp["1 proc."] > 0 and mlp["2 proc."] > 0  # over one shared window
    assert sections["speed"]["grid_hours"] > 0
    assert sections["fusion"]["rows"][0]["fused images/s"] > 0


def test_a_speed_setting_that_crashes_fails_alone(tmp_path):
    # cuda_graphs on a CPU raises: that setting gets no figure and its error; eager still runs
    cfg = speed.bench_config("mlp", 16, 0.5, batch_size=32)
    settings = {"eager": {}, "cuda graphs": {"cuda_graphs": "on"}, "compile": None}
    r = speed.measure(cfg, "cifar", 2, torch.device("cpu"), tmp_path, settings, None)
    assert r["eager"] > 0 and r["best"] == "eager"
    assert r["cuda graphs"] is None and r["compile"] is None
    assert list(r["failed"]) == ["cuda graphs"]
    assert r["failed"]["cuda graphs"].startswith("ConfigError: setting 'cuda_graphs' = 'on'")


def test_speed_row_fails_naming_the_setting_that_crashed(check, monkeypatch):
    def measure(cfg, *args, **kwargs):
        return {"model": cfg.model, "eager": 100.0, "cuda graphs": None, "best": "eager",
                "failed": {"cuda graphs": "RuntimeError: capture failed"}}  # fmt: skip

    monkeypatch.setattr(speed, "measure", measure)
    r = gpu_check.speed_model(check, "cnn")
    assert r["status"] == "fail" and r["keep off"] == "cuda_graphs"
    assert r["detail"] == "cuda graphs: RuntimeError: capture failed" and r["eager"] == 100.0
    assert "failed" not in r
