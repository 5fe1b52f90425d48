"""One job's worker process, wherever it runs: started under the backend's interpreter with the job's threads set
before the framework is imported, its JSON-line events handed to ``emit`` as they arrive, its exit described.

Both executors use it: the local one in a thread of the harness, the Ray one inside the task on the node where the
task landed (the interpreter and the project's root are then that node's).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import IO, Any, Callable

from backends import registry
from backends.contract.threads import thread_environment

Emit = Callable[[dict[str, Any]], None]
EXIT_WAIT = 60.0  # seconds a worker may take to exit after closing its event stream


def start_worker(backend: str, request: dict[str, Any], *, threads: int, label: str, log: IO) -> subprocess.Popen:
    """``label`` (run folder and job key) is an argument the worker ignores, so that ``ps`` shows whose it is.
    The worker gets its own session: a Ctrl-C in the terminal reaches the harness, which stops the workers itself.
    The request gains this process's id and interpreter (the project's own on this node, whichever interpreter the
    worker runs under: the bench's floor runs under it)."""
    env = dict(os.environ, PYTHONPATH=str(registry.PROJECT_ROOT), **thread_environment(threads))
    process = subprocess.Popen([registry.resolve(backend).interpreter, "-m", "experiments.running.worker", label],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, cwd=registry.PROJECT_ROOT,
                               env=env, text=True, start_new_session=True)
    try:
        process.stdin.write(json.dumps(dict(request, parent_pid=os.getpid(), project_interpreter=sys.executable)))
        process.stdin.close()
    except BrokenPipeError:
        # The worker died before it read its request (killed from outside, out of memory): not a failure to start
        # it. Its exit status, read by stream_events, says how it died.
        try:
            process.stdin.close()
        except OSError:
            pass
    return process


def stream_events(process: subprocess.Popen, emit: Emit) -> int:
    """Hand every event line to ``emit`` until the worker closes its stdout; returns its exit status."""
    for line in process.stdout:
        line = line.strip()
        if line:
            try:
                emit(json.loads(line))
            except json.JSONDecodeError:
                emit({"event": "noise", "text": line})
    try:
        return process.wait(timeout=EXIT_WAIT)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait()


def stop(process: subprocess.Popen | None) -> None:
    """Kill a worker and reap it (its results are not wanted any more)."""
    if process is not None and process.poll() is None:
        process.kill()
        process.wait()


def describe_exit(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f"worker killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"worker killed by signal {-code}"
    return f"worker exited with status {code} without a result"


def last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


def read_text(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""
