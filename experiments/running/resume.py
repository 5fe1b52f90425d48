"""Continuing a run folder: which of the experiment's jobs are done (reused) and which run again, and the checks
that make ``--out``/``--resume`` fail before any work.

A job is done when its summary row says ``ok`` with the fingerprint the job has now. Every other job of the matrix
(failed, interrupted, unavailable, unfinished: epoch rows but no summary row, stale: another fingerprint, or new)
runs again from its start, and its old rows are dropped first, so no table ever holds a job twice.

Before any of that, the checks here refuse (one line, exit status 2) a folder that another harness holds
(``experiments.running.lock``), and, for ``--resume``, a folder whose ``meta.json`` is missing or whose tables are
not whole (``rundir.check_tables``): nothing in it is rewritten then.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from experiments.running import lock
from experiments.running.fingerprint import job_fingerprint
from experiments.options import UsageError
from experiments.running.plan import Job
from experiments.running.rundir import DamagedFolder, check_tables, job_identity, load_tables, row_identity

META = "meta.json"


@dataclass(frozen=True)
class Decision:
    job: Job
    fingerprint: str
    action: str  # "reuse" or "run"
    reason: str  # why it runs: new, failed, interrupted, unavailable, unfinished, stale, forced


def check_out_folder(out: Path, *, resume: bool) -> None:
    """``--out`` must be (or become) a folder; without ``--resume`` it must not already hold results."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file, not a folder; choose another --out")
    if out.is_dir():
        if not os.access(out, os.W_OK | os.X_OK):
            raise UsageError(f"--out {out} is not writable; choose another --out")
        lock.check_free(out)  # another harness runs there: its name, before anything else is said or done
        if not resume and any(p.name != lock.LOCK_NAME for p in out.iterdir()):
            raise UsageError(f"run folder {out} already holds results; pass --resume to continue it "
                             f"(--resume --force reruns every job) or choose another --out")
        return
    if resume:
        raise UsageError(f"--resume: {out} does not exist; name the run folder to continue with --out")
    ancestor = out.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise UsageError(f"--out {out} cannot be created: {ancestor} is a file; choose another --out")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise UsageError(f"--out {out} cannot be created: {ancestor} is not writable; choose another --out")
    try:  # root passes every access check; only trying tells (a read-only or virtual file system)
        out.mkdir(parents=True)
    except OSError as err:
        raise UsageError(f"--out {out} cannot be created ({err.strerror}); choose another --out") from None


def check_run_folder(out: Path, experiment: str) -> None:
    """``--resume`` needs a run folder (its ``meta.json``) of the same experiment, whose tables are whole: a cut,
    edited or foreign CSV is refused (``rundir.check_tables``) before anything in the folder is rewritten."""
    try:
        meta = json.loads((out / META).read_text())
    except (OSError, ValueError):
        meta = None
    if not isinstance(meta, dict) or "experiment" not in meta or "bench" in meta:
        raise UsageError(f"--resume: {out} is not a run folder of python harness.py (no meta.json naming its "
                         f"experiment); name a folder a previous run wrote")
    if meta["experiment"] != experiment:
        raise UsageError(f"--resume: {out} holds experiment {meta['experiment']}, not {experiment}; "
                         f"pass --experiment {meta['experiment']} or choose another --out")
    try:
        check_tables(out)
    except DamagedFolder as damage:
        raise UsageError(f"--resume: {damage}; the folder was left as it is: restore the file from a copy, or run "
                         f"afresh into another --out") from None


def plan(jobs: list[Job], out: Path, *, data_dir: Path, threads: int, resume: bool,
         force: bool) -> list[Decision]:
    tables = load_tables(out) if resume and out.is_dir() else {}
    finished = {row_identity(row): row for row in tables.get("summary", [])}
    started = {row_identity(row) for row in tables.get("epochs", [])}
    decisions = []
    for job in jobs:
        fingerprint = job_fingerprint(job, data_dir=data_dir, threads=threads)
        previous = finished.get(job_identity(job))
        if previous is None:
            reason = "unfinished" if job_identity(job) in started else "new"
        elif force:
            reason = "forced"
        elif previous.get("status") != "ok":
            reason = previous.get("status") or "failed"
        elif previous.get("fingerprint") != fingerprint:
            reason = "stale"
        else:
            reason = ""
        decisions.append(Decision(job, fingerprint, "run" if reason else "reuse", reason))
    return decisions


def dry_run_lines(decisions: list[Decision], *, resume: bool) -> list[str]:
    lines = [f"{'backend':<11}{'tuning':<7}{'impl':<9}{'mode':<10}{'variant':<16}{'seed':>5}{'epochs':>8}  action"]
    for d in decisions:
        action = "reuse" if d.action == "reuse" else f"run ({d.reason})"
        lines.append(f"{d.job.backend:<11}{d.job.train.tuning:<7}{d.job.model.impl:<9}{d.job.train.mode:<10}"
                     f"{d.job.variant:<16}"
                     f"{d.job.train.seed:>5}{d.job.train.epochs:>8}  {action}")
    reuse = sum(d.action == "reuse" for d in decisions)
    lines.append(f"{len(decisions)} jobs: {len(decisions) - reuse} to run, {reuse} reused"
                 + ("" if resume else " (without --resume nothing is reused)"))
    return lines
