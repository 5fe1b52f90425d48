"""The backend registry: name -> module, interpreter, framework. Imports no framework until a backend is used."""
from __future__ import annotations

import functools
import importlib
import importlib.metadata
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class BackendError(Exception):
    """A backend cannot be used here; the message is one line naming the fix."""


@dataclass(frozen=True)
class BackendInfo:
    name: str
    module: str
    distribution: str  # the pip distribution whose version is reported and whose presence means "available"
    install: str  # the exact command that makes it available
    modes: tuple[str, ...] = ("eager", "compiled")  # kept in step with the backend's Capabilities (tested)
    interpreter_env: str | None = None  # environment variable that overrides the interpreter
    default_interpreter: str | None = None  # relative to the project root; None means this interpreter

    @property
    def interpreter(self) -> str:
        if self.interpreter_env and os.environ.get(self.interpreter_env):
            return os.environ[self.interpreter_env]
        if self.default_interpreter:
            return str(PROJECT_ROOT / self.default_interpreter)
        return sys.executable

    @property
    def in_process(self) -> bool:
        """Whether this interpreter can import the backend (otherwise it runs in its own venv's worker)."""
        return self.default_interpreter is None and not (self.interpreter_env and os.environ.get(self.interpreter_env))


REGISTRY: dict[str, BackendInfo] = {
    info.name: info
    for info in (
        BackendInfo("numpy", "backends.numpy_ref", "numpy", "pip install numpy", modes=("eager",)),
        BackendInfo("torch", "backends.torch_backend", "torch", "pip install torch==2.13.0  (or: make setup)"),
        BackendInfo("jax", "backends.jax_backend", "jax", "pip install jax flax optax  (or: make setup)"),
        BackendInfo("tensorflow", "backends.tensorflow_backend", "tensorflow-cpu",
                    "pip install tensorflow-cpu==2.21.0  (or: make setup)"),
        BackendInfo("mxnet", "backends.mxnet_backend", "mxnet",
                    "make mxnet-venv  (creates .venv-mxnet with mxnet==1.9.1 numpy==1.23.5; "
                    "or set DROPBENCH_MXNET_PYTHON to a Python that has them)",
                    interpreter_env="DROPBENCH_MXNET_PYTHON", default_interpreter=".venv-mxnet/bin/python"),
    )
}
ALIASES = {"pytorch": "torch", "tf": "tensorflow", "np": "numpy", "mx": "mxnet", "gluon": "mxnet"}


def resolve(name: str) -> BackendInfo:
    key = ALIASES.get(name.lower(), name.lower())
    if key not in REGISTRY:
        raise BackendError(f"unknown backend {name!r}; choose from {', '.join(REGISTRY)} or 'all' "
                           f"(python harness.py --list shows what is installed)")
    return REGISTRY[key]


@functools.lru_cache(maxsize=None)
def framework_version(name: str) -> str | None:
    """The installed version of the backend's framework, or None. Reads package metadata; imports nothing."""
    info = resolve(name)
    if info.in_process:
        try:
            return importlib.metadata.version(info.distribution)
        except importlib.metadata.PackageNotFoundError:
            return None
    if not Path(info.interpreter).exists():
        return None
    probe = f"import importlib.metadata as m; print(m.version({info.distribution!r}))"
    try:
        result = subprocess.run([info.interpreter, "-c", probe], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def is_available(name: str) -> bool:
    return framework_version(name) is not None


def unavailable_reason(name: str) -> str:
    info = resolve(name)
    where = "" if info.in_process else f" for {info.interpreter}"
    return f"backend {info.name}: {info.distribution} is not installed{where}; fix: {info.install}"


def available_backends() -> list[str]:
    return [name for name in REGISTRY if is_available(name)]


def load_class(name: str):
    """Import the backend module in this process and return its ``Backend`` class."""
    info = resolve(name)
    if not info.in_process and Path(info.interpreter).resolve() != Path(sys.executable).resolve():
        raise BackendError(f"backend {info.name} runs under {info.interpreter}, not this interpreter; "
                           f"use backends.remote.RemoteBackend or the runner")
    try:
        module = importlib.import_module(info.module)
    except ImportError as exc:
        raise BackendError(f"{unavailable_reason(name)} ({exc})") from exc
    return module.Backend
