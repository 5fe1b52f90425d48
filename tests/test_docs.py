"""The README and docs/ as a newcomer reads them: a README of at most 300 lines, no lab notebook (no UTC timestamps,
dated runs, or references to issues and to notes that are not in the repository), every link to a file or a heading
of the repository resolves, and the script that regenerates the committed samples is there."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

import backends

ROOT = backends.PROJECT_ROOT
README = ROOT / "README.md"
DOCS = ROOT / "docs"
PAGES = [README, *sorted(DOCS.glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def page_id(path: Path) -> str:
    return str(path.relative_to(ROOT))


def test_the_readme_is_at_most_300_lines():
    assert len(README.read_text().splitlines()) <= 300


def test_no_utc_timestamp_anywhere_a_reader_looks():
    """`grep -rn UTC README.md docs/ backends/ experiments/` finds nothing."""
    places = [README, *DOCS.rglob("*"), *(ROOT / "backends").rglob("*.py"), *(ROOT / "experiments").rglob("*.py")]
    hits = [f"{page_id(p)}:{n}" for p in places if p.is_file() and p.suffix in (".md", ".py", ".csv", ".json")
            for n, line in enumerate(p.read_text(errors="replace").splitlines(), 1) if "UTC" in line]
    assert not hits, hits


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_no_lab_notebook(page):
    text = page.read_text()
    assert not re.search(r"\b20\d\d-\d\d-\d\d\b", text), "a dated run"
    assert not re.search(r"\bissues?\b|\bbaselines\.md\b|reference notes", text, re.I), \
        "a reference to an issue or to notes outside the repository"


def anchors(path: Path) -> set[str]:
    """GitHub's anchors of a markdown page's headings: lower case, punctuation dropped, spaces as hyphens."""
    found = set()
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            found.add(re.sub(r"\s", "-", re.sub(r"[^\w\s-]", "", title)))
    return found


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_every_relative_link_resolves(page):
    broken = []
    for target in LINK.findall(page.read_text()):
        if re.match(r"[a-z]+:", target):
            continue  # a web address
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if "docs/samples" in str(resolved) and not (DOCS / "samples").exists():
            continue  # scripts/make-samples.sh writes them; until it has run there is nothing to link to
        if not resolved.exists():
            broken.append(target)
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            broken.append(target)
    assert not broken, broken


def test_the_readme_names_every_docs_page():
    text = README.read_text()
    missing = [p.name for p in DOCS.glob("*.md") if f"docs/{p.name}" not in text]
    assert not missing, missing


def test_the_samples_script_is_there_and_parses():
    script = ROOT / "scripts" / "make-samples.sh"
    assert script.stat().st_mode & 0o111, "not executable"
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    text = script.read_text()
    for words in ("--backend all --mode all --tuning stock --epochs 10 --seeds 0 1 2", "harness.py bench"):
        assert words in text, words


def test_the_headline_points_at_the_samples():
    section = README.read_text().split("## Headline result", 1)[1].split("\n## ", 1)[0]
    assert "docs/samples/" in section and "scripts/make-samples.sh" in section
    assert "What a correct run reaches:** about 0.85" in section


def test_the_headline_table_is_the_committed_samples():
    """The README's headline table is the one scripts/make-samples.sh wrote into docs/samples/README.md, and its
    accuracies are the committed run's (the mean over the seeds of each backend x mode's final accuracy)."""
    import pandas as pd

    samples = DOCS / "samples"
    section = README.read_text().split("## Headline result", 1)[1].split("\n## ", 1)[0]
    table = [line for line in section.splitlines() if line.startswith("| ")]
    assert table and table == [line for line in (samples / "README.md").read_text().splitlines()
                               if line.startswith("| ")]
    summary = pd.read_csv(samples / "run" / "summary.csv")
    summary = summary[summary["status"] == "ok"]
    for line in table[2:]:
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        backend, accuracies = cells[0], cells[1].split(" / ")
        for mode, shown in zip(("eager", "compiled"), accuracies):
            jobs = summary[(summary["backend"] == backend) & (summary["mode"] == mode)]
            assert shown == (f"{jobs['final_val_acc'].mean():.4f}" if len(jobs) else "-"), (backend, mode)
