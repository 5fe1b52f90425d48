"""Executors: ``--jobs 2`` gives the numbers of ``--jobs 1``; a Ray cluster of two nodes, started inside a network
namespace of the test's own, gives the local executor's numbers, with its columns, a failed row for a killed worker,
a failed row (and no second run) for a task whose own process dies, SIGTERM cancels its tasks and nothing is left
running; the bench refuses concurrent jobs."""
import json
import os
import shutil
import subprocess
import sys

import psutil
import pytest

import backends
from tests.helpers import read_csv
from tests.test_cli import assert_user_error, harness
from tests.test_resume import epoch_numbers, final_numbers

SMALL = ["--experiment", "long-training", "--backend", "numpy", "--backend", "torch", "--epochs", "2",
         "--train-limit", "2000", "--seeds", "0", "1", "--threads", "1"]
KILL_JOB = "numpy-stock-concise-eager-cpu-none-seed1"
# The two kill runs: NumPy's four jobs of SMALL (they test what becomes of the killed job and the rest).
KILL_RUNS = ["--experiment", "long-training", "--backend", "numpy", "--epochs", "2", "--train-limit", "2000",
             "--seeds", "0", "1", "--threads", "1"]


def test_two_local_jobs_at_once_give_the_numbers_of_one_at_a_time(tmp_path):
    args = ["--backend", "numpy", "--seeds", "0", "1", "2", "--epochs", "2", "--train-limit", "2000",
            "--threads", "1"]
    assert harness(*args, "--jobs", "1", "--out", str(tmp_path / "one")).returncode == 0
    result = harness(*args, "--jobs", "2", "--out", str(tmp_path / "two"))
    assert result.returncode == 0, result.stderr
    assert epoch_numbers(tmp_path / "two") == epoch_numbers(tmp_path / "one")
    assert final_numbers(tmp_path / "two") == final_numbers(tmp_path / "one")
    summary = read_csv(tmp_path / "two" / "summary.csv")
    assert {r["executor"] for r in summary} == {"local"} and "2" in {r["concurrent_jobs"] for r in summary}
    assert {r["concurrent_jobs"] for r in read_csv(tmp_path / "one" / "summary.csv")} == {"1"}
    assert "timings are not those of a machine to themselves" in (tmp_path / "two" / "report.md").read_text()


def test_the_bench_refuses_concurrent_jobs():
    assert_user_error(harness("bench", "--backend", "numpy", "--jobs", "2"), "--jobs 2", "one job at a time")


def _processes_in(netns: str) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter():
        try:
            if os.readlink(f"/proc/{process.pid}/ns/net") == netns:
                found.append(process)
        except OSError:
            pass
    return found


@pytest.fixture(scope="module")
def ray_runs(tmp_path_factory):
    """The runs of tests/ray_in_namespace.py, once for the module: (their folder, its result.json)."""
    from tests.conftest import require_backend, require_ray

    require_ray()
    require_backend("torch")
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        pytest.skip("needs unshare and ip (util-linux, iproute2) to make the test's network namespace")
    tmp_path = tmp_path_factory.mktemp("ray")
    script = backends.PROJECT_ROOT / "tests" / "ray_in_namespace.py"
    command = f"ip link set lo up && exec {sys.executable} {script} {tmp_path} {' '.join(SMALL)}"
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", KILL_JOB=KILL_JOB, KILL_RUN_ARGS=json.dumps(KILL_RUNS))
    outcome = None
    try:
        outcome = subprocess.run(["unshare", "-n", "sh", "-c", command], env=env, capture_output=True, text=True,
                                 timeout=1500)
    finally:
        result = json.loads((tmp_path / "result.json").read_text()) if (tmp_path / "result.json").exists() else {}
        left = _processes_in(result["netns"]) if "netns" in result else []
        for process in left:  # teardown even when the run failed: nothing of the cluster may outlive the test
            process.kill()
    assert outcome is not None and outcome.returncode == 0, outcome and outcome.stderr[-3000:]
    assert "error" not in result, result
    assert not left, f"left running in the namespace: {[p.pid for p in left]}"
    assert result["nodes"] == 2, result["nodes"]
    return tmp_path, result


