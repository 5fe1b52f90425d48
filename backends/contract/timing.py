"""The one timer of the project: it synchronises the backend's device before it reads the clock."""
from __future__ import annotations

import time

from backends.contract.backend import Backend


class Stopwatch:
    """Wall-clock timer that synchronises the backend before reading the clock."""

    def __init__(self, backend: Backend | None = None) -> None:
        self.backend = backend

    def __enter__(self) -> "Stopwatch":
        if self.backend is not None:
            self.backend.synchronize()
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.backend is not None:
            self.backend.synchronize()
        self.seconds = time.perf_counter() - self.start
