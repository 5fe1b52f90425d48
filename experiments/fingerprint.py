"""What a job's numbers depend on, hashed: its full spec, the source of the code that computes them, the framework's
version, the data's checksum, the device and the thread count. Equal fingerprints mean a finished job can be reused.
"""
from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path

from backends import registry
from experiments.data_files import FILES, held_path
from experiments.plan import Job

ROOT = registry.PROJECT_ROOT
# The shared code every job runs through: the contract and the remote wire, the worker's loop, the data and the
# probes. The backend's own module is added per job.
SHARED_SOURCES = ("backends/contract", "backends/remote/wire.py", "experiments/worker.py", "experiments/plan.py",
                  "experiments/data.py", "experiments/data_files.py", "experiments/probes.py")


def _files(relative: str) -> list[Path]:
    path = ROOT / relative
    return sorted(path.rglob("*.py")) if path.is_dir() else [path]


@lru_cache(maxsize=None)
def source_digest(backend: str) -> str:
    hasher = hashlib.sha256()
    module = registry.resolve(backend).module.replace(".", "/") + ".py"
    for relative in (*SHARED_SOURCES, module):
        for path in _files(relative):
            hasher.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes() + b"\0")
    return hasher.hexdigest()


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