def test_a_two_node_ray_cluster_in_its_own_network_namespace_gives_the_local_numbers(ray_runs):
    tmp_path, result = ray_runs
    for run in ("ray", "local"):
        assert result[run]["returncode"] == 0, result[run]["stderr_tail"]
    ray_run, local = tmp_path / "ray", tmp_path / "local"
    assert epoch_numbers(ray_run) == epoch_numbers(local) and len(epoch_numbers(local)) == 16
    assert final_numbers(ray_run) == final_numbers(local)
    summary = read_csv(ray_run / "summary.csv")
    assert {r["executor"] for r in summary} == {"ray"} and all(r["host"] for r in summary)
    assert all(int(r["concurrent_jobs"]) >= 1 and float(r["dispatch_seconds"]) > 0 for r in summary)
    # Each node offers one CPU and each job asks for one: two jobs at once means both nodes ran tasks.
    assert max(int(r["concurrent_jobs"]) for r in summary) == 2
    assert {r["executor"] for r in read_csv(ray_run / "epochs.csv")} == {"ray"}
    assert len(read_csv(ray_run / "train_eval.csv")) == len(read_csv(local / "train_eval.csv"))



def test_sigterm_of_a_ray_run_cancels_its_tasks_and_leaves_no_worker(ray_runs):
    tmp_path, result = ray_runs
    assert result["stopped_mid_run"] and result["stopped"]["returncode"] == 143, result["stopped"]
    assert result["workers_after_sigterm"] == 0
    stopped = read_csv(tmp_path / "stopped" / "summary.csv")
    assert "interrupted" in {r["status"] for r in stopped}, [(r["status"], r["error"]) for r in stopped]


def _key_of(row) -> str:
    return (f"{row['backend']}-{row.get('tuning', 'stock')}-{row['impl']}-{row['mode']}-cpu-{row['variant']}"
            f"-seed{row['seed']}")


def test_a_ray_job_whose_worker_is_killed_is_one_failed_row_and_the_others_finish(ray_runs):
    tmp_path, result = ray_runs
    assert result["killed_worker"], "the worker to kill never appeared"
    killed = read_csv(tmp_path / "killed" / "summary.csv")
    failed = [r for r in killed if r["status"] != "ok"]
    assert len(killed) == 4 and len(failed) == 1, [(r["status"], r["error"]) for r in killed]
    assert failed[0]["status"] == "failed" and "SIGKILL" in failed[0]["error"], failed[0]["error"]
    assert _key_of(failed[0]) == KILL_JOB
    assert result["killed"]["returncode"] == 1  # a failed job fails the run


def test_a_ray_task_whose_process_dies_is_recorded_failed_and_never_run_again(ray_runs):
    """The task's own process (the Ray worker that runs the job's worker) is SIGKILLed: the job is a failed row
    that says so; Ray does not run the task again (a retried job would be timed twice, its rows could double), so
    the job's worker process is started exactly once."""
    tmp_path, result = ray_runs
    watched = result["killed_task"]
    assert watched["task_pid"] is not None, "the worker to kill the task of never appeared"
    assert watched["worker_pids"] == 1, f"the job's worker was started {watched['worker_pids']} times"
    summary = read_csv(tmp_path / "task-killed" / "summary.csv")
    failed = [r for r in summary if r["status"] != "ok"]
    assert len(summary) == 4 and [_key_of(r) for r in failed] == [KILL_JOB], [(r["status"], r["error"])
                                                                              for r in summary]
    assert failed[0]["status"] == "failed" and "not retried" in failed[0]["error"], failed[0]["error"]
    epoch_numbers(tmp_path / "task-killed")  # asserts that no job's epoch row appears twice
    rows = [r for r in read_csv(tmp_path / "task-killed" / "epochs.csv") if _key_of(r) == KILL_JOB]
    assert len(rows) == len({r["epoch"] for r in rows}) <= 2, rows
    assert result["task_killed"]["returncode"] == 1


