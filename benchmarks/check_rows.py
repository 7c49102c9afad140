"""The GPU check's report: one row per checked thing, grouped in sections (gpu_check.md and
gpu_check.json show them). A library of gpu_check.py and graph_steps.py, not a script."""

from __future__ import annotations

NEEDS_CUDA = "skipped: needs CUDA"


def row(check: str, ok: bool | None, detail: str = "", keep_off: str = "", **more) -> dict:
    """One checked thing: ok True/False, or None where it needs CUDA and this is a CPU."""
    status = NEEDS_CUDA if ok is None else "pass" if ok else "fail"
    return {"check": check, "status": status, "detail": detail, "keep off": keep_off, **more}


def section(rows: list[dict], summary: str = "", **more) -> dict:
    counts = {s: sum(r["status"] == s for r in rows) for s in ("pass", "fail", NEEDS_CUDA)}
    summary = summary or ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    status = "fail" if counts["fail"] else "pass"
    return {"status": status, "summary": summary, "rows": rows, **more}
