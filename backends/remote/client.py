"""A Backend whose framework lives in another process (and possibly another venv): calls travel by ``wire``.

The parity tests use it for MXNet, whose venv pins numpy 1.23, and can use it for any backend to check it the way
the runner runs it: in its own worker process.
"""
from __future__ import annotations

import dataclasses
import os
import subprocess
from typing import Any

from backends import registry
from backends.contract import ModelSpec, TrainSpec
from backends.contract.threads import thread_environment
from backends.remote import wire


class RemoteError(RuntimeError):
    """The backend raised in its worker; the message is the worker's one line, the traceback rides along."""


class RemoteBackend:
    """Same methods and keyword arguments as ``backends.contract.Backend``; each call is one round trip."""

    def __init__(self, name: str, *, model: ModelSpec, train: TrainSpec, threads: int | None = None) -> None:
        self.info = registry.resolve(name)
        self.name, self.model, self.train = self.info.name, model, train
        env = dict(os.environ, PYTHONPATH=str(registry.PROJECT_ROOT), **thread_environment(threads or 1))
        self.process = subprocess.Popen([self.info.interpreter, "-m", "backends.remote.serve",
                                         "--backend", self.info.name],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=registry.PROJECT_ROOT,
                                        env=env)
        self.reconfigure(model=model, train=train, threads=threads)

    def reconfigure(self, *, model: ModelSpec, train: TrainSpec, threads: int | None = None) -> None:
        """A fresh backend object for a new spec, in the same worker process (saves the framework's start-up)."""
        self.model, self.train = model, train
        hello = self._call("__init__", model=dataclasses.asdict(model), train=dataclasses.asdict(train),
                           threads=threads)
        self.framework_version = hello["version"]
        self.capabilities = hello["capabilities"]

    def _call(self, method: str, **kwargs: Any) -> Any:
        try:
            wire.send(self.process.stdin, {"method": method, "kwargs": kwargs})
            reply = wire.receive(self.process.stdout)
        except (EOFError, BrokenPipeError) as exc:
            code = self.process.poll()
            raise RemoteError(f"{self.name} worker died during {method} (exit status {code})") from exc
        if "error" in reply:
            raise RemoteError(f"{self.name}.{method}: {reply['error']}\n{reply.get('traceback', '')}")
        return reply["ok"]

    def __getattr__(self, method: str):
        if method.startswith("_"):
            raise AttributeError(method)
        return lambda **kwargs: self._call(method, **kwargs)

    def close(self) -> None:
        if self.process.poll() is None:
            try:
                self._call("__exit__")
            except RemoteError:
                pass
            self.process.stdin.close()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()

    def __enter__(self) -> "RemoteBackend":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
