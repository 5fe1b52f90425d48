"""The local executor: up to ``jobs`` worker processes at once on this machine, each watched by a thread that puts
its events on the runner's queue."""
from __future__ import annotations

import queue
import socket
import subprocess
import threading
import time

from experiments.running.executors.base import Launch
from experiments.running.executors.process import start_worker, stop, stream_events

JOIN_WAIT = 10.0


class LocalExecutor:
    name = "local"

    def __init__(self, jobs: int = 1) -> None:
        self.capacity = jobs
        self.host = socket.gethostname()
        self.processes: dict[int, subprocess.Popen] = {}
        self.threads: dict[int, threading.Thread] = {}
        self.lock = threading.Lock()
        self.closing = False

    def submit(self, slot: int, launch: Launch, sink: queue.Queue) -> None:
        thread = threading.Thread(target=self._run, args=(slot, launch, sink), daemon=True)
        self.threads[slot] = thread
        thread.start()

    def _run(self, slot: int, launch: Launch, sink: queue.Queue) -> None:
        sink.put((slot, {"event": "placed", "host": self.host, "submitted": time.time()}))
        code = None
        try:
            with open(launch.log_path, "w") as log:
                with self.lock:
                    if self.closing:
                        return
                    process = start_worker(launch.backend, launch.request, threads=launch.threads,
                                           label=launch.label, log=log)
                    self.processes[slot] = process
                code = stream_events(process, lambda event: sink.put((slot, event)))
        except OSError as exc:  # the interpreter cannot be started, the log cannot be written
            sink.put((slot, {"event": "exit", "code": None, "error": f"cannot start the worker: {exc}"}))
            return
        finally:
            with self.lock:
                self.processes.pop(slot, None)
        sink.put((slot, {"event": "exit", "code": code}))

    def process(self, slot: int) -> subprocess.Popen | None:
        return self.processes.get(slot)

    def kill(self, slot: int) -> None:
        stop(self.processes.get(slot))

    def shutdown(self) -> None:
        """Kill every worker still running and wait (bounded) for the threads that watch them."""
        with self.lock:
            self.closing = True
            running = list(self.processes.values())
        for process in running:
            stop(process)
        deadline = time.monotonic() + JOIN_WAIT
        for thread in self.threads.values():
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
