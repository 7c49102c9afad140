"""The repository stands on its own: a user's clone has everything its files point to."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# A relative path that climbs with ../ (e.g. `../shared/study/PROTOCOL.md`, `../envs/x.yaml`).
CLIMB = re.compile(r"(?:\.\./)+[\w.@-]+(?:/[\w.@-]+)*")
# Names of files that lived beside the repository during its development, never in a clone.
OUTSIDE_NAMES = ("PROTOCOL.md", "shared/study", "000_ca136cc51854a3e6")


def tracked_text_files() -> list[Path]:
    out = subprocess.run(
        ["git", "ls-files", "-z"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    files = []
    for name in filter(None, out.split("\0")):
        path = REPO / name
        if path.is_file() and path.suffix not in (".png", ".pdf", ".parquet", ".pt"):
            files.append(path)
    return files


def outside_references(path: Path) -> list[str]:
    """Paths in `path`'s text that leave the repository, read relative to the file's folder and
    to the repository root (a reference is fine if either reading stays inside)."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        return []
    found = [name for name in OUTSIDE_NAMES if name in text]
    for match in CLIMB.finditer(text):
        ref = match.group(0)
        readings = [(path.parent / ref).resolve(), (REPO / ref).resolve()]
        if not any(r == REPO or REPO in r.parents for r in readings):
            found.append(ref)
    return found


def test_no_tracked_file_refers_to_a_path_outside_the_repository():
    files = tracked_text_files()
    assert len(files) > 30  # git ls-files worked: the check below is not vacuous
    bad = {str(p.relative_to(REPO)): refs for p in files if (refs := outside_references(p))}
    bad.pop("tests/test_repository.py", None)  # this file names them in order to look for them
    assert not bad, f"references outside the repository: {bad}"


def test_the_check_catches_an_outside_reference(tmp_path):
    # The detector itself, on a file inside the repository tree that climbs out of it.
    probe = REPO / "docs" / ".probe-outside-reference.md"
    try:
        probe.write_text("see `../../shared/study/PROTOCOL.md` and ../envs/normdrop.yaml\n")
        refs = outside_references(probe)
    finally:
        probe.unlink(missing_ok=True)
    assert "../../shared/study/PROTOCOL.md" in refs and "PROTOCOL.md" in refs
    assert "../envs/normdrop.yaml" not in refs  # docs/../envs is inside the repository


def test_the_protocol_page_is_in_the_repository_and_linked():
    text = (REPO / "docs" / "protocol.md").read_text()
    for heading in ("## The grid", "## Data", "### Initialization", "## Training", "## Metrics"):
        assert f"\n{heading}" in text, heading
    for pointer in ("README.md", "config.yaml", "workflow/report/workflow.rst"):
        assert "docs/protocol.md" in (REPO / pointer).read_text(), pointer
