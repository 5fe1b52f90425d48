"""dropbench's orchestration side. ``from experiments import run, load``: the Python interface of
``experiments.api``, imported on first use (PEP 562), because every worker process imports this package, the
MXNet venv's too, where pandas and matplotlib are not installed."""
from __future__ import annotations

from typing import Any

from experiments.version import __version__  # noqa: F401  (experiments.__version__)

LAZY = {"run", "load", "Result"}


def __getattr__(name: str) -> Any:
    if name in LAZY:
        from experiments import api

        return getattr(api, name)
    raise AttributeError(f"module 'experiments' has no attribute {name!r}")
