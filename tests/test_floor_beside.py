"""The floor timed beside a job's steady epochs: the floor's own process and what it answers, the worker's passes
right before each steady epoch and after the last, a floor process that cannot start (the job goes on), a worker
killed while its floor process is alive (no process is left), and which jobs the runner asks for a floor."""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys

import psutil

from backends.registry import PROJECT_ROOT
from experiments import data
from experiments.bench import floor as bench_floor
from experiments.bench.floor_beside import FloorBeside
from experiments.catalog import build
from experiments.running import worker
from experiments.running.rundir import RunFolder
from experiments.running.runner import RunOptions, _launch

SIZES, BATCH = (784, 16, 10), 32


def small_job(epochs: int = 3):
    return build("d2l", backends=["numpy"], train_overrides={"epochs": epochs, "train_limit": 256,
                                                             "batch_size": BATCH},
                 model_overrides={"hiddens": (16,), "dropouts": (0.5,)}).jobs()[0]


def request(job, floor_interpreter: str) -> dict:
    return {"job": job.to_dict(), "data_dir": str(data.locate(download=False, progress=False)), "threads": 1,
            "bench_timing": True, "floor_beside": True, "project_interpreter": floor_interpreter}


def test_the_floor_process_answers_the_peak_and_a_pass_of_every_gemm_and_refuses_an_unknown_request(monkeypatch):
    monkeypatch.setattr(bench_floor, "PARK_SECONDS", 0.0)
    replies = []
    bench_floor.serve(iter([json.dumps({"sizes": SIZES, "batch": BATCH}), "peak\n", "pass\n", "floor?\n"]),
                      replies.append)
    opened, peak, passed, refused = replies
    assert opened["batch"] == BATCH and opened["sizes"] == list(SIZES) and opened["interpreter"] == sys.executable
    assert len(peak["peak_samples"]) == bench_floor.PEAK_CALLS and min(peak["peak_samples"]) > 0
    assert len(passed["samples"]) == len(bench_floor.step_gemms(SIZES, BATCH))
    assert all(len(s) == bench_floor.PASS_ROUNDS and min(s) > 0 for s in passed["samples"])
    assert refused == {"error": "unknown request 'floor?'"}


def test_the_worker_times_a_pass_right_before_each_steady_epoch_and_after_the_last_then_ends_the_process(
        monkeypatch):
    made = []

    class Kept(FloorBeside):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)
            self.started = self.process

    monkeypatch.setattr(worker, "FloorBeside", Kept)
    events = []
    worker.run_job(request(small_job(), sys.executable), events.append)
    start = events[0]
    assert start["event"] == "start" and len(start["floor"]["peak_samples"]) == bench_floor.PEAK_CALLS
    assert start["floor"]["interpreter"] == sys.executable
    timeline = [(e["event"], e.get("epoch", e.get("when"))) for e in events if e["event"] in ("epoch", "floor")]
    assert timeline == [("epoch", 1), ("floor", "before epoch 2"), ("epoch", 2), ("floor", "before epoch 3"),
                        ("epoch", 3), ("floor", "after epoch 3")]
    for event in (e for e in events if e["event"] == "floor"):
        assert len(event["samples"]) == len(bench_floor.step_gemms(SIZES, BATCH))
        assert all(len(s) == bench_floor.PASS_ROUNDS and min(s) > 0 for s in event["samples"])
    assert events[-1]["event"] == "done"
    assert made[0].process is None and made[0].started.poll() is not None  # closed, and waited for


def test_a_floor_process_that_cannot_start_says_why_and_the_job_trains_on():
    events = []
    worker.run_job(request(small_job(), "/nonexistent/python"), events.append)
    assert "the floor beside the job could not start" in events[0]["floor"]["error"]
    assert [e["epoch"] for e in events if e["event"] == "epoch"] == [1, 2, 3]
    floors = [e for e in events if e["event"] == "floor"]
    assert len(floors) == 3 and all("could not start" in e["error"] and "samples" not in e for e in floors)
    assert events[-1]["event"] == "done"


def test_a_worker_killed_while_its_floor_process_lives_leaves_no_process_behind():
    process = subprocess.Popen([sys.executable, "-m", "experiments.running.worker"], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=PROJECT_ROOT,
                               env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)})
    floor_processes = []
    try:
        process.stdin.write(json.dumps(request(small_job(epochs=200), sys.executable)))
        process.stdin.close()
        for line in process.stdout:  # the first pass: the floor's process is up
            if json.loads(line)["event"] == "floor":
                break
        floor_processes = psutil.Process(process.pid).children()
        assert len(floor_processes) == 1 and "--serve" in floor_processes[0].cmdline()
        process.send_signal(signal.SIGKILL)
        process.wait()
        gone, alive = psutil.wait_procs(floor_processes, timeout=5)
        assert not alive, "the floor's process outlived its SIGKILLed worker"
    finally:
        process.kill()
        for leftover in floor_processes:
            if leftover.is_running():
                leftover.kill()


def test_the_runner_asks_only_the_named_variants_for_a_floor(tmp_path):
    options = RunOptions(data_dir=tmp_path, out_dir=tmp_path, floor_variants=("d2l",))
    folder = RunFolder(tmp_path)
    main = small_job()
    twin = dataclasses.replace(main, variant="noise-off")
    assert _launch(main, folder, options).request["floor_beside"] is True
    assert "floor_beside" not in _launch(twin, folder, options).request
    assert "floor_beside" not in _launch(main, folder, RunOptions(data_dir=tmp_path, out_dir=tmp_path)).request
