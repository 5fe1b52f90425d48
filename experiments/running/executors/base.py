"""What the runner hands an executor for one job, and what every executor offers.

An executor starts a job's worker process somewhere and puts ``(slot, event)`` pairs on the runner's queue: first
``{"event": "placed", "host": ...}``, then the worker's own events as they arrive, last ``{"event": "exit",
"code": ..., "error"?: ..., "log"?: ...}``. The runner alone writes rows, so every executor gives the same tables.
"""
from __future__ import annotations

import queue
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol


@dataclass(frozen=True)
class Launch:
    backend: str
    request: dict[str, Any]
    threads: int
    gpu: bool
    label: str  # run folder and job key, shown in the worker's command line
    log_path: Path  # the worker's stderr, in the run folder (a remote executor sends the text back in "exit")


class Executor(Protocol):
    name: str
    capacity: int  # jobs in flight at once

    def submit(self, slot: int, launch: Launch, sink: queue.Queue) -> None: ...

    def process(self, slot: int) -> Any: ...  # the local worker's Popen (for hooks), None elsewhere

    def kill(self, slot: int) -> None: ...

    def shutdown(self) -> None: ...
