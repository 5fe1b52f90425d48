"""Progress of a run through ``tqdm.auto``: a bar per job on a terminal and in Jupyter, one plain line per job
otherwise (a log file or a pipe would collect every redraw of a bar)."""
from __future__ import annotations

import os
import sys
from typing import Any

from tqdm.auto import tqdm
from tqdm.autonotebook import tqdm as display_tqdm

from experiments.running.plan import Job

IN_NOTEBOOK = display_tqdm.__module__ == "tqdm.notebook"  # tqdm.auto picked its Jupyter widget


def job_label(index: int, total: int, job: Job) -> str:
    return (f"[{index}/{total}] {job.backend:<10} {job.train.tuning:<5} {job.model.impl:<7} {job.train.mode:<8} "
            f"seed {job.train.seed} "
            f"{job.variant}")


def size_options() -> dict[str, Any]:
    """tqdm's size for a terminal that does not tell its columns or rows: tqdm reads 0 for them, then draws an
    empty line or hides the bar (as below its last row); a terminal that tells both is followed as it resizes."""
    try:
        columns, lines = os.get_terminal_size(sys.stderr.fileno())
    except (OSError, ValueError, AttributeError):
        columns, lines = 0, 0
    if columns and lines:
        return {"dynamic_ncols": True}
    return {"ncols": columns or 160, "nrows": lines or 40}


class Progress:
    """One bar per job (epochs done of the job's epochs), kept on screen when the job ends; where stderr is not a
    terminal and no notebook shows the widget, one line per job when it ends."""

    def __init__(self, enabled: bool, total_jobs: int) -> None:
        self.enabled, self.total = enabled, total_jobs
        self.bars_shown = IN_NOTEBOOK or sys.stderr.isatty()
        self.bars: dict[int, Any] = {}
        self.last: dict[int, str] = {}

    def _bar(self, index: int, job: Job):
        if index not in self.bars:
            self.bars[index] = tqdm(total=job.train.epochs, desc=job_label(index, self.total, job), unit="epoch",
                                    leave=True, file=sys.stderr, **({} if IN_NOTEBOOK else size_options()),
                                    bar_format="{desc} {bar:16} {n_fmt}/{total_fmt} epochs [{elapsed}{postfix}]")
        return self.bars[index]

    def epoch(self, index: int, job: Job, event: dict[str, Any]) -> None:
        """A finished epoch (the worker's ``epoch`` event)."""
        metrics = f"val_acc {event['val_acc']:.4f} {event['epoch_seconds']:.2f} s/epoch"
        self.last[index] = metrics
        if self.enabled and self.bars_shown:
            bar = self._bar(index, job)
            bar.set_postfix_str(metrics, refresh=False)
            bar.update(event["epoch"] - bar.n)
        else:
            self.last[index] = f"epoch {event['epoch']}/{job.train.epochs} {metrics}"

    def update(self, index: int, job: Job, text: str, final: bool = False) -> None:
        """The job's state in words (starting, done, FAILED: why); ``final`` closes its line."""
        if not self.enabled:
            return
        if self.bars_shown:
            bar = self._bar(index, job)
            if not final:
                bar.set_postfix_str(text)
                return
            bar.set_postfix_str(", ".join(p for p in (self.last.get(index, ""), text) if p), refresh=False)
            bar.close()
            del self.bars[index]
            return
        if final:
            parts = (job_label(index, self.total, job), self.last.get(index, ""), text)
            print("  ".join(p for p in parts if p), file=sys.stderr, flush=True)
