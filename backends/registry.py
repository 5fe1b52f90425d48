"""The backend registry: name -> package, interpreter, framework and capabilities.

Every framework is a package ``backends/<name>/`` with the same modules: ``model`` (D2L's model in the framework's
stock layers), ``backend`` (the contract, stock tier: ``Backend``), ``tuned`` (the same-law speed paths, tuned tier:
its own ``Backend``, a subclass of the stock one), ``probes`` (the bench's instrumentation, off the contract).

Each backend's capabilities (modes, devices, noise kinds) are declared here, once, so that the CLI, the bench and
the tests can read them without importing a framework; the backend class takes its own from here. No framework is
imported until a backend is loaded."""
from __future__ import annotations

import functools
import importlib
import importlib.metadata
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from backends.contract.backend import Capabilities

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class BackendError(Exception):
    """A backend cannot be used here; the message is one line naming the fix."""


@dataclass(frozen=True)
class BackendInfo:
    name: str
    package: str
    distribution: str  # the pip distribution whose version is reported and whose presence means "available"
    install: str  # the exact command that makes it available
    capabilities: Capabilities = Capabilities(modes=("eager", "compiled"))
    interpreter_env: str | None = None  # environment variable that overrides the interpreter
    default_interpreter: str | None = None  # relative to the project root; None means this interpreter

    @property
    def modes(self) -> tuple[str, ...]:
        return self.capabilities.modes

    @property
    def devices(self) -> tuple[str, ...]:
        return self.capabilities.devices

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
        BackendInfo("numpy", "backends.numpy", "numpy", "pip install numpy",
                    Capabilities(modes=("eager",), distinct_impls=False)),
        BackendInfo("torch", "backends.torch", "torch", "pip install torch==2.13.0  (or: make setup)",
                    Capabilities(modes=("eager", "compiled"), devices=("cpu", "gpu"))),
        BackendInfo("jax", "backends.jax", "jax", "pip install jax flax optax  (or: make setup)",
                    Capabilities(modes=("eager", "compiled"), devices=("cpu", "gpu"))),
        BackendInfo("tensorflow", "backends.tensorflow", "tensorflow-cpu",
                    "pip install tensorflow-cpu==2.21.0  (or: make setup)"),
        BackendInfo("mxnet", "backends.mxnet", "mxnet",
                    "make mxnet-venv  (creates .venv-mxnet with mxnet==1.9.1 numpy==1.23.5; "
                    "or set DROPBENCH_MXNET_PYTHON to a Python that has them)", Capabilities(modes=("eager", "compiled")),
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


def capabilities(name: str) -> Capabilities:
    return resolve(name).capabilities


def select(requested: list[str] | None, *, installed_only: bool) -> list[str]:
    """Backend names from the user's ``--backend`` values (None: all), in order, without repeats.

    ``installed_only``: 'all' means every installed backend and a named one that is missing is an error (training
    runs); otherwise 'all' means every registered backend and a missing one is kept (the bench and parity give it a
    row that says so)."""
    chosen: list[str] = []
    for name in requested or ["all"]:
        if name.lower() == "all":
            names = available_backends() if installed_only else list(REGISTRY)
        else:
            info = resolve(name)
            if installed_only and not is_available(info.name):
                raise BackendError(unavailable_reason(info.name))
            names = [info.name]
        chosen.extend(n for n in names if n not in chosen)
    return chosen


def gpu_visible() -> bool:
    """Whether this machine shows an NVIDIA GPU to its processes (the driver's device files), without importing a
    framework: the cheap check before any job is started on ``--device gpu``."""
    return Path("/dev/nvidiactl").exists() or Path("/proc/driver/nvidia/gpus").is_dir()


def check_device(names: list[str], device: str) -> None:
    """Refuse ``device`` when a chosen backend does not offer it, or when it is the GPU and none is visible."""
    for name in names:
        if device not in capabilities(name).devices:
            raise BackendError(f"backend {name} cannot run on {device} (it offers "
                               f"{', '.join(capabilities(name).devices)}); drop --device or choose "
                               f"{', '.join(n for n in REGISTRY if device in capabilities(n).devices)}")
    if device == "gpu" and not gpu_visible():
        raise BackendError("--device gpu: no NVIDIA GPU is visible on this machine (no /dev/nvidiactl); run on a "
                           "machine with one, or leave --device out for the CPU")


TIER_MODULES = {"stock": "backend", "tuned": "tuned"}  # the module of each tier's ``Backend`` class


def _import(name: str, module: str):
    info = resolve(name)
    if not info.in_process and Path(info.interpreter).resolve() != Path(sys.executable).resolve():
        raise BackendError(f"backend {info.name} runs under {info.interpreter}, not this interpreter; "
                           f"use backends.remote.client.RemoteBackend or the runner")
    try:
        return importlib.import_module(f"{info.package}.{module}")
    except ImportError as exc:
        raise BackendError(f"{unavailable_reason(name)} ({exc})") from exc


def load_class(name: str, tuning: str = "stock"):
    """Import the backend's package in this process and return the ``Backend`` class of the tier ``tuning``."""
    if tuning not in TIER_MODULES:
        raise BackendError(f"unknown tuning {tuning!r}; choose from {', '.join(TIER_MODULES)}")
    return _import(name, TIER_MODULES[tuning]).Backend


def load_probes(name: str):
    """The backend's ``probes`` module: the bench's instrumentation (``gemm_library``, ``gemm_step_probe``,
    ``noise_probe``, each a function of a built backend)."""
    return _import(name, "probes")
