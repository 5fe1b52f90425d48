"""Runs an experiment's jobs through an executor (each job one worker process under its backend's interpreter) and
turns their events into rows in the run folder.

A job that crashes, hangs (no event for ``job_timeout`` seconds), diverges, or is killed is recorded as failed with
its reason; the other jobs go on and every finished row is already on disk. SIGINT and SIGTERM stop every worker,
record the running jobs as ``interrupted`` and raise ``RunInterrupted``; ``--resume`` continues from there.
"""
from __future__ import annotations

import queue
import signal
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from backends import registry
from experiments.running import lock, resume
from experiments.running.executors.local import LocalExecutor
from experiments.running.executors.base import Executor, Launch
from experiments.running.executors.process import describe_exit, last_line, read_text
from experiments.running.plan import Experiment, Job
from experiments.running.progress import Progress
from experiments.options import TARGET_ACC
from experiments.running.rundir import (
    RunFolder, job_columns, job_identity, load_tables, row_identity, run_metadata, seconds_to_target, summary_row,
)

EventHook = Callable[[Job, dict[str, Any], Any], None]
POLL = 0.5  # seconds between checks of the job timeouts while no event arrives


@dataclass(frozen=True)
class RunOptions:
    data_dir: Path
    out_dir: Path
    threads: int = 2
    job_timeout: float = 900.0
    progress: bool = True
    bench_timing: bool = False  # workers also report the harness's own per-epoch work ("bench" events)
    floor_variants: tuple[str, ...] = ()  # jobs of these variants time the bench's floor beside their epochs
    jobs: int = 1  # local executor: workers at once
    executor: str = "local"
    ray_address: str | None = None  # ray executor: a running cluster; None starts a local Ray for the run
    resume: bool = False
    force: bool = False
    all_cpus_of_node: bool = False  # ray executor: each job asks for every CPU of a node (the bench)
    target_acc: float = TARGET_ACC  # the validation accuracy of summary.csv's seconds_to_target (--target-acc)


class Interrupted(BaseException):
    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class RunInterrupted(KeyboardInterrupt):
    """The run was stopped by a signal; its rows, ``meta.json`` and the interrupted jobs' rows are on disk."""

    def __init__(self, signum: int, rows: list[dict[str, Any]]) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signal_name, self.status, self.rows = signal.Signals(signum).name, 128 + signum, rows


class JobRecord:
    """One running job: its events become rows as they arrive; ``finish`` gives its summary row."""

    def __init__(self, index: int, job: Job, fingerprint: str, folder: RunFolder, executor: str, *,
                 target_acc: float = TARGET_ACC) -> None:
        self.index, self.job, self.fingerprint, self.folder, self.executor = index, job, fingerprint, folder, executor
        self.target_acc = target_acc
        self.columns = job_columns(job)
        self.epochs: list[dict[str, Any]] = []
        self.start = self.end = self.error = None
        self.host, self.concurrent, self.now_concurrent = "", 1, 1
        self.submitted = self.last_event = time.monotonic()
        self.dispatch_seconds: float | None = None
        self.code: int | None = None

    def where(self) -> dict[str, Any]:
        return {"executor": self.executor, "host": self.host, "concurrent_jobs": self.now_concurrent}

    def handle(self, event: dict[str, Any]) -> str | None:
        """Record one event; returns why the worker must be killed, if it must."""
        kind, keys = event.get("event"), self.columns
        if kind == "placed":
            self.host = event.get("host", "")
            self.dispatch_seconds = time.monotonic() - self.submitted
        elif kind == "start":
            self.start = event
        elif kind == "epoch":
            self.epochs.append(event)
            self.folder.append("epochs", dict(keys["keys"], **{k: event[k] for k in event if k != "event"},
                                              **keys["params"], **self.where()))
        elif kind == "record":
            clash = sorted(set(event["row"]) & (set(keys["keys"]) | set(keys["params"])))
            if clash:  # a probe bug; overwriting the job's own columns would corrupt the table silently
                self.error = f"probe row for {event['table']}.csv repeats the job columns {', '.join(clash)}"
                return self.error
            self.folder.append(event["table"], dict(keys["keys"], **event["row"], **keys["params"]))
        elif kind == "done":
            self.end = event
        elif kind == "error":
            self.error, self.end = self.error or event["error"], event
        elif kind == "exit":
            self.code = event.get("code")
            if event.get("log") is not None:  # a remote worker's stderr, sent back whole
                self.folder.log_path(self.job).write_text(event["log"])
            if self.error is None and (self.end is None or self.code != 0):
                self.error = event.get("error") or describe_exit(self.code)
                detail = last_line(read_text(self.folder.log_path(self.job)))
                if detail:
                    self.error += f" ({detail})"
        return None

    def summary(self, status: str | None = None) -> dict[str, Any]:
        status = status or ("ok" if self.error is None else "failed")
        row = summary_row(self.job, self.epochs, self.start, self.end, status, self.error or "",
                          target_acc=self.target_acc)
        row.update(reused="no", executor=self.executor, host=self.host, concurrent_jobs=self.concurrent,
                   dispatch_seconds=self.dispatch_seconds, fingerprint=self.fingerprint)
        return row


