"""The runner keeps every finished row when a job crashes, hangs, diverges or is killed, and goes on."""
import json
import os
import signal

import pytest

import backends
from experiments.catalog import build
from experiments.running.runner import RunOptions, run_experiment
from tests.helpers import read_csv


def options(tmp_path, data_dir, **kwargs):
    return RunOptions(data_dir=data_dir, out_dir=tmp_path / "run", threads=1, progress=False, **kwargs)


@pytest.fixture(scope="module")
def data_dir():
    from experiments import data

    return data.locate(download=False, progress=False)


def small(seeds=(0, 1), epochs=3, **train):
    return build("d2l", backends=["numpy"], seeds=seeds,
                 train_overrides={"epochs": epochs, "train_limit": 2000, **train})


def test_killed_worker_is_recorded_failed_and_the_other_job_keeps_its_rows(tmp_path, data_dir):
    def kill_seed_1_after_its_first_epoch(job, event, process):
        if job.train.seed == 1 and event.get("event") == "epoch" and event["epoch"] == 1:
            os.kill(process.pid, signal.SIGKILL)

    rows = run_experiment(small(), options(tmp_path, data_dir), on_event=kill_seed_1_after_its_first_epoch)
    by_seed = {row["seed"]: row for row in rows}
    assert by_seed[0]["status"] == "ok" and by_seed[0]["epochs_completed"] == 3
    assert by_seed[1]["status"] == "failed" and "SIGKILL" in by_seed[1]["error"]
    epochs = read_csv(tmp_path / "run" / "epochs.csv")
    assert [(r["seed"], r["epoch"]) for r in epochs] == [("0", "1"), ("0", "2"), ("0", "3"), ("1", "1")]
    summary = read_csv(tmp_path / "run" / "summary.csv")
    assert [r["status"] for r in summary] == ["ok", "failed"]


def test_a_worker_that_hangs_after_reporting_is_killed_after_the_timeout(tmp_path, data_dir):
    """The worker starts, reports its first epoch, then goes silent (stopped): the timeout kills it, the reported
    epoch stays on disk."""
    stopped = []

    def stop_after_first_epoch(job, event, process):
        if event.get("event") == "epoch" and event["epoch"] == 1:
            os.kill(process.pid, signal.SIGSTOP)
            stopped.append(process.pid)

    rows = run_experiment(small(seeds=(0,)), options(tmp_path, data_dir, job_timeout=3.0),
                          on_event=stop_after_first_epoch)
    assert stopped, "the worker never reported an epoch"
    assert rows[0]["status"] == "failed" and rows[0]["error"].startswith("timeout"), rows[0]["error"]
    assert rows[0]["epochs_completed"] == 1
    assert [r["epoch"] for r in read_csv(tmp_path / "run" / "epochs.csv")] == ["1"]


def test_a_job_that_fails_first_does_not_stop_or_lose_the_jobs_after_it(tmp_path, data_dir):
    def kill_seed_0_at_its_start(job, event, process):
        if job.train.seed == 0 and event.get("event") == "start":
            os.kill(process.pid, signal.SIGKILL)

    rows = run_experiment(small(seeds=(0, 1, 2), epochs=2), options(tmp_path, data_dir),
                          on_event=kill_seed_0_at_its_start)
    assert [(r["seed"], r["status"]) for r in rows] == [(0, "failed"), (1, "ok"), (2, "ok")]
    epochs = read_csv(tmp_path / "run" / "epochs.csv")
    assert [(r["seed"], r["epoch"]) for r in epochs] == [("1", "1"), ("1", "2"), ("2", "1"), ("2", "2")]
    assert [r["status"] for r in read_csv(tmp_path / "run" / "summary.csv")] == ["failed", "ok", "ok"]


def test_divergence_is_a_failure_with_its_reason(tmp_path, data_dir):
    rows = run_experiment(small(seeds=(0,), lr=1000.0), options(tmp_path, data_dir))
    assert rows[0]["status"] == "failed" and "diverged" in rows[0]["error"]


def test_worker_exception_is_recorded_and_logged(tmp_path):
    rows = run_experiment(small(seeds=(0,)), options(tmp_path, tmp_path / "no-such-data"))
    assert rows[0]["status"] == "failed" and "DataError" in rows[0]["error"]
    log = (tmp_path / "run" / "logs" / "numpy-stock-concise-eager-cpu-d2l-seed0.log").read_text()
    assert "Traceback" in log


def test_missing_backend_gives_an_unavailable_row_and_the_rest_run(tmp_path, data_dir, monkeypatch):
    monkeypatch.setenv("DROPBENCH_MXNET_PYTHON", str(tmp_path / "nowhere" / "python"))
    backends.framework_version.cache_clear()
    try:
        experiment = build("d2l", backends=["mxnet", "numpy"], train_overrides={"epochs": 1, "train_limit": 1000})
        rows = run_experiment(experiment, options(tmp_path, data_dir))
    finally:
        backends.framework_version.cache_clear()
    assert [r["status"] for r in rows] == ["unavailable", "ok"]
    assert "make mxnet-venv" in rows[0]["error"]


def test_summary_and_meta_have_the_documented_columns(tmp_path, data_dir):
    rows = run_experiment(small(seeds=(0,), epochs=2), options(tmp_path, data_dir))
    row = rows[0]
    assert row["status"] == "ok", row["error"]
    assert 0.0 < row["final_val_acc"] <= 1.0 and row["peak_rss_mb"] > 10
    assert row["samples_per_second"] == pytest.approx(2000 / row["median_epoch_seconds"])
    meta = json.loads((tmp_path / "run" / "meta.json").read_text())
    assert meta["frameworks"] == {"numpy": row["framework_version"]} and meta["threads"] == 1
    assert {"python", "numpy", "cpu", "git_commit", "command"} <= set(meta)
