"""Runs that survive interruption: SIGTERM and SIGKILL of the harness leave no worker behind, ``--resume`` finishes
the run with the numbers of an uninterrupted one, reuse follows the fingerprints, and bad input fails first."""
import os
import signal
import subprocess
import time

import pytest

import backends
from backends.contract.spec import TrainSpec
from tests.helpers import workers_of
from experiments.running.plan import Experiment, Variant
from experiments.running.runner import RunOptions, run_experiment
from tests.helpers import read_csv
from tests.test_cli import HARNESS, assert_user_error, harness

RUN = ["--backend", "numpy", "--backend", "torch", "--seeds", "0", "1", "--epochs", "6", "--train-limit", "6000",
       "--threads", "1"]
NUMBERS = ("train_loss", "train_acc", "val_loss", "val_acc")
FINAL = ("status", "epochs_completed", "final_val_acc", "final_val_loss", "final_train_loss", "final_train_acc")
KEYS = ("backend", "impl", "mode", "variant", "seed")


@pytest.fixture(scope="module", autouse=True)
def torch_installed():
    from tests.conftest import require_backend

    require_backend("torch")


def wait_until_gone(out, seconds=8.0):
    deadline = time.monotonic() + seconds
    while workers_of(out) and time.monotonic() < deadline:
        time.sleep(0.2)
    return workers_of(out)


def epoch_numbers(out):
    rows = read_csv(out / "epochs.csv")
    keys = [tuple(r[k] for k in (*KEYS, "epoch")) for r in rows]
    assert len(keys) == len(set(keys)), "a job's epoch rows appear twice"
    return {key: tuple(r[k] for k in NUMBERS) for key, r in zip(keys, rows)}


def final_numbers(out):
    return {tuple(r[k] for k in KEYS): tuple(r[k] for k in FINAL) for r in read_csv(out / "summary.csv")}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted") / "run"
    result = harness(*RUN, "--out", str(out))
    assert result.returncode == 0, result.stderr
    return out


