"""Turns a run folder's CSVs into ``report.md`` (and, for the exercises, plots), written from the numbers."""
from __future__ import annotations

from pathlib import Path


def write(experiment: str, folder: Path) -> Path | None:
    """Write ``report.md`` for the run in ``folder``; returns its path, or None when there is nothing to report."""
    import pandas as pd

    from experiments.report import side_by_side

    summary_path = Path(folder) / "summary.csv"
    if not summary_path.exists():
        return None
    summary = pd.read_csv(summary_path)
    lines = [f"# {experiment}", "", "```", side_by_side(summary.to_dict("records")), "```", ""]
    report = Path(folder) / "report.md"
    report.write_text("\n".join(lines))
    return report