# Inside the test's network namespace: an HTTP server on loopback (a port of something that is not Ray) and a port
# that nothing listens on; the harness's train and bench commands against each. Prints one JSON line.
WRONG_ADDRESS_RUNS = r"""
import json, subprocess, sys, time
import socket
server = subprocess.Popen([sys.executable, "-m", "http.server", "8765", "--bind", "127.0.0.1"],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
deadline = time.monotonic() + 60  # poll until the server listens, rather than guess how long it takes
while True:
    try:
        socket.create_connection(("127.0.0.1", 8765), timeout=1).close()
        break
    except OSError:
        if time.monotonic() > deadline or server.poll() is not None:
            raise SystemExit("the HTTP server did not start listening")
        time.sleep(0.05)
runs = {}
try:
    for port in (8765, 8766):
        for command in ([], ["bench"]):
            done = subprocess.run([sys.executable, HARNESS, *command, "--backend", "numpy", "--executor", "ray",
                                   "--ray-address", f"127.0.0.1:{port}", "--train-limit", "1000", "--out", OUT],
                                  capture_output=True, text=True, timeout=120)  # Ray's retries take minutes
            runs[f"{' '.join(command) or 'train'} {port}"] = {"returncode": done.returncode, "stderr": done.stderr}
finally:
    server.kill()
print(json.dumps(runs))
"""


def test_a_ray_address_where_no_ray_head_answers_is_one_line_at_once_and_makes_no_folder(tmp_path):
    """ray.init against a port of another server retries for many minutes (20 attempts of about 40 s against an
    HTTP server), in C code that SIGTERM does not interrupt; the harness asks the port first."""
    from tests.conftest import require_ray

    require_ray()
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        pytest.skip("needs unshare and ip (util-linux, iproute2) to make the test's network namespace")
    out = tmp_path / "runs" / "run"
    code = f"HARNESS = {str(backends.PROJECT_ROOT / 'harness.py')!r}; OUT = {str(out)!r}\n{WRONG_ADDRESS_RUNS}"
    outcome = subprocess.run(["unshare", "-n", "sh", "-c", f"ip link set lo up && exec {sys.executable} -c \"$0\"",
                              code], capture_output=True, text=True, timeout=900)
    assert outcome.returncode == 0, outcome.stderr[-3000:]
    runs = json.loads(outcome.stdout.strip().splitlines()[-1])
    assert len(runs) == 4
    for name, run in runs.items():
        lines = run["stderr"].strip().splitlines()
        assert run["returncode"] == 2 and len(lines) == 1 and lines[0].startswith("error: --ray-address"), (name, run)
        expected = "not a Ray head's GCS" if name.endswith("8765") else "nothing answers there"
        assert expected in lines[0], (name, lines[0])
    assert not (tmp_path / "runs").exists()


def test_a_worker_killed_before_it_reads_its_request_is_reported_killed_not_unstartable(tmp_path, monkeypatch):
    """The race the Ray test can hit: the worker dies between its start and the write of its request. Writing to
    its closed pipe must not turn a SIGKILL into "cannot start the worker" (local) or a BrokenPipeError (Ray)."""
    import queue
    import signal

    from experiments.running.executors import process as worker_process
    from experiments.running.executors.base import Launch
    from experiments.running.executors.local import LocalExecutor
    from experiments.running.executors.process import describe_exit

    real_popen = subprocess.Popen

    def popen_then_kill(*args, **kwargs):
        started = real_popen(*args, **kwargs)
        started.send_signal(signal.SIGKILL)
        started.wait()
        return started

    monkeypatch.setattr(worker_process.subprocess, "Popen", popen_then_kill)
    executor = LocalExecutor(jobs=1)
    sink: queue.Queue = queue.Queue()
    executor.submit(0, Launch(backend="numpy", request={"job": {}}, threads=1, gpu=False, label="killed-early",
                              log_path=tmp_path / "worker.log"), sink)
    events = [sink.get(timeout=60)[1] for _ in range(2)]
    executor.shutdown()
    assert events[0]["event"] == "placed"
    assert events[1] == {"event": "exit", "code": -signal.SIGKILL}, events[1]
    assert describe_exit(events[1]["code"]) == "worker killed by signal SIGKILL"
