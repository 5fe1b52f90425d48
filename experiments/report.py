"""Turns a run folder's CSVs into ``report.md`` and its plots, written from the numbers by the code.

Every report opens with what ran (``sections.report_header``). The section's own run (``d2l``, number 0) is all
side by side and its analysis lays out the rest of the report; an exercise's analysis (its file in
``experiments/exercises/``) returns its sections, and the report adds the learning curves of its variants, the
comparison across backends and the runs table.
"""
from __future__ import annotations

from pathlib import Path

from experiments.catalog import CATALOG
from experiments.results import Run
from experiments.sections import across_setups, learning_curves_section, report_header, runs_section


def write(experiment: str, folder: Path) -> Path | None:
    """Write ``report.md`` (and the plots) for the run in ``folder``; returns its path, or None when there is
    nothing to report."""
    folder = Path(folder)
    if not (folder / "summary.csv").exists():
        return None
    entry = CATALOG.get(experiment)
    run = Run(experiment, folder)
    if entry is None or entry.analysis is None:
        lines = [f"# {experiment}", "", *learning_curves_section(run), *runs_section(run)]
    elif entry.number == 0:
        lines = report_header(run, entry.description) + entry.analysis(run)
    else:
        lines = (report_header(run, entry.description) + entry.analysis(run) + [""] + learning_curves_section(run)
                 + across_setups(run) + runs_section(run))
    report = folder / "report.md"
    report.write_text("\n".join(lines))
    return report
