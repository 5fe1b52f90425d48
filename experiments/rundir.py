"""The run folder: tidy CSV tables written atomically as rows arrive, the summary row of a job, ``meta.json``.

The CSVs are written with the standard library: a row per finished epoch must be cheap and must survive an
interrupt.
"""
from __future__ import annotations

import csv
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from experiments.plan import Job
from experiments.stats import steady_epochs

KEY_COLUMNS = ["backend", "impl", "mode", "variant", "seed"]
EPOCH_COLUMNS = KEY_COLUMNS + ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "epoch_seconds",
                               "eval_seconds"]
SUMMARY_COLUMNS = KEY_COLUMNS + ["status", "error", "final_val_acc", "first_epoch_seconds", "median_epoch_seconds",
                                 "samples_per_second", "peak_rss_mb", "framework_version", "final_val_loss",
                                 "final_train_loss", "final_train_acc", "epochs_completed", "import_seconds",
                                 "data_seconds", "build_seconds", "median_eval_seconds", "reused", "executor",
                                 "host", "concurrent_jobs", "dispatch_seconds", "fingerprint"]
TABLE_COLUMNS = {"epochs": EPOCH_COLUMNS, "summary": SUMMARY_COLUMNS}
IDENTITY_COLUMNS = KEY_COLUMNS + ["device"]  # what tells two jobs of one experiment apart (``Job.key``)


def job_identity(job: Job) -> tuple[str, ...]:
    columns = job_columns(job)
    values = {**columns["keys"], **columns["params"]}
    return tuple(str(values[name]) for name in IDENTITY_COLUMNS)


def row_identity(row: dict[str, Any]) -> tuple[str, ...]:
    return tuple(str(row.get(name, "")) for name in IDENTITY_COLUMNS)


# ``job_columns``' parameters but the per-layer dropout_<i>: the settings every summary and epoch row carries.
SETTING_COLUMNS = ["experiment", "device", "noise", "hiddens", "init", "lr", "weight_decay", "batch_size", "epochs",
                   "train_limit"]


def job_columns(job: Job) -> dict[str, Any]:
    """The job's keys, then the variant's parameters, so that every row can be grouped without a join."""
    columns: dict[str, Any] = {"backend": job.backend, "impl": job.model.impl, "mode": job.train.mode,
                               "variant": job.variant, "seed": job.train.seed}
    params: dict[str, Any] = {"experiment": job.experiment, "device": job.train.device, "noise": job.model.noise}
    params.update({f"dropout_{i + 1}": p for i, p in enumerate(job.model.dropouts)})
    params.update({"hiddens": "x".join(map(str, job.model.hiddens)), "init": job.model.init,
                   "lr": job.train.lr, "weight_decay": job.train.weight_decay, "batch_size": job.train.batch_size,
                   "epochs": job.train.epochs, "train_limit": job.train.train_limit})
    return {"keys": columns, "params": params}


class RunFolder:
    """Owns ``<out>/``: each table is rewritten whole through a temporary file and ``os.replace`` after every row,
    so a reader (or an interrupt) only ever sees complete files."""

    def __init__(self, path: Path, *, load: bool = False) -> None:
        self.path = Path(path)
        (self.path / "logs").mkdir(parents=True, exist_ok=True)
        self.tables: dict[str, list[dict[str, Any]]] = load_tables(self.path) if load else {}

    def keep_only(self, keep) -> None:
        """Drop, from every table, the rows whose job identity ``keep(identity)`` rejects (a job to be rerun)."""
        for table, rows in self.tables.items():
            self.replace_table(table, [row for row in rows if keep(row_identity(row))])

    def append(self, table: str, row: dict[str, Any]) -> None:
        self.tables.setdefault(table, []).append(row)
        self._write(table)

    def replace_table(self, table: str, rows: list[dict[str, Any]]) -> None:
        self.tables[table] = rows
        if rows or (self.path / f"{table}.csv").exists():
            self._write(table)

    def _columns(self, table: str) -> list[str]:
        columns = list(TABLE_COLUMNS.get(table, []))
        for row in self.tables[table]:
            columns.extend(key for key in row if key not in columns)
        return columns

    def _write(self, table: str) -> None:
        target = self.path / f"{table}.csv"
        temporary = target.with_suffix(".csv.tmp")
        with open(temporary, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=self._columns(table), extrasaction="ignore")
            writer.writeheader()
            writer.writerows(self.tables[table])
        os.replace(temporary, target)

    def write_json(self, name: str, content: dict[str, Any]) -> None:
        temporary = self.path / f"{name}.tmp"
        temporary.write_text(json.dumps(content, indent=2, sort_keys=True, default=str) + "\n")
        os.replace(temporary, self.path / name)

    def log_path(self, job: Job) -> Path:
        return self.path / "logs" / f"{job.key}.log"


def load_tables(folder: Path) -> dict[str, list[dict[str, Any]]]:
    """Every CSV table of a run folder, as the rows of strings they hold (written back unchanged)."""
    tables = {}
    for path in sorted(Path(folder).glob("*.csv")):
        with open(path, newline="") as handle:
            tables[path.stem] = list(csv.DictReader(handle))
    return tables


def summary_row(job: Job, epochs: list[dict[str, Any]], start: dict[str, Any] | None, end: dict[str, Any] | None,
                status: str, error: str) -> dict[str, Any]:
    """One row per job. Steady epoch time is the median of epochs 2..E: epoch 1 carries compilation and warm-up."""
    columns = job_columns(job)
    row: dict[str, Any] = dict(columns["keys"], status=status, error=error, epochs_completed=len(epochs))
    if start:
        for key in ("framework_version", "import_seconds", "data_seconds", "build_seconds"):
            row[key] = start.get(key)
    if epochs:
        last = epochs[-1]
        seconds = [e["epoch_seconds"] for e in epochs]
        measured = steady_epochs(seconds)
        steady = measured.median if measured else seconds[0]  # one epoch only: it is all there is
        row.update(final_val_acc=last["val_acc"], final_val_loss=last["val_loss"], final_train_loss=last["train_loss"],
                   final_train_acc=last["train_acc"], first_epoch_seconds=seconds[0], median_epoch_seconds=steady,
                   samples_per_second=last["n_train"] / steady if steady > 0 else None,
                   median_eval_seconds=statistics.median(e["eval_seconds"] for e in epochs))
    if end:
        row["peak_rss_mb"] = end.get("peak_rss_mb")
    row.update(columns["params"])
    return row


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit(root: Path) -> str | None:
    try:
        result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if result.returncode != 0:
        return None
    return result.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def run_metadata(*, root: Path, threads: int, argv: list[str], versions: dict[str, str]) -> dict[str, Any]:
    import numpy

    return {"python": sys.version.split()[0], "numpy": numpy.__version__, "frameworks": versions,
            "cpu": cpu_model(), "cpu_count": os.cpu_count(), "threads": threads, "platform": platform.platform(),
            "git_commit": git_commit(root), "command": " ".join(argv)}