def _launch(job: Job, folder: RunFolder, options: RunOptions) -> Launch:
    request = {"job": job.to_dict(), "data_dir": str(options.data_dir), "threads": options.threads}
    if options.bench_timing:
        request["bench_timing"] = True
    if job.variant in options.floor_variants:
        request["floor_beside"] = True
    return Launch(backend=job.backend, request=request, threads=options.threads, gpu=job.train.device == "gpu",
                  label=f"{folder.path}/{job.key}", log_path=folder.log_path(job))


class _Signals:
    """SIGINT and SIGTERM raise ``Interrupted`` in the main thread while the run is on (nothing elsewhere)."""

    NAMES = (signal.SIGINT, signal.SIGTERM)

    def __enter__(self):
        self.saved = {}
        if threading.current_thread() is threading.main_thread():
            for signum in self.NAMES:
                self.saved[signum] = signal.signal(signum, self._raise)
        return self

    @staticmethod
    def _raise(signum, frame):
        raise Interrupted(signum)

    def hold(self) -> None:
        """While the run cleans up, a second signal must not cut the cleanup short."""
        for signum in self.saved:
            signal.signal(signum, signal.SIG_IGN)

    def __exit__(self, *exc):
        for signum, handler in self.saved.items():
            signal.signal(signum, handler)


def run_experiment(experiment: Experiment, options: RunOptions, *, argv: list[str] | None = None,
                   on_event: EventHook | None = None,
                   decisions: list[resume.Decision] | None = None) -> list[dict[str, Any]]:
    """Run every job of the experiment that is not reused; returns the summary rows (also in ``summary.csv``),
    reused ones first."""
    jobs = experiment.jobs(lambda name: registry.resolve(name).modes)
    # One harness per run folder (``experiments.running.lock``): a second one is refused here, before anything is
    # started.
    with lock.hold(options.out_dir):
        # Before the folder is touched (a cluster that cannot be reached is a user error), and before the signals
        # are taken over: ray.init installs its own SIGTERM handler.
        executor = make_executor(options)
        try:
            return _run(experiment, jobs, options, executor, argv, on_event, decisions)
        finally:
            executor.shutdown()


