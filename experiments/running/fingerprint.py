"""What a job's numbers depend on, hashed: its full spec, the source of the code that computes them, the framework's
version, the data's checksum, the device and the thread count. Equal fingerprints mean a finished job can be reused.

The code is found by a rule, not a list (``source_files``), so that a new module is seen without a change here:
every module of the backend's package (``backends/<name>/``, imported by name by the registry, so no import
statement names them all), and every project module that the worker or those modules import, followed from module
to module through their ``import`` statements (read with ``ast``, never run), with the ``__init__`` of each package
on the way. Imports inside functions count too (they run when the function does), except in a package's PEP 562
``__getattr__``, which runs only when an attribute the worker never reads is asked for (``experiments``' lazy
``run``/``load``). A module outside the project (NumPy, a framework) is covered by the framework's version.
"""
from __future__ import annotations

import ast
import hashlib
import json
import os
from functools import lru_cache
from pathlib import Path

from backends import registry
from experiments.data_files import FILES, held_path
from experiments.running.plan import Job

ROOT = registry.PROJECT_ROOT
WORKER = "experiments.running.worker"  # the module every job runs in
REGISTRY = "backends.registry"  # finds the backend's package and class
LAZY_HOOKS = ("__getattr__", "__dir__")  # PEP 562: run on attribute access only


def module_path(name: str, root: Path = ROOT) -> Path | None:
    """The file of project module ``name`` under ``root`` (a package's ``__init__.py``), or None when it is not
    one of the project's."""
    base = root.joinpath(*name.split("."))
    for candidate in (base / "__init__.py", base.with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, root: Path) -> set[str]:
    """The modules ``path``'s import statements name (``from a import b`` names ``a`` and ``a.b``), relative
    imports resolved, skipping the bodies of module-level PEP 562 hooks."""
    tree = ast.parse(path.read_bytes(), filename=str(path))
    name = _module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    hooks = [node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name in LAZY_HOOKS]
    skipped = {id(n) for hook in hooks for n in ast.walk(hook)}
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            if base:
                found.add(base)
            found.update(f"{base}.{alias.name}" if base else alias.name for alias in node.names)
    return found


def _with_parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def backend_modules(backend: str, root: Path = ROOT) -> list[Path]:
    """Every module of the backend's package (``registry.resolve(backend).package``), new ones included."""
    package = root.joinpath(*registry.resolve(backend).package.split("."))
    if package.is_dir():
        return sorted(package.rglob("*.py"))
    return [package.with_suffix(".py")] if package.with_suffix(".py").is_file() else []


def source_files(backend: str, root: Path = ROOT) -> list[Path]:
    """The project's modules that a job of ``backend`` runs: the backend's package, the worker, the registry, and
    every project module that they import, transitively (the module docstring tells the rule)."""
    pending = [p for p in [module_path(WORKER, root), module_path(REGISTRY, root), *backend_modules(backend, root)]
               if p is not None]
    seen: set[Path] = set()
    while pending:
        path = pending.pop()
        if path in seen:
            continue
        seen.add(path)
        for name in _imports(path, root):
            for module in _with_parents(name):
                found = module_path(module, root)
                if found is not None and found not in seen:
                    pending.append(found)
    return sorted(seen)


def _stamp(root: Path) -> tuple:
    """Every Python file's path, size and modification time under the project's two packages: a cheap key under
    which the digest is cached, so that an edit is seen by the next call of the same process (a notebook)."""
    entries = []
    for top in ("backends", "experiments"):
        for folder, _, names in os.walk(root / top):
            for name in names:
                if name.endswith(".py"):
                    stat = os.stat(os.path.join(folder, name))
                    entries.append((folder, name, stat.st_size, stat.st_mtime_ns))
    return tuple(sorted(entries))


def compute_source_digest(backend: str, root: Path = ROOT) -> str:
    hasher = hashlib.sha256()
    for path in source_files(backend, root):
        hasher.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return hasher.hexdigest()


@lru_cache(maxsize=64)
def _cached_digest(backend: str, root: Path, stamp: tuple) -> str:
    return compute_source_digest(backend, root)


def source_digest(backend: str, root: Path = ROOT) -> str:
    """sha256 over ``source_files(backend)``: their paths and contents."""
    return _cached_digest(backend, root, _stamp(root))


@lru_cache(maxsize=None)
def data_checksum(folder: Path) -> str:
    """sha256 over the four files as they are held (gzip or raw): a different copy of the data is a different run."""
    hasher = hashlib.sha256()
    for name in FILES.values():
        path = held_path(Path(folder), name)
        hasher.update(name.encode() + b"\0")
        if path is not None:
            hasher.update(path.read_bytes())
    return hasher.hexdigest()


def job_fingerprint(job: Job, *, data_dir: Path, threads: int) -> str:
    content = {"job": job.to_dict(), "source": source_digest(job.backend),
               "framework": registry.framework_version(job.backend), "data": data_checksum(Path(data_dir)),
               "device": job.train.device, "threads": threads}
    return hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()[:20]
