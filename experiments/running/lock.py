"""One harness per run folder: a run holds an exclusive ``fcntl.flock`` on ``<folder>/.harness.lock`` while its jobs
run, and the file names the holder (pid, host, start time, command).

A second harness on the folder is refused before any work (``FolderBusy``, a ``UsageError``: one line naming the
holder, exit status 2). The kernel drops a ``flock`` when its holder dies, however it dies, so a lock file left by a
SIGKILLed harness blocks nothing: the next run takes the lock and writes its own name into the file. Within one
process the lock is reentrant (a notebook's second call, the bench's several runs of one folder).

``flock`` is local to a machine: two hosts sharing a folder over NFS are not kept apart by it.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator

from experiments.options import UsageError

LOCK_NAME = ".harness.lock"
_guard = threading.Lock()
_held: dict[str, tuple[int, int]] = {}  # resolved folder -> (file descriptor, depth) held by this process


class FolderBusy(UsageError):
    """Another harness holds the run folder."""


def lock_path(folder: Path) -> Path:
    return Path(folder) / LOCK_NAME


def _key(folder: Path) -> str:
    return str(Path(folder).resolve())


def _holder_text(path: Path) -> str:
    try:
        holder = json.loads(path.read_text())
    except (OSError, ValueError):
        holder = None
    if not isinstance(holder, dict):
        return "a harness that has not written its name yet"
    return (f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}, started {holder.get('started', '?')}")


def _busy(folder: Path) -> FolderBusy:
    return FolderBusy(f"run folder {folder} is in use by another harness ({_holder_text(lock_path(folder))}); wait "
                      f"for it to finish or stop it, or choose another --out")


def holder(folder: Path) -> str | None:
    """Who else holds the folder's lock (a line for the message), or None when nobody does. Touches nothing: a
    folder without a lock file stays without one."""
    folder = Path(folder)
    if _key(folder) in _held:
        return None
    try:
        fd = os.open(lock_path(folder), os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _holder_text(lock_path(folder))
    finally:
        os.close(fd)
    return None


def check_free(folder: Path) -> None:
    """Raise ``FolderBusy`` when another harness holds ``folder`` (the early check, before any work)."""
    if holder(folder) is not None:
        raise _busy(folder)


def _acquire(folder: Path) -> int:
    path = lock_path(folder)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise _busy(folder) from None
        try:  # the file may have been removed by the holder that released it just before: lock the one on disk
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    holder_info: dict[str, Any] = {"pid": os.getpid(), "host": socket.gethostname(),
                                   "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": " ".join(sys.argv)}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(holder_info) + "\n").encode(), 0)
    return fd


@contextlib.contextmanager
def hold(folder: Path) -> Iterator[None]:
    """Hold ``folder``'s lock for the block (made if missing); reentrant within this process. Raises ``FolderBusy``
    when another process holds it. The lock file is removed on release."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    key = _key(folder)
    with _guard:
        if key in _held:
            fd, depth = _held[key]
            _held[key] = (fd, depth + 1)
        else:
            _held[key] = (_acquire(folder), 1)
    try:
        yield
    finally:
        with _guard:
            fd, depth = _held[key]
            if depth > 1:
                _held[key] = (fd, depth - 1)
            else:
                del _held[key]
                with contextlib.suppress(OSError):  # removed while still held: no other run can take it meanwhile
                    os.unlink(lock_path(folder))
                os.close(fd)
