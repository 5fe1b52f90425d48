"""Turns a run folder's CSVs into ``report.md`` and its plots, written from the numbers by the code.

The section's run (``d2l``) gets the side-by-side table; each exercise's analysis (its file in
``experiments/exercises/``) returns the report's sections and draws its plots with the shared helpers of
``experiments.sections``, ``experiments.plots`` and ``experiments.stats``.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from experiments.catalog import CATALOG
from experiments.results import Run
from experiments.sections import across_setups, report_header, side_by_side


def write(experiment: str, folder: Path) -> Path | None:
    """Write ``report.md`` (and the plots) for the run in ``folder``; returns its path, or None when there is
    nothing to report."""
    folder = Path(folder)
    summary_path = folder / "summary.csv"
    if not summary_path.exists():
        return None
    entry = CATALOG.get(experiment)
    analysis = entry.analysis if entry is not None else None
    summary = pd.read_csv(summary_path)
    runs_table = ["```", side_by_side(summary.to_dict("records")), "```", ""]
    if analysis is None:
        lines = [f"# {experiment}", "", *runs_table]
    else:
        run = Run(experiment, folder)
        lines = (report_header(run, entry.description) + analysis(run) + [""] + across_setups(run)
                 + ["## Runs", "", *runs_table])
    report = folder / "report.md"
    report.write_text("\n".join(lines))
    return report