def _run(experiment: Experiment, jobs: list[Job], options: RunOptions, executor: Executor, argv: list[str] | None,
         on_event: EventHook | None, decisions: list[resume.Decision] | None) -> list[dict[str, Any]]:
    if decisions is None:
        decisions = resume.plan(jobs, options.out_dir, data_dir=options.data_dir, threads=options.threads,
                                resume=options.resume, force=options.force)
    folder = RunFolder(options.out_dir, load=options.resume)
    rerun = {job_identity(d.job) for d in decisions if d.action == "run"}
    folder.keep_only(lambda identity: identity not in rerun)
    reused = {job_identity(d.job) for d in decisions if d.action == "reuse"}
    folder.replace_table("summary", [dict(row, reused="yes", **_retargeted(row, folder, options.target_acc))
                                     if row_identity(row) in reused else row
                                     for row in folder.tables.get("summary", [])])
    rows = [row for row in folder.tables.get("summary", []) if row_identity(row) in reused]
    progress = Progress(options.progress, len(jobs))
    versions: dict[str, str] = {}
    meta = run_metadata(root=registry.PROJECT_ROOT, threads=options.threads, argv=argv or sys.argv,
                        versions=versions)
    meta.update(experiment=experiment.name, data_dir=str(options.data_dir), jobs=len(jobs),
                started=time.strftime("%Y-%m-%dT%H:%M:%S%z"), executor=options.executor,
                concurrent_jobs=options.jobs, reused_jobs=len(reused), job_statuses=status_counts(rows))
    folder.write_json("meta.json", meta)
    for index, decision in enumerate(decisions, start=1):
        if decision.action == "reuse":
            progress.update(index, decision.job, "reused (done in an earlier run)", final=True)

    def finish(record: JobRecord, status: str | None = None) -> None:
        row = record.summary(status)
        rows.append(row)
        folder.append("summary", row)
        if row.get("framework_version"):
            versions[record.job.backend] = row["framework_version"]
        meta.update(frameworks=versions, finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    job_statuses=status_counts(rows))
        folder.write_json("meta.json", meta)
        text = "done" if row["status"] == "ok" else f"{row['status'].upper()}: {row['error']}"
        progress.update(record.index, record.job, text, final=True)

    pending = deque((i, d) for i, d in enumerate(decisions, start=1) if d.action == "run")
    running: dict[int, JobRecord] = {}
    sink: queue.Queue = queue.Queue()
    with _Signals() as signals:
        try:
            while pending or running:
                while pending and len(running) < executor.capacity:
                    index, decision = pending.popleft()
                    record = JobRecord(index, decision.job, decision.fingerprint, folder, executor.name,
                                       target_acc=options.target_acc)
                    if not registry.is_available(decision.job.backend):
                        record.error = registry.unavailable_reason(decision.job.backend)
                        finish(record, "unavailable")
                        continue
                    running[index] = record
                    progress.update(index, decision.job, "starting")
                    record.submitted = record.last_event = time.monotonic()
                    executor.submit(index, _launch(decision.job, folder, options), sink)
                _enforce_timeouts(running, executor, options.job_timeout)  # also while other jobs keep talking
                try:
                    slot, event = sink.get(timeout=POLL)
                except queue.Empty:
                    continue
                record = running.get(slot)
                if record is None:
                    continue
                record.last_event = time.monotonic()
                kill_reason = record.handle(event)
                if event.get("event") == "placed":
                    _count_concurrency(running, record.host)
                elif event.get("event") == "epoch":
                    progress.epoch(slot, record.job, event)
                if kill_reason:
                    executor.kill(slot)
                if on_event is not None and event.get("event") not in ("placed", "exit"):
                    on_event(record.job, event, executor.process(slot))
                if event.get("event") == "exit":
                    del running[slot]
                    finish(record)
                    _count_concurrency(running, record.host)
        except Interrupted as stop:
            signals.hold()
            executor.shutdown()  # first: no worker may outlive the harness, whatever happens next
            name = signal.Signals(stop.signum).name
            for record in running.values():
                record.error = f"interrupted by {name} after {len(record.epochs)} of {record.job.train.epochs} epochs"
                finish(record, "interrupted")
            raise RunInterrupted(stop.signum, rows) from None
    return rows


def _retargeted(row: dict[str, Any], folder: RunFolder, target: float) -> dict[str, Any]:
    """A reused job's time to target, taken again from its epoch rows for this run's target accuracy."""
    identity = row_identity(row)
    epochs = [e for e in folder.tables.get("epochs", []) if row_identity(e) == identity]
    if not epochs:  # a folder from before the epoch rows: keep what the row says
        return {}
    return {"seconds_to_target": seconds_to_target(epochs, target), "target_acc": target}


def status_counts(rows: list[dict[str, Any]]) -> dict[str, int]:
    """How many of this run's jobs (reused ones included) ended in each status: ``meta.json``'s ``job_statuses``."""
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    return counts


def exit_status(statuses) -> int:
    """A run's exit status from its jobs' statuses (an iterable of them, or ``job_statuses`` counts): 0 when every
    job that could run finished (``ok``; a backend that is not installed, ``unavailable``, could not run), 1 when a
    job failed, diverged, timed out or was interrupted, or when no job could run at all."""
    if isinstance(statuses, dict):
        statuses = [status for status, count in statuses.items() for _ in range(int(count))]
    ran = [status for status in statuses if status != "unavailable"]
    return 0 if ran and all(status == "ok" for status in ran) else 1


def summary_statuses(folder: Path) -> list[str]:
    """The status of every summary row in ``folder`` (a bench's folder holds every round's)."""
    return [row.get("status") or "" for row in load_tables(folder).get("summary", [])]


def make_executor(options: RunOptions) -> Executor:
    """The executor ``options`` ask for. Ray is imported only when it is asked for (an optional extra)."""
    if options.executor == "ray":
        from experiments.running.executors.ray_executor import RayExecutor

        return RayExecutor(address=options.ray_address, threads=options.threads,
                           all_cpus_of_node=options.all_cpus_of_node)
    return LocalExecutor(jobs=options.jobs)


def _enforce_timeouts(running: dict[int, JobRecord], executor: Executor, timeout: float) -> None:
    now = time.monotonic()
    for slot, record in running.items():
        if record.error is None and now - record.last_event > timeout:
            record.error = f"timeout: no progress for {timeout:.0f} s; the worker was killed"
            executor.kill(slot)


def _count_concurrency(running: dict[int, JobRecord], host: str) -> None:
    """Every job records the most jobs that ran at once on its host while it ran."""
    sharing = [r for r in running.values() if r.host == host]
    for record in sharing:
        record.now_concurrent = len(sharing)
        record.concurrent = max(record.concurrent, len(sharing))
