"""Runs inside the network namespace that tests/test_executors.py creates (``unshare -n``, loopback only): a Ray
cluster of a head and one more node on 127.0.0.1, the harness through it (and once locally, for reference), a run in
which one worker is killed mid-task, one in which the Ray task's own process is killed (it must not be run again),
one stopped by SIGTERM, then the cluster stopped whatever happened. Writes ``result.json`` to OUT.

The Ray run, the local one and the stopped one take HARNESS_ARGS; the two kill runs take KILL_RUN_ARGS (a JSON
list; fewer jobs: they test what happens to the killed job and the others, not the numbers).

KILL_JOB=<job key> KILL_RUN_ARGS='[...]' python tests/ray_in_namespace.py OUT HARNESS_ARGS...
"""
from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
RAY = str(Path(sys.executable).parent / "ray")
HEAD_PORT = 6390
KILL_KEY = os.environ.get("KILL_JOB", "")  # the job whose worker the kill runs kill
KILL_RUN_ARGS = json.loads(os.environ.get("KILL_RUN_ARGS", "null"))
# Token authentication (Ray's default for new clusters): one token of this test's own for every node and driver.
ENV = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", PYTHONPATH=str(ROOT), RAY_AUTH_MODE="token",
           RAY_AUTH_TOKEN=secrets.token_hex(32))
# Two raylets on one address need their own ports; the head keeps Ray's defaults except the worker range.
NODES = [
    ["start", "--head", f"--port={HEAD_PORT}", "--include-dashboard=false", "--min-worker-port=20000",
     "--max-worker-port=20199"],
    ["start", f"--address=127.0.0.1:{HEAD_PORT}", "--node-manager-port=23001", "--object-manager-port=23002",
     "--dashboard-agent-listen-port=23003", "--dashboard-agent-grpc-port=23004", "--runtime-env-agent-port=23005",
     "--metrics-export-port=23006", "--min-worker-port=21000", "--max-worker-port=21199"],
]
COMMON = ["--node-ip-address=127.0.0.1", "--num-cpus=1", "--disable-usage-stats"]


def harness(args, out):
    return subprocess.Popen([sys.executable, str(ROOT / "harness.py"), *args, "--out", str(out)], cwd=ROOT,
                            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(process, timeout=600):
    try:
        _, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        _, stderr = process.communicate()
    return {"returncode": process.returncode, "stderr_tail": stderr[-3000:]}


def kill_first_worker(out, key, timeout=300):
    """SIGKILL the worker of job ``key`` as soon as it exists (it is then mid-task: importing, loading, training)."""
    label = f"{out}/{key}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for process in psutil.process_iter(["cmdline"]):
            if label in (process.info["cmdline"] or []):
                process.send_signal(signal.SIGKILL)
                return True
        time.sleep(0.02)
    return False


def workers_of(out):
    return [p for p in psutil.process_iter(["cmdline"])
            if any(arg.startswith(str(out)) for arg in (p.info["cmdline"] or [])[3:4])]


def workers_gone(out, timeout=10.0):
    """Poll until no worker of the run in ``out`` is left (or the deadline); returns how many are left."""
    deadline = time.monotonic() + timeout
    while workers_of(out) and time.monotonic() < deadline:
        time.sleep(0.1)
    return len(workers_of(out))


def kill_task_and_watch(out, key, process, timeout=600):
    """SIGKILL the Ray task's own process (the parent of job ``key``'s worker) as soon as the worker exists, then
    watch, until the harness ends, every worker process that job ever gets: a retried task would start a second."""
    label = f"{out}/{key}"
    seen, killed = set(), None
    deadline = time.monotonic() + timeout
    while process.poll() is None and time.monotonic() < deadline:
        for candidate in psutil.process_iter(["cmdline"]):
            if label in (candidate.info["cmdline"] or []):
                seen.add(candidate.pid)
                if killed is None:
                    try:
                        task = candidate.parent()
                        killed = task.pid
                        task.send_signal(signal.SIGKILL)
                    except (psutil.NoSuchProcess, AttributeError):
                        pass
        time.sleep(0.02)
    return {"task_pid": killed, "worker_pids": len(seen)}


def wait_for_epoch(out, timeout=300):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (out / "epochs.csv").exists():
            return True
        time.sleep(0.02)
    return False


def alive_nodes():
    probe = ("import ray; ray.init(address='127.0.0.1:%d', log_to_driver=False); "
             "print(sum(n['Alive'] for n in ray.nodes()))" % HEAD_PORT)
    result = subprocess.run([sys.executable, "-c", probe], env=ENV, capture_output=True, text=True, timeout=120)
    return int(result.stdout.strip().splitlines()[-1]) if result.returncode == 0 else result.stderr[-2000:]


def main() -> int:
    out = Path(sys.argv[1])
    args = sys.argv[2:]
    kill_args = KILL_RUN_ARGS if KILL_RUN_ARGS is not None else args
    result = {"netns": os.readlink("/proc/self/ns/net")}
    try:
        for node in NODES:
            started = subprocess.run([RAY, *node, *COMMON], env=ENV, timeout=180, capture_output=True, text=True)
            if started.returncode != 0:
                raise RuntimeError(f"ray {' '.join(node[:2])} failed: {started.stderr[-1500:]}")
        result["nodes"] = alive_nodes()
        address = ["--executor", "ray", "--ray-address", f"127.0.0.1:{HEAD_PORT}"]
        ray_run = harness([*args, *address], out / "ray")
        result["ray"] = finish(ray_run)
        killed = harness([*kill_args, *address], out / "killed")
        result["killed_worker"] = kill_first_worker(out / "killed", KILL_KEY)
        result["killed"] = finish(killed)
        task_killed = harness([*kill_args, *address], out / "task-killed")
        result["killed_task"] = kill_task_and_watch(out / "task-killed", KILL_KEY, task_killed)
        result["task_killed"] = finish(task_killed)
        result["local"] = finish(harness(args, out / "local"))
        stopped = harness([*args, *address], out / "stopped")
        result["stopped_mid_run"] = wait_for_epoch(out / "stopped")
        stopped.send_signal(signal.SIGTERM)
        result["stopped"] = finish(stopped)
        result["workers_after_sigterm"] = workers_gone(out / "stopped")
    except Exception as exc:  # noqa: BLE001 - reported to the test, which fails on it
        result["error"] = repr(exc)
    finally:
        stop = subprocess.run([RAY, "stop", "--force"], env=ENV, capture_output=True, text=True, timeout=120)
        result["stop"] = stop.returncode
        (out / "result.json").write_text(json.dumps(result, indent=1))
    return 0

if __name__ == "__main__":
    sys.exit(main())
