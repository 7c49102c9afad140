"""The repository stands on its own: a user's clone has everything its files point to."""

from __future__ import annotations

import re
import subprocess
import tomllib
from pathlib import Path

import yaml

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


# --------------------------------------------------------------------------- the README's layout
def readme_sections() -> list[tuple[str, list[str]]]:
    """(heading, body lines) of each `## ` section of README.md, in order."""
    sections: list[tuple[str, list[str]]] = []
    for line in (REPO / "README.md").read_text().splitlines():
        if line.startswith("## "):
            sections.append((line[3:].strip(), []))
        elif sections:
            sections[-1][1].append(line)
    return sections


def test_readme_opens_with_a_quick_start_of_at_most_15_lines_then_the_contents():
    (first, body), (second, _) = readme_sections()[:2]
    assert (first, second) == ("Quick start", "Contents")
    lines = "\n".join(body).strip("\n").splitlines()
    assert 0 < len(lines) <= 15, f"the quick start has {len(lines)} lines"
    text = "\n".join(lines)
    assert "./dev.sh demo" in text and "./dev.sh test" in text and "report.html" in text


def test_every_docs_link_in_the_readme_resolves_to_a_file():
    text = (REPO / "README.md").read_text()
    links = re.findall(r"\]\((docs/[^)#\s]+)(?:#[^)]*)?\)", text)
    pages = {"slurm", "gpu", "studies", "faults", "speed", "protocol"}
    assert {Path(link).stem for link in links} >= pages  # the reference pages are linked
    missing = sorted({link for link in links if not (REPO / link).is_file()})
    assert not missing, f"README links to missing files: {missing}"
    for page in sorted((REPO / "docs").glob("*.md")):  # and the pages' own relative links
        targets = re.findall(r"\]\(([^)#\s:]+)(?:#[^)]*)?\)", page.read_text())
        broken = [t for t in targets if not (page.parent / t).exists()]
        assert not broken, f"docs/{page.name} links to missing files: {broken}"


def test_license_file_matches_pyproject():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    license_name = project["license"]["text"]
    text = (REPO / "LICENSE").read_text()
    assert text.startswith(f"{license_name} License\n"), text[:40]
    assert re.search(r"Copyright \(c\) \d{4} normdrop contributors", text)


def test_citation_cff_names_normdrop_and_the_study_it_reproduces():
    cff = yaml.safe_load((REPO / "CITATION.cff").read_text())
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert cff["cff-version"] == "1.2.0" and cff["type"] == "software"
    assert cff["license"] == project["license"]["text"] and cff["version"] == project["version"]
    (study,) = cff["references"]
    # The README quotes the study's title; the citation must name the same article.
    title = re.search(r'the study "([^"]+)"', (REPO / "README.md").read_text()).group(1)
    assert study["title"].split() == title.split()
    assert study["type"] == "article" and study["journal"].startswith("IACSE")
    assert (study["year"], study["volume"], study["start"], study["end"]) == (2024, 5, 1, 8)