def start_and_stop_mid_job(out, signum):
    """Start the run, wait for the first epoch of the second job, signal the harness; returns its exit status."""
    process = subprocess.Popen([*HARNESS, *RUN, "--out", str(out)], cwd=backends.PROJECT_ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and process.poll() is None:
            try:
                seeds = {(r["backend"], r["seed"]) for r in read_csv(out / "epochs.csv")}
            except (OSError, KeyError):
                seeds = set()
            if len(seeds) >= 2:
                break
            time.sleep(0.02)
        assert process.poll() is None, "the run ended before it could be interrupted"
        os.kill(process.pid, signum)
        stdout, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return process.returncode, stderr


def resume_and_compare(out, uninterrupted):
    result = harness(*RUN, "--out", str(out), "--resume")
    assert result.returncode == 0, result.stderr
    assert epoch_numbers(out) == epoch_numbers(uninterrupted)
    assert final_numbers(out) == final_numbers(uninterrupted)
    assert (out / "report.md").exists()
    return read_csv(out / "summary.csv")


def test_sigterm_stops_the_workers_records_the_job_interrupted_and_resume_completes(tmp_path, uninterrupted):
    out = tmp_path / "run"
    status, stderr = start_and_stop_mid_job(out, signal.SIGTERM)
    assert status == 143, stderr
    assert not wait_until_gone(out, seconds=3.0)
    assert "--resume" in stderr.strip().splitlines()[-1]
    summary = read_csv(out / "summary.csv")
    interrupted = [r for r in summary if r["status"] == "interrupted"]
    assert len(interrupted) == 1, summary
    job = interrupted[0]
    rows = [r for r in read_csv(out / "epochs.csv") if all(r[k] == job[k] for k in KEYS)]
    assert 1 <= int(job["epochs_completed"]) == len(rows) < 6
    assert "SIGTERM" in job["error"]
    assert [r["status"] for r in summary if r is not job] == ["ok"] * (len(summary) - 1)
    assert (out / "meta.json").exists() and (out / "report.md").exists()
    finished_before = {tuple(r[k] for k in KEYS) for r in summary if r["status"] == "ok"}

    after = resume_and_compare(out, uninterrupted)
    assert {tuple(r[k] for k in KEYS) for r in after if r["reused"] == "yes"} == finished_before
    assert len(after) == 4 and all(r["status"] == "ok" for r in after)


def test_sigkill_of_the_harness_leaves_no_worker_and_resume_completes(tmp_path, uninterrupted):
    out = tmp_path / "run"
    status, _ = start_and_stop_mid_job(out, signal.SIGKILL)
    assert status == -signal.SIGKILL
    assert not wait_until_gone(out, seconds=8.0), "a worker outlived its SIGKILLed harness"
    unfinished = set(tuple(r[k] for k in KEYS) for r in read_csv(out / "epochs.csv")) - \
        set(final_numbers(out))
    assert unfinished, "the killed job should have epoch rows and no summary row"
    resume_and_compare(out, uninterrupted)


def small_experiment(lr_b):
    variants = (Variant("a", train={"lr": 0.1}), Variant("b", train={"lr": lr_b}))
    return Experiment(name="d2l", description="two arms", variants=variants, backends=("numpy",), seeds=(0, 1),
                      base_train=TrainSpec(epochs=2, train_limit=1000))


def test_changing_one_variant_reruns_only_its_jobs(tmp_path):
    from experiments import data

    options = RunOptions(data_dir=data.locate(download=False, progress=False), out_dir=tmp_path / "run", threads=1,
                         progress=False)
    first = run_experiment(small_experiment(0.1), options)
    assert [r["reused"] for r in first] == ["no"] * 4
    again = run_experiment(small_experiment(0.2), RunOptions(**{**options.__dict__, "resume": True}))
    by_job = {(r["variant"], str(r["seed"])): r["reused"] for r in again}
    assert by_job == {("a", "0"): "yes", ("a", "1"): "yes", ("b", "0"): "no", ("b", "1"): "no"}
    summary = read_csv(tmp_path / "run" / "summary.csv")
    assert sorted((r["variant"], r["seed"], r["lr"]) for r in summary) == [
        ("a", "0", "0.1"), ("a", "1", "0.1"), ("b", "0", "0.2"), ("b", "1", "0.2")]
    epochs = read_csv(tmp_path / "run" / "epochs.csv")
    assert len(epochs) == 8 and {r["lr"] for r in epochs if r["variant"] == "b"} == {"0.2"}


def test_dry_run_lists_the_jobs_and_which_a_resume_would_reuse(tmp_path):
    out = tmp_path / "runs" / "run"
    base = ["--backend", "numpy", "--epochs", "2", "--train-limit", "1000", "--threads", "1", "--out", str(out)]
    planned = harness(*base, "--seeds", "0", "1", "--dry-run")
    assert planned.returncode == 0 and "2 jobs: 2 to run, 0 reused" in planned.stdout
    assert not (tmp_path / "runs").exists()  # not even the folder it would make
    assert harness(*base, "--seeds", "0", "1").returncode == 0
    same = harness(*base, "--seeds", "0", "1", "2", "--resume", "--dry-run")
    assert "3 jobs: 1 to run, 2 reused" in same.stdout, same.stdout
    changed = harness(*base, "--seeds", "0", "1", "--lr", "0.2", "--resume", "--dry-run")
    assert "2 jobs: 2 to run, 0 reused" in changed.stdout and "run (stale)" in changed.stdout
    forced = harness(*base, "--seeds", "0", "1", "--resume", "--force", "--dry-run")
    assert "run (forced)" in forced.stdout
    assert read_csv(out / "summary.csv")[0]["reused"] == "no"  # a dry run writes nothing


def test_validation_nan_is_a_diverged_failure(tmp_path):
    from experiments import data
    from experiments.catalog import build

    options = RunOptions(data_dir=data.locate(download=False, progress=False), out_dir=tmp_path / "run", threads=1,
                         progress=False)
    rows = run_experiment(build("d2l", backends=["numpy"], seeds=(0,),
                                train_overrides={"epochs": 1, "train_limit": 1000, "lr": 1e9}), options)
    assert rows[0]["status"] == "failed" and "diverged" in rows[0]["error"], rows[0]["error"]


def bad_input_cases(tmp_path):
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    used = tmp_path / "used"
    used.mkdir()
    (used / "something").write_text("x")
    other = tmp_path / "other"
    assert harness("--backend", "numpy", "--epochs", "1", "--train-limit", "500", "--threads", "1",
                   "--experiment", "dropout-swap", "--seeds", "0", "--out", str(other)).returncode == 0
    return [
        (["--out", str(a_file)], ["is a file"]),
        (["--out", str(a_file / "run")], ["cannot be created"]),
        (["--train-limit", "60001"], ["--train-limit", "60,000"]),
        (["--out", str(used)], ["--resume"]),
        (["--out", str(used), "--resume"], ["not a run folder"]),
        (["--out", str(other), "--resume"], ["dropout-swap", "--experiment"]),
        (["--force", "--out", str(other)], ["--force", "--resume"]),
        (["--resume"], ["--resume", "--out"]),
        (["--jobs", "0"], ["--jobs"]),
    ]


def test_every_bad_input_is_one_line_and_status_2_before_any_work(tmp_path):
    for args, words in bad_input_cases(tmp_path):
        result = harness("--backend", "numpy", *args)
        assert_user_error(result, *words)
    assert not (tmp_path / "used" / "logs").exists()  # nothing started
