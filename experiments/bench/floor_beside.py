"""The floor timed beside a job's steady epochs, from inside the job's worker (bench runs only).

The worker starts the floor's own process (``python -m experiments.bench.floor --serve``) under this project's
interpreter, whatever interpreter the worker itself runs under, so that every job's floor is the same NumPy's BLAS
(the MXNet venv has a NumPy of its own). The process lives as long as the job: it times the peak once, then one
pass of the step's GEMMs right before each steady epoch and one after the last, while the worker waits, so that a
job's ratio is taken against the floor of the same seconds of a shared machine rather than of a fresh process that
ran before the job's start-up. Standard library only: the worker may run under another interpreter."""
from __future__ import annotations

import json
import subprocess
from typing import Any, Mapping, Sequence

from backends.registry import PROJECT_ROOT


class FloorBeside:
    """The floor's process beside one job. Any failure ends it and is reported as an ``error`` (the job goes on:
    the bench then takes the job's ratio against the run's pooled floor)."""

    def __init__(self, interpreter: str, *, sizes: Sequence[int], batch: int, environment: Mapping[str, str]) -> None:
        env = dict(environment)
        env["PYTHONPATH"] = str(PROJECT_ROOT)
        self.error: str | None = None
        self.process: subprocess.Popen | None = None
        try:
            self.process = subprocess.Popen([interpreter, "-m", "experiments.bench.floor", "--serve"],
                                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                            cwd=PROJECT_ROOT, env=env)
        except OSError as exc:
            self.error = f"the floor beside the job could not start: {exc}"
        self.opened: dict[str, Any] = self._ask(json.dumps({"sizes": list(sizes), "batch": batch})) or {}
        if self.process is not None:
            peak = self._ask("peak")
            if peak is not None:
                self.opened["peak_samples"] = peak["peak_samples"]

    def _ask(self, line: str) -> dict[str, Any] | None:
        if self.process is None:
            return None
        try:
            self.process.stdin.write(line + "\n")
            self.process.stdin.flush()
            reply = self.process.stdout.readline()
            if not reply:
                raise RuntimeError(f"the floor's process ended (exit status {self.process.wait(timeout=10)})")
            answer = json.loads(reply)
            if "error" in answer:
                raise RuntimeError(answer["error"])
            return answer
        except (OSError, ValueError, RuntimeError, subprocess.TimeoutExpired) as exc:
            self.error = f"the floor beside the job failed: {' '.join(str(exc).split())}"
            self.close()
            return None

    def one_pass(self, when: str) -> dict[str, Any]:
        """A ``floor`` event: one pass of the step's GEMMs (each GEMM's seconds per call, a sample per round), or
        the error that ended the floor's process."""
        answer = self._ask("pass")
        if answer is None:
            return {"event": "floor", "when": when, "error": self.error}
        return {"event": "floor", "when": when, "samples": answer["samples"]}

    def close(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        try:
            process.stdin.close()
        except OSError:
            pass
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
