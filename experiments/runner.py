"""Runs jobs, each in its own worker process under its backend's interpreter, and collects their rows.

A job that crashes, hangs (no event for ``job_timeout`` seconds), diverges, or is killed is recorded as failed with
its reason; the other jobs go on and every finished row is already on disk.
"""
from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from backends import registry
from backends.contract.threads import thread_environment
from experiments.plan import Experiment, Job
from experiments.progress import Progress
from experiments.rundir import RunFolder, job_columns, run_metadata, summary_row

EventHook = Callable[[Job, dict[str, Any], subprocess.Popen], None]


@dataclass(frozen=True)
class RunOptions:
    data_dir: Path
    out_dir: Path
    threads: int = 2
    job_timeout: float = 900.0
    progress: bool = True
    bench_timing: bool = False  # workers also report the harness's own per-epoch work ("bench" events)


def _describe_exit(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f"worker killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"worker killed by signal {-code}"
    return f"worker exited with status {code} without a result"


def _last_line(path: Path) -> str:
    try:
        lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return lines[-1][:300] if lines else ""


def _read_events(stream, sink: queue.Queue) -> None:
    for line in stream:
        line = line.strip()
        if line:
            try:
                sink.put(json.loads(line))
            except json.JSONDecodeError:
                sink.put({"event": "noise", "text": line})
    sink.put(None)


def run_job(job: Job, index: int, folder: RunFolder, options: RunOptions, progress: Progress,
            on_event: EventHook | None = None) -> dict[str, Any]:
    info = registry.resolve(job.backend)
    if not registry.is_available(job.backend):
        row = summary_row(job, [], None, None, "unavailable", registry.unavailable_reason(job.backend))
        progress.update(index, job, f"unavailable: {row['error']}", final=True)
        return row

    env = dict(os.environ, PYTHONPATH=str(registry.PROJECT_ROOT), **thread_environment(options.threads))
    request = {"job": job.to_dict(), "data_dir": str(options.data_dir), "threads": options.threads}
    if options.bench_timing:
        request["bench_timing"] = True
    log_path = folder.log_path(job)
    with open(log_path, "w") as log:
        process = subprocess.Popen([info.interpreter, "-m", "experiments.worker"], stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, stderr=log, cwd=registry.PROJECT_ROOT, env=env, text=True)
        process.stdin.write(json.dumps(request))
        process.stdin.close()
        events: queue.Queue = queue.Queue()
        threading.Thread(target=_read_events, args=(process.stdout, events), daemon=True).start()
        epochs: list[dict[str, Any]] = []
        start = end = error = None
        keys = job_columns(job)
        progress.update(index, job, "starting")
        while True:
            try:
                event = events.get(timeout=options.job_timeout)
            except queue.Empty:
                process.kill()
                error = f"timeout: no progress for {options.job_timeout:.0f} s; the worker was killed"
                break
            if event is None:
                break
            kind = event.get("event")
            if kind == "start":
                start = event
            elif kind == "epoch":
                epochs.append(event)
                folder.append("epochs", dict(keys["keys"], **{k: event[k] for k in event if k != "event"},
                                             **keys["params"]))
                progress.epoch(index, job, event)
            elif kind == "record":
                clash = sorted(set(event["row"]) & (set(keys["keys"]) | set(keys["params"])))
                if clash:  # a probe bug; overwriting the job's own columns would corrupt the table silently
                    process.kill()
                    error = f"probe row for {event['table']}.csv repeats the job columns {', '.join(clash)}"
                    break
                folder.append(event["table"], dict(keys["keys"], **event["row"], **keys["params"]))
            elif kind == "done":
                end = event
            elif kind == "error":
                error, end = event["error"], event
            if on_event is not None:
                on_event(job, event, process)
        try:
            code = process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            code = process.wait()
    if error is None and (end is None or code != 0):
        error = _describe_exit(code)
        detail = _last_line(log_path)
        if detail:
            error += f" ({detail})"
    status = "ok" if error is None else "failed"
    row = summary_row(job, epochs, start, end, status, error or "")
    progress.update(index, job, "done" if status == "ok" else f"FAILED: {error}", final=True)
    return row


def run_experiment(experiment: Experiment, options: RunOptions, *, argv: list[str] | None = None,
                   on_event: EventHook | None = None,
                   between_jobs: Callable[[Job | None], None] | None = None) -> list[dict[str, Any]]:
    """Run every job of the experiment in turn; returns the summary rows (also in ``summary.csv``).

    ``between_jobs(job)`` runs before each job, while no worker is alive, and once more with None after the last
    (the bench times its floor there)."""
    folder = RunFolder(options.out_dir)
    jobs = experiment.jobs(lambda name: registry.resolve(name).modes)
    progress = Progress(options.progress, len(jobs))
    versions: dict[str, str] = {}
    meta = run_metadata(root=registry.PROJECT_ROOT, threads=options.threads, argv=argv or sys.argv,
                        versions=versions)
    meta.update(experiment=experiment.name, data_dir=str(options.data_dir), jobs=len(jobs),
                started=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    folder.write_json("meta.json", meta)
    rows = []
    for index, job in enumerate(jobs, start=1):
        if between_jobs is not None:
            between_jobs(job)
        row = run_job(job, index, folder, options, progress, on_event)
        rows.append(row)
        folder.append("summary", row)
        if row.get("framework_version"):
            versions[job.backend] = row["framework_version"]
        meta.update(frameworks=versions, finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        folder.write_json("meta.json", meta)
    if between_jobs is not None:
        between_jobs(None)
    return rows
