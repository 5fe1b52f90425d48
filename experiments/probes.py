"""Probes: extra measurements an experiment asks the worker to take, written as rows of extra CSV tables.

A probe runs inside the worker, beside the backend, and talks to it only through the Backend contract, so it works
for every framework. It yields ``(table, row)`` pairs; the runner writes each table to ``<table>.csv`` in the run
folder, with the job's keys added to every row. Framework-free: NumPy only.
"""
from __future__ import annotations

from typing import Any, Iterator

Row = dict[str, Any]


class Probe:
    """Base probe: measures nothing. Subclasses override one or both hooks."""

    def on_epoch(self, *, backend, data, epoch: int, job) -> Iterator[tuple[str, Row]]:
        """Called after every epoch's evaluation, and once with ``epoch=0`` before training."""
        return iter(())

    def on_end(self, *, backend, data, job) -> Iterator[tuple[str, Row]]:
        """Called once after the last epoch."""
        return iter(())


PROBES: dict[str, type[Probe]] = {}
