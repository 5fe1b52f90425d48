"""A child process that exits once the process that started it is gone: the job's worker (started by the harness or
a Ray task) and the bench's floor process (started by the worker). Standard library only: the worker may run under
another interpreter."""
from __future__ import annotations

import os
import threading
import time

PARENT_POLL = 0.5  # seconds between checks that the process that started this one is still alive


def exit_with_parent(parent_pid: int) -> None:
    """Exit as soon as the parent is gone, so that a SIGKILLed parent leaves no child working on. A polling thread
    rather than PR_SET_PDEATHSIG: that signal follows the parent *thread*, and the local executor starts workers from
    short-lived threads."""
    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(PARENT_POLL)
        os._exit(3)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()
