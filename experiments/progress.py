"""Progress of a run on stderr: one line per job."""
from __future__ import annotations

import sys

from experiments.plan import Job


class Progress:
    """One line per job on stderr: rewritten in place on a terminal, one line per epoch in a log."""

    def __init__(self, enabled: bool, total_jobs: int) -> None:
        self.enabled, self.total, self.tty = enabled, total_jobs, sys.stderr.isatty()

    def update(self, index: int, job: Job, text: str, final: bool = False) -> None:
        if not self.enabled:
            return
        line = f"[{index}/{self.total}] {job.backend:<10} {job.model.impl:<7} {job.train.mode:<8} " \
               f"{job.variant:<14} seed {job.train.seed}  {text}"
        if self.tty:
            sys.stderr.write("\r\033[K" + line + ("\n" if final else ""))
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()


def bar(done: int, total: int, width: int = 20) -> str:
    filled = round(width * done / total) if total else width
    return "#" * filled + "." * (width - filled)
