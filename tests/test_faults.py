"""Faults and bad inputs as a user meets them: one harness per run folder (the lock), a damaged run folder given to
``--resume``, exit statuses that tell a failed job, and no worker left training after its harness is SIGKILLed."""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import backends
from experiments import catalog, cli
from experiments.running import lock
from experiments.running.plan import Variant
from experiments.running.runner import RunOptions, exit_status, run_experiment
from tests.helpers import read_csv, workers_of
from tests.test_cli import HARNESS, assert_user_error, harness


def data_dir() -> Path:
    from experiments import data

    return data.locate(download=False, progress=False)


def start(*args) -> subprocess.Popen:
    return subprocess.Popen([*HARNESS, *args], cwd=backends.PROJECT_ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_for_rows(out: Path, process: subprocess.Popen, rows: int = 1, timeout: float = 300) -> None:
    """Poll until ``epochs.csv`` holds ``rows`` rows (the run is then training), or fail."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, f"the run ended first: {process.communicate()[1][-2000:]}"
        try:
            if len(read_csv(out / "epochs.csv")) >= rows:
                return
        except (OSError, KeyError):
            pass
        time.sleep(0.05)
    raise AssertionError(f"no epoch row in {out} after {timeout} s")


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.kill()
    process.communicate()


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder``, byte for byte."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# --- one harness per run folder ---------------------------------------------------------------------------------

LONG = ["--backend", "numpy", "--epochs", "2000", "--train-limit", "1000", "--threads", "1", "--seeds", "0"]


def test_a_second_harness_on_a_training_folder_is_refused_naming_the_holder_and_a_killed_ones_lock_blocks_nothing(
        tmp_path):
    out = tmp_path / "run"
    first = start(*LONG, "--out", str(out))
    try:
        wait_for_rows(out, first)
        for extra in (["--resume"], ["--resume", "--dry-run"], []):
            second = harness(*LONG, "--out", str(out), *extra)
            assert_user_error(second, f"run folder {out} is in use by another harness", f"pid {first.pid}",
                              f"host {socket.gethostname()}", "started 20")
        assert first.poll() is None, "the first run ended before the second was tried: the test proves nothing"
        rows_before = len(read_csv(out / "epochs.csv"))
        first.send_signal(signal.SIGKILL)  # its lock file stays behind, naming a dead harness
        first.wait()
    finally:
        stop(first)
    assert (out / lock.LOCK_NAME).exists()
    deadline = time.monotonic() + 10
    while workers_of(out) and time.monotonic() < deadline:
        time.sleep(0.1)
    resumed = harness(*[a if a != "2000" else "2" for a in LONG], "--out", str(out), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    summary = read_csv(out / "summary.csv")
    assert [(r["seed"], r["status"], r["reused"]) for r in summary] == [("0", "ok", "no")]
    assert rows_before >= 1 and len(read_csv(out / "epochs.csv")) == 2  # the killed run's rows were replaced
    assert not (out / lock.LOCK_NAME).exists()  # released when the run ended


HOLD = """
import sys, time
from pathlib import Path
from experiments.running import lock
with lock.hold(Path(sys.argv[1])):
    print("held", flush=True)
    time.sleep(120)
"""


@pytest.fixture
def held_elsewhere(tmp_path):
    """A folder whose lock another process holds."""
    folder = tmp_path / "held"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], cwd=backends.PROJECT_ROOT,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        yield folder, holder
    finally:
        holder.kill()
        holder.wait()


def test_the_runner_refuses_a_folder_another_process_holds_before_any_work(held_elsewhere):
    folder, holder = held_elsewhere
    before = snapshot(folder)
    experiment = catalog.build("d2l", backends=["numpy"], seeds=(0,), train_overrides={"epochs": 1,
                                                                                     "train_limit": 500})
    with pytest.raises(lock.FolderBusy, match=f"pid {holder.pid} on host"):
        run_experiment(experiment, RunOptions(data_dir=data_dir(), out_dir=folder, threads=1, progress=False))
    assert snapshot(folder) == before  # no log folder, no table, no meta.json
    assert lock.holder(folder) is not None
    holder.kill()
    holder.wait()
    assert lock.holder(folder) is None  # the kernel dropped the dead holder's lock; its file stays
    rows = run_experiment(experiment, RunOptions(data_dir=data_dir(), out_dir=folder, threads=1, progress=False))
    assert [r["status"] for r in rows] == ["ok"]


def test_the_lock_is_reentrant_within_a_process_and_looking_touches_nothing(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    assert lock.holder(folder) is None and not any(folder.iterdir())  # a check makes no lock file
    with lock.hold(folder):
        with lock.hold(folder):  # the bench's rounds, a notebook's second call
            assert lock.holder(folder) is None  # this process holds it: not "another harness"
        check = subprocess.run([sys.executable, "-c", "import sys; from pathlib import Path; "
                                "from experiments.running import lock; print(lock.holder(Path(sys.argv[1])))",
                                str(folder)],
                               cwd=backends.PROJECT_ROOT, capture_output=True, text=True, timeout=120)
        assert f"pid {os.getpid()} on host" in check.stdout, check.stdout + check.stderr
    assert not (folder / lock.LOCK_NAME).exists()


# --- a damaged run folder -----------------------------------------------------------------------------------------

SMALL = ["--backend", "numpy", "--epochs", "2", "--train-limit", "500", "--threads", "1", "--seeds", "0", "1"]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("finished") / "run"
    result = harness(*SMALL, "--out", str(out))
    assert result.returncode == 0, result.stderr
    return out


def _cut(path: Path) -> None:
    text = path.read_bytes()
    path.write_bytes(text[:len(text) - len(text) // 3])


def _edit_status(path: Path) -> None:
    path.write_text(path.read_text().replace(",ok,", ",okay,", 1))


def _edit_number(path: Path) -> None:
    rows = path.read_text().splitlines(keepends=True)
    rows[1] = rows[1].replace(".", ",", 1)  # a decimal point typed as a comma: one field too many
    path.write_text("".join(rows))


DAMAGES = {
    "summary cut": ("summary.csv", _cut),
    "summary status edited": ("summary.csv", _edit_status),
    "epochs number edited": ("epochs.csv", _edit_number),
    "epochs emptied": ("epochs.csv", lambda p: p.write_text("")),
    "summary of another program": ("summary.csv", lambda p: p.write_text("name,score\nalice,3\n")),
    "a foreign table beside them": ("notes.csv", lambda p: p.write_text("when,what\n2026-01-01,tea\n")),
    "a stray quote": ("epochs.csv", lambda p: p.write_text(p.read_text().replace(",d2l,", ',"d2l,', 1))),
}


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_resume_of_a_damaged_run_folder_is_one_line_naming_the_file_and_changes_nothing(finished_run, tmp_path,
                                                                                       damage):
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    name, spoil = DAMAGES[damage]
    spoil(out / name)
    before = snapshot(out)
    result = harness(*SMALL, "--out", str(out), "--resume")
    assert_user_error(result, str(out / name), "--resume", "restore the file")
    assert snapshot(out) == before
    dry = harness(*SMALL, "--out", str(out), "--resume", "--dry-run")
    assert_user_error(dry, str(out / name))


def test_resume_without_meta_json_is_one_line_and_changes_nothing(finished_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    (out / "meta.json").unlink()
    before = snapshot(out)
    assert_user_error(harness(*SMALL, "--out", str(out), "--resume"), "not a run folder", "meta.json")
    assert snapshot(out) == before


def test_an_untouched_copy_of_the_run_resumes_and_reuses_every_job(finished_run, tmp_path):
    """The checks above refuse damage, not a whole folder: the same folder, undamaged, resumes (its jobs reused,
    or rerun where the code changed since the fixture's run: either way once each)."""
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    result = harness(*SMALL, "--out", str(out), "--resume")
    assert result.returncode == 0, result.stderr
    assert sorted(r["seed"] for r in read_csv(out / "summary.csv")) == ["0", "1"]
    assert len(read_csv(out / "epochs.csv")) == 4


# --- exit statuses ------------------------------------------------------------------------------------------------

def test_exit_status_counts_every_job_that_could_run():
    assert exit_status(["ok", "ok"]) == 0
    assert exit_status(["ok", "unavailable"]) == 0  # a backend that is not installed could not run
    assert exit_status({"ok": 4, "failed": 1}) == 1
    assert exit_status(["ok", "interrupted"]) == 1
    assert exit_status(["unavailable"]) == 1 and exit_status([]) == 1  # nothing ran: nothing is green


def test_a_run_with_one_diverging_job_among_finished_ones_exits_1_with_every_table_written(tmp_path, monkeypatch,
                                                                                          capsys):
    """Two arms of one experiment, real workers: one trains, the other diverges (lr 1e9). The harness writes every
    table and the report, and exits 1 instead of 0."""
    real_build = catalog.build

    def two_arms(*args, **kwargs):
        experiment = real_build(*args, **kwargs)
        return dataclasses.replace(experiment, variants=(Variant("trains"), Variant("diverges",
                                                                                    train={"lr": 1e9})))

    monkeypatch.setattr(catalog, "build", two_arms)
    out = tmp_path / "run"
    status = cli.main(["--backend", "numpy", "--epochs", "2", "--train-limit", "500", "--threads", "1",
                       "--seeds", "0", "--out", str(out)])
    assert status == 1
    summary = {r["variant"]: r for r in read_csv(out / "summary.csv")}
    assert summary["trains"]["status"] == "ok" and summary["diverges"]["status"] == "failed"
    assert "diverged" in summary["diverges"]["error"]
    assert {r["variant"] for r in read_csv(out / "epochs.csv")} == {"trains"}
    assert (out / "report.md").exists() and (out / "learning_curves.png").exists()
    assert json.loads((out / "meta.json").read_text())["job_statuses"] == {"ok": 1, "failed": 1}
    monkeypatch.setattr(catalog, "build", real_build)
    assert cli.main(["--backend", "numpy", "--epochs", "1", "--train-limit", "500", "--threads", "1",
                     "--seeds", "0", "--out", str(tmp_path / "fine")]) == 0


def test_a_resumed_run_whose_failed_job_now_finishes_exits_0(tmp_path, monkeypatch):
    """The status is this run's: a job reused as ok counts as ok, a failure replaced by a finished job is gone."""
    out = tmp_path / "run"
    args = ["--backend", "numpy", "--epochs", "1", "--train-limit", "500", "--threads", "1", "--seeds", "0", "1",
            "--out", str(out)]
    assert cli.main(args) == 0
    rows = read_csv(out / "summary.csv")
    rows[1]["status"], rows[1]["error"] = "failed", "worker killed by signal SIGKILL"
    header = list(rows[0])
    with open(out / "summary.csv", "w", newline="") as handle:
        import csv

        writer = csv.DictWriter(handle, fieldnames=header)
        writer.writeheader()
        writer.writerows(rows)
    assert cli.main([*args, "--resume"]) == 0
    assert [r["status"] for r in read_csv(out / "summary.csv")] == ["ok", "ok"]


def test_a_bench_exits_0_beside_a_backend_that_is_not_installed_and_1_when_a_job_is_killed(tmp_path):
    env = dict(os.environ, DROPBENCH_MXNET_PYTHON=str(tmp_path / "nowhere" / "python"))
    args = ["bench", "--backend", "numpy", "--backend", "mxnet", "--rounds", "1", "--repeats", "1", "--tuning",
            "stock", "--no-noise-off", "--train-limit", "500", "--threads", "1"]
    fine = harness(*args, "--out", str(tmp_path / "fine"), env=env)
    assert fine.returncode == 0, fine.stderr
    statuses = {r["backend"]: r["status"] for r in read_csv(tmp_path / "fine" / "bench.csv")}
    assert statuses == {"numpy": "ok", "mxnet": "unavailable"}
    out = tmp_path / "killed"
    bench = subprocess.Popen([*HARNESS, *args, "--out", str(out)], cwd=backends.PROJECT_ROOT, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while not workers_of(out) and bench.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        for worker in workers_of(out):
            worker.kill()
        _, stderr = bench.communicate(timeout=600)
    finally:
        stop(bench)
    assert bench.returncode == 1, stderr[-2000:]
    rows = {r["backend"]: r for r in read_csv(out / "bench.csv")}
    assert rows["numpy"]["status"] == "failed" and "SIGKILL" in rows["numpy"]["error"], rows["numpy"]


# --- no orphan worker ---------------------------------------------------------------------------------------------

DEADLINE = 2.0  # seconds a worker may take to notice that its harness is gone (it looks every half second)


def test_a_sigkilled_harness_leaves_no_worker_training_on(tmp_path):
    """A real harness and its real NumPy worker: the harness is SIGKILLed as soon as the first epoch's row is on
    disk, when the worker is inside the next epoch. The worker must exit within seconds because its harness is
    gone, not because its next write to the dead harness fails: the layers are made wide (4096) so that the
    evaluation of the 10,000 test images, between two writes, takes longer than the deadline (checked below)."""
    out = tmp_path / "run"
    process = start("--backend", "numpy", "--epochs", "5", "--train-limit", "256", "--hiddens", "4096", "4096",
                    "--threads", "1", "--seeds", "0", "--out", str(out))
    try:
        wait_for_rows(out, process, timeout=600)
        workers = workers_of(out)
        assert len(workers) == 1, workers
        process.send_signal(signal.SIGKILL)
        process.wait()
        killed = time.monotonic()
        while workers_of(out) and time.monotonic() - killed < 30:
            time.sleep(0.05)
        lived = time.monotonic() - killed
    finally:
        stop(process)
        for worker in workers_of(out):
            worker.kill()
    first = read_csv(out / "epochs.csv")[0]
    assert float(first["eval_seconds"]) > 2 * DEADLINE, "the evaluation is too quick here to tell the two apart"
    assert lived < DEADLINE, f"the worker trained on for {lived:.1f} s after its harness was SIGKILLed"
