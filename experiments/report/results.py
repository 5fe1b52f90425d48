"""A run folder read back for the reports: the summary, the extra tables joined to finished jobs, ``meta.json``."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

SETUP = ["backend", "tuning", "impl", "mode"]


def dropout_columns(columns) -> list[str]:
    """The per-layer dropout_<i> columns among ``columns``, by layer."""
    return sorted((c for c in columns if c.startswith("dropout_") and c[8:].isdigit()), key=lambda c: int(c[8:]))


def setting_value(value: Any) -> Any:
    """A job setting as read back from CSV: None where unset (an empty cell), whole numbers as integers (a column
    with an empty cell reads as floats: train_limit 2000.0)."""
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return None
    return int(value) if isinstance(value, float) and value.is_integer() else value


def with_tuning(frame):
    """A table with its ``tuning`` column: a run folder written before the tiers existed has none, and ran the code
    that is now the tuned tier."""
    if "tuning" not in frame.columns:
        frame.insert(min(1, len(frame.columns)), "tuning", "tuned")
    return frame


class Run:
    """One run folder read back: the summary, the extra tables, meta.json."""

    def __init__(self, experiment: str, folder: Path) -> None:
        self.experiment, self.folder = experiment, Path(folder)
        self.summary = with_tuning(pd.read_csv(self.folder / "summary.csv"))
        meta_path = self.folder / "meta.json"
        self.meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
        self.variants = list(dict.fromkeys(self.summary["variant"]))
        self.ok = self._prepare(self.summary[self.summary["status"] == "ok"].copy())
        self.setups = list(dict.fromkeys(self.ok["setup"])) if len(self.ok) else []

    def _prepare(self, frame):
        if len(frame) == 0:
            frame["setup"] = []
            return frame
        several = {col: frame[col].nunique() > 1 for col in ("tuning", "impl", "mode")}
        frame["setup"] = [
            str(row["backend"]) + "".join(f" {row[c]}" for c in ("tuning", "impl", "mode") if several[c])
            for _, row in frame.iterrows()]
        return frame

    def table(self, name: str):
        """``<name>.csv`` restricted to finished jobs, with the ``setup`` column; None when absent."""
        path = self.folder / f"{name}.csv"
        if not path.exists():
            return None
        frame = with_tuning(pd.read_csv(path))
        keys = self.ok[SETUP + ["variant", "seed", "setup"]]
        return frame.merge(keys, on=SETUP + ["variant", "seed"], how="inner")

    def rates(self, variant: str) -> tuple[float, ...]:
        row = self.summary[self.summary["variant"] == variant].iloc[0]
        return tuple(float(row[c]) for c in sorted(c for c in self.summary.columns if c.startswith("dropout_")))

    def param(self, variant: str, column: str) -> Any:
        return self.summary[self.summary["variant"] == variant].iloc[0][column]

    def image(self, name: str) -> Path:
        return self.folder / name
