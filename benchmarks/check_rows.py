"""The GPU check's report: one row per checked thing, grouped in sections (gpu_check.md and
gpu_check.json show them), a failure kept to its row (`guard`), the verdict, and the two report
files, rewritten after every section. A library of gpu_check.py and graph_steps.py, not a script.
"""

from __future__ import annotations

import json
import traceback
from pathlib import Path

import speed

NEEDS_CUDA = "skipped: needs CUDA"


def row(check: str, ok: bool | None, detail: str = "", keep_off: str = "", **more) -> dict:
    """One checked thing: ok True/False, or None where it needs CUDA and this is a CPU."""
    status = NEEDS_CUDA if ok is None else "pass" if ok else "fail"
    return {"check": check, "status": status, "detail": detail, "keep off": keep_off, **more}


def section(rows: list[dict], summary: str = "", **more) -> dict:
    counts = {s: sum(r["status"] == s for r in rows) for s in ("pass", "fail", NEEDS_CUDA, "info")}
    summary = summary or ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    status = "fail" if counts["fail"] else "pass"
    return {"status": status, "summary": summary, "rows": rows, **more}


def guard(check: str, keep_off: str, fn, *args, **kwargs) -> list[dict]:
    """fn's rows (a row or a list of them), or, if it raises, one FAIL row named `check` with
    the error: the other rows and sections of the check still run."""
    try:
        out = fn(*args, **kwargs)
    except Exception as err:
        first = (str(err).strip().splitlines() or [""])[0]
        tb = traceback.format_exc()[-3000:]
        return [
            row(check, False, f"crashed: {type(err).__name__}: {first}", keep_off, traceback=tb)
        ]
    return out if isinstance(out, list) else [out]


# --------------------------------------------------------------------------- verdict, files
def verdict(report: dict, tiny: bool, pending=()) -> str:
    """PASS, or FAIL and the settings to keep off with the reason for each; device, time, and
    the sections skipped for time. INCOMPLETE while `pending` sections are still to run."""
    keep_off = {}
    for name, s in report["sections"].items():
        if "traceback" in s:
            keep_off.setdefault(f"what section {name} checks", s["summary"])
        for r in s.get("rows", []):
            if r.get("status") == "fail":
                keep_off.setdefault(r["keep off"], f"{name}: {r['check']}: {r['detail']}")
    tiny_note = " (tiny: figures mean nothing)" if tiny else ""
    head = f"on {report['machine']['device']}{tiny_note} in {report['seconds']:.0f} s"
    skipped = report.get("skipped", {})
    tail = f"; skipped for time: {', '.join(skipped)}" if skipped else ""
    if pending:
        so_far = "FAIL so far" if keep_off else "no failure so far"
        return f"INCOMPLETE {head} ({so_far}; not run yet: {', '.join(pending)}){tail}"
    if not keep_off:
        return f"PASS {head}{tail}"
    failures = "; ".join(f"{k} ({v[:200]})" for k, v in keep_off.items())
    return f"FAIL {head}: keep off: {failures}{tail}"


def write_report(out: Path, report: dict) -> None:
    """out/gpu_check.json and out/gpu_check.md (first line: the verdict), each replaced whole:
    a check killed between two sections leaves the report of the sections before."""
    out.mkdir(parents=True, exist_ok=True)
    _replace(out / "gpu_check.json", json.dumps(report, indent=2, default=str) + "\n")
    md = [f"# GPU check: {report['verdict']}", ""]
    md += [f"- {k}: {v}" for k, v in report["machine"].items()]
    budget = report.get("budget")
    if budget:
        md += ["", f"Time budget {budget['budget_s']:g} s; projected seconds per section "]
        md[-1] += f"({budget['basis']}): " + ", ".join(
            f"{k} {v}" for k, v in budget["plan"].items()
        )
    skipped = report.get("skipped", {})
    for name in (budget or {}).get("plan", report["sections"]):  # in the order they run
        if name in skipped:
            md += ["", f"## {name}: skipped for time ({skipped[name]})"]
        if name not in report["sections"]:
            continue
        s = report["sections"][name]
        projected = f", projected {s['projected_s']} s" if s.get("projected_s") else ""
        md += ["", f"## {name}: {s['status']} ({s['seconds']} s{projected})", "", s["summary"], ""]
        md += [s["note"], ""] if s.get("note") else []
        rows = [{k: v for k, v in r.items() if k != "traceback"} for r in s.get("rows", [])]
        md += [speed.markdown_table(rows)] if rows else []
        for r in (r for r in s.get("rows", []) if r.get("traceback")):
            md += ["", f"{r['check']}:", "```", r["traceback"].rstrip(), "```"]
        md += ["", "```", s["traceback"].rstrip(), "```"] if s.get("traceback") else []
    _replace(out / "gpu_check.md", "\n".join(md) + "\n")


def _replace(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")  # the same folder: the rename is atomic
    tmp.write_text(text)
    tmp.replace(path)
