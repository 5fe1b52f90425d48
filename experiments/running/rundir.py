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

from experiments.running.plan import Job
from experiments.report.stats import steady_epochs
from experiments.version import __version__

KEY_COLUMNS = ["backend", "tuning", "impl", "mode", "variant", "seed"]
EPOCH_COLUMNS = KEY_COLUMNS + ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "epoch_seconds",
                               "eval_seconds"]
SUMMARY_COLUMNS = KEY_COLUMNS + ["status", "error", "final_val_acc", "first_epoch_seconds", "median_epoch_seconds",
                                 "seconds_to_target", "target_acc", "samples_per_second", "peak_rss_mb",
                                 "framework_version", "final_val_loss",
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
    columns: dict[str, Any] = {"backend": job.backend, "tuning": job.train.tuning, "impl": job.model.impl,
                               "mode": job.train.mode,
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


class DamagedFolder(Exception):
    """A table of a run folder that this harness did not write whole: cut, edited, or another program's."""

    def __init__(self, path: Path, problem: str) -> None:
        super().__init__(f"{path} {problem}")
        self.path, self.problem = path, problem


STATUSES = ("ok", "failed", "unavailable", "interrupted")
INTEGER_COLUMNS = ("seed", "epoch", "epochs_completed", "batch_size", "epochs", "concurrent_jobs")
FLOAT_COLUMNS = ("train_loss", "train_acc", "val_loss", "val_acc", "epoch_seconds", "eval_seconds", "final_val_acc",
                 "first_epoch_seconds", "median_epoch_seconds", "samples_per_second", "peak_rss_mb",
                 "final_val_loss", "final_train_loss", "final_train_acc", "import_seconds", "data_seconds",
                 "build_seconds", "median_eval_seconds", "dispatch_seconds", "lr", "weight_decay",
                 "seconds_to_target", "target_acc")
# The columns a table of a training run's folder must have (every table has the job's keys, ``job_columns``), but
# for those added since (a folder from before the tiers has no ``tuning``: its jobs are stock).
LATER_COLUMNS = ("tuning",)
REQUIRED_COLUMNS = {"epochs": [c for c in EPOCH_COLUMNS if c not in LATER_COLUMNS],
                    "summary": [c for c in KEY_COLUMNS + ["status", "error"] if c not in LATER_COLUMNS]}


def _number(value: str, integer: bool) -> bool:
    try:
        number = float(value)
    except ValueError:
        return False
    return not integer or number == int(number)


def check_table(path: Path, required: list[str]) -> None:
    """Raise ``DamagedFolder`` unless ``path`` is a whole CSV table as ``RunFolder`` writes them: a header with the
    ``required`` columns, every row as many fields as the header, the file ending with its last row's line end,
    numbers where the harness writes numbers and a known ``status``. Reads, never writes."""
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise DamagedFolder(path, f"cannot be read ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise DamagedFolder(path, "is not a text CSV table (it holds bytes that are not UTF-8)") from None
    if not text.strip():
        raise DamagedFolder(path, "is empty: not even its header row is left")
    if not text.endswith("\n"):
        raise DamagedFolder(path, "ends in the middle of a line: the file was cut")
    rows = csv.reader(text.splitlines(keepends=True), strict=True)
    try:
        header = next(rows)
        missing = [name for name in required if name not in header]
        if missing or len(set(header)) != len(header) or "" in header:
            what = f"lacks the column(s) {', '.join(missing)}" if missing else "has a malformed header"
            raise DamagedFolder(path, f"{what}: it is not a table this harness wrote, or it was edited")
        position = {name: header.index(name) for name in header}
        for fields in rows:
            line = rows.line_num
            if len(fields) != len(header):
                raise DamagedFolder(path, f"line {line} has {len(fields)} field(s) where the header has "
                                          f"{len(header)}: the file was cut or edited")
            for name in INTEGER_COLUMNS + FLOAT_COLUMNS:
                value = fields[position[name]] if name in position else ""
                if value and not _number(value, name in INTEGER_COLUMNS):
                    raise DamagedFolder(path, f"line {line}: {name} is {value[:40]!r}, not a number: the file "
                                              f"was edited")
            if "status" in position and fields[position["status"]] not in STATUSES:
                raise DamagedFolder(path, f"line {line}: status is {fields[position['status']][:40]!r}, not one of "
                                          f"{', '.join(STATUSES)}: the file was edited")
    except csv.Error as exc:
        raise DamagedFolder(path, f"is not a well-formed CSV table (line {rows.line_num}: {exc})") from None


def check_tables(folder: Path) -> None:
    """``check_table`` for every CSV table of a training run's folder (``load_tables`` reads and rewrites them all):
    each must carry the job's keys, ``summary.csv`` and ``epochs.csv`` their own columns too."""
    for path in sorted(Path(folder).glob("*.csv")):
        check_table(path, REQUIRED_COLUMNS.get(path.stem, [c for c in KEY_COLUMNS if c not in LATER_COLUMNS]))


def seconds_to_target(epochs: list[dict[str, Any]], target: float) -> float | None:
    """The time to accuracy (the metric MLPerf and AlgoPerf rank by): the training seconds, first epoch included,
    until ``val_acc`` first reaches ``target``: the sum of ``epoch_seconds`` of every epoch up to and including the
    first one whose ``val_acc`` is at least ``target`` (evaluation time is not training time); None when no epoch
    reaches it. ``epochs`` are epoch rows or events, as numbers or as the strings a CSV gives back."""
    total = 0.0
    for epoch in sorted(epochs, key=lambda e: int(e["epoch"])):
        total += float(epoch["epoch_seconds"])
        if float(epoch["val_acc"]) >= target:
            return total
    return None


def summary_row(job: Job, epochs: list[dict[str, Any]], start: dict[str, Any] | None, end: dict[str, Any] | None,
                status: str, error: str, *, target_acc: float | None = None) -> dict[str, Any]:
    """One row per job. Steady epoch time is the median of epochs 2..E: epoch 1 carries compilation and warm-up.
    With ``target_acc``, ``seconds_to_target`` is the time to that validation accuracy (empty: never reached)."""
    columns = job_columns(job)
    row: dict[str, Any] = dict(columns["keys"], status=status, error=error, epochs_completed=len(epochs))
    if target_acc is not None:
        row.update(seconds_to_target=seconds_to_target(epochs, target_acc), target_acc=target_acc)
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

    return {"dropbench_version": __version__, "python": sys.version.split()[0], "numpy": numpy.__version__,
            "frameworks": versions,
            "cpu": cpu_model(), "cpu_count": os.cpu_count(), "threads": threads, "platform": platform.platform(),
            "git_commit": git_commit(root), "command": " ".join(argv)}
