"""Turns a run folder's CSVs into ``report.md`` and its plots, written from the numbers by the code.

Every report opens with what ran (``sections.report_header``). The section's own run (``d2l``, number 0) is all
side by side and its analysis lays out the rest of the report; an exercise's analysis (its file in
``experiments/exercises/``) returns its sections, and the report adds the learning curves of its variants, the
comparison across backends and the runs table.
"""
from __future__ import annotations

from pathlib import Path

from experiments.catalog import CATALOG
from experiments.report.results import Run
from experiments.report.sections import across_setups, learning_curves_section, report_header, runs_section


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
    report.write_text("\n".join(lines + how_the_jobs_ran(run)) + "\n")
    return report


def how_the_jobs_ran(run: Run) -> list[str]:
    """What the tables cannot show at a glance: jobs reused from an earlier run, jobs that shared a host."""
    summary = run.summary
    notes = []
    if "reused" in summary:
        reused = summary[summary["reused"].astype(str) == "yes"]
        if len(reused):
            names = ", ".join(f"{r.backend} {getattr(r, 'tuning', 'tuned')} {r.impl} {r.mode} {r.variant} seed {r.seed}"
                              for r in reused.itertuples())
            notes.append(f"- {len(reused)} of {len(summary)} jobs were reused from an earlier run into this folder "
                         f"(`reused` = yes in summary.csv): same fingerprint, not rerun: {names}.")
    if "concurrent_jobs" in summary:
        shared = summary[summary["concurrent_jobs"].fillna(1).astype(float) > 1]
        if len(shared):
            notes.append(f"- {len(shared)} jobs ran while other jobs ran on the same host (`concurrent_jobs` in "
                         "summary.csv): they shared its CPUs and memory bandwidth, so their timings are not those "
                         "of a machine to themselves; compare timings only of jobs with concurrent_jobs = 1.")
    return ["", "## How the jobs ran", "", *notes] if notes else []
