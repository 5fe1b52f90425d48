"""Thread pools are sized by environment variables that every framework reads once, when it is imported."""
from __future__ import annotations

THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "TF_NUM_INTRAOP_THREADS")


def thread_environment(threads: int) -> dict[str, str]:
    """Variables that bound every framework's thread pools; they must be set before any framework is imported."""
    env = {name: str(threads) for name in THREAD_VARIABLES}
    env["TF_NUM_INTEROP_THREADS"] = "1"
    env["DROPBENCH_THREADS"] = str(threads)
    return env
