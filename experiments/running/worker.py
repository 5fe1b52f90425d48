"""``python -m experiments.running.worker``: the job loop, in the only process a job's framework lives in.

It reads one job (JSON) on stdin, loads the data, builds the backend, trains it epoch by epoch with the probes the
job asks for, and writes events as JSON lines on stdout (``start``, ``epoch``, ``record``, ``bench``, ``done`` or
``error``). The runner starts it under the backend's interpreter (the MXNet venv too), so everything it imports is
NumPy-only. Frameworks print to stdout at will, so the event channel is a duplicate of the original stdout and fd 1
is pointed at stderr before anything is imported.
"""
from __future__ import annotations

import json
import math
import os
import resource
import sys
import time
import traceback
from typing import Any, Callable

from backends import registry
from backends.contract import EpochBatches, Stopwatch, shared_init
from backends.remote import wire
from experiments import data as data_module
from experiments.bench.floor_beside import FloorBeside
from experiments.bench.probes import TimedEpochBatches, gemm_rate, gemm_step_rate, noise_rate
from experiments.exercises import probes as probe_module
from experiments.running.parent import exit_with_parent
from experiments.running.plan import Job

Emit = Callable[[dict[str, Any]], None]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


class Diverged(RuntimeError):
    pass


def check_finite(epoch: int, **values: float) -> None:
    """A non-finite loss or accuracy, in training or in evaluation, is a diverged job."""
    for name, value in values.items():
        if not math.isfinite(value):
            raise Diverged(f"diverged: {name.replace('_', ' ')} is {value} in epoch {epoch}")


def run_job(job_data: dict[str, Any], emit: Emit) -> None:
    started = time.perf_counter()
    environment = dict(os.environ)  # as the runner set it, before a framework's import can change it
    job = Job.from_dict(job_data["job"])
    threads = int(job_data.get("threads") or 0) or None

    clock = time.perf_counter()
    backend_class = registry.load_class(job.backend, job.train.tuning)
    version = backend_class.version()  # imports the framework: part of the import time
    import_seconds = time.perf_counter() - clock

    clock = time.perf_counter()
    dataset = data_module.load(job_data["data_dir"], train_limit=job.train.train_limit)
    data_seconds = time.perf_counter() - clock

    active_probes = [probe_module.PROBES[name]() for name in job.probes]

    clock = time.perf_counter()
    backend = backend_class(model=job.model, train=job.train, threads=threads)
    init = shared_init(job.model, job.train.seed) if job.model.init == "shared" else None
    backend.build(seed=job.train.seed, params=init)
    backend.synchronize()
    build_seconds = time.perf_counter() - clock
    start = {"event": "start", "pid": os.getpid(), "framework_version": version, "import_seconds": import_seconds,
             "data_seconds": data_seconds, "build_seconds": build_seconds}
    if job_data.get("bench_timing"):
        probes = registry.load_probes(job.backend)
        start["gemm"] = gemm_rate(probes, backend, job.train.batch_size, *job.model.layer_sizes[:2])
        start["gemm_step"] = gemm_step_rate(probes, backend, job.model.layer_sizes, job.train.batch_size)
        if job.model.noise == "dropout" and any(0 < p < 1 for p in job.model.dropouts):
            start["noise"] = noise_rate(probes, backend, job.train.batch_size)
    floor = None
    if job_data.get("floor_beside"):  # under the project's interpreter, named by the process that started this one
        floor = FloorBeside(job_data.get("project_interpreter", ""), sizes=job.model.layer_sizes,
                            batch=job.train.batch_size, environment=environment)
        start["floor"] = floor.opened if floor.error is None else {"error": floor.error}
    emit(start)
    try:
        train_epochs(job, backend, dataset, active_probes, emit, bench_timing=bool(job_data.get("bench_timing")),
                     floor=floor)
    finally:
        if floor is not None:
            floor.close()
    emit({"event": "done", "peak_rss_mb": peak_rss_mb(), "threads": threads,
          "total_seconds": time.perf_counter() - started})


def train_epochs(job: Job, backend, dataset, active_probes, emit: Emit, *, bench_timing: bool,
                 floor: FloorBeside | None) -> None:
    """Every epoch of the job with its evaluation and its probes; with ``floor``, a pass of the floor right before
    each steady epoch (epochs 2..E) and one after the last."""
    for probe in active_probes:
        for table, row in probe.on_epoch(backend=backend, data=dataset, epoch=0, job=job):
            emit({"event": "record", "table": table, "row": row})
    n_train = len(dataset.train_y)
    # Bench timing (``python harness.py bench``): the harness's own work per epoch is measured apart from the
    # backend's, and reported in one extra "bench" event after each "epoch" event; other runs are unchanged.
    batches_class = TimedEpochBatches if bench_timing else EpochBatches
    for epoch in range(1, job.train.epochs + 1):
        if floor is not None and epoch >= 2:
            emit(floor.one_pass(f"before epoch {epoch}"))
        clock = time.perf_counter()
        order = data_module.epoch_order(n_train, seed=job.train.seed, epoch=epoch)
        order_seconds = time.perf_counter() - clock
        with Stopwatch(backend) as train_clock:
            batches = batches_class(x=dataset.train_x, y=dataset.train_y, order=order,
                                    batch_size=job.train.batch_size)
            with Stopwatch(backend if bench_timing else None) as backend_clock:
                metrics = backend.train_epoch(batches=batches)
        clock = time.perf_counter()
        check_finite(epoch, training_loss=metrics.loss)
        check_seconds = time.perf_counter() - clock
        with Stopwatch(backend) as eval_clock:
            evaluation = backend.evaluate(x=dataset.test_x, y=dataset.test_y)
        check_finite(epoch, validation_loss=evaluation.loss, validation_accuracy=evaluation.acc)
        clock = time.perf_counter()
        emit({"event": "epoch", "epoch": epoch, "train_loss": metrics.loss, "train_acc": metrics.acc,
              "val_loss": evaluation.loss, "val_acc": evaluation.acc, "epoch_seconds": train_clock.seconds,
              "eval_seconds": eval_clock.seconds, "n_train": n_train})
        emit_seconds = time.perf_counter() - clock
        if bench_timing:
            emit({"event": "bench", "epoch": epoch, "order_seconds": order_seconds,
                  "train_epoch_seconds": backend_clock.seconds, "gather_seconds": batches.spent[0],
                  "check_seconds": check_seconds, "emit_seconds": emit_seconds})
        for probe in active_probes:
            for table, row in probe.on_epoch(backend=backend, data=dataset, epoch=epoch, job=job):
                emit({"event": "record", "table": table, "row": row})
    if floor is not None and job.train.epochs >= 2:
        emit(floor.one_pass(f"after epoch {job.train.epochs}"))
    for probe in active_probes:
        for table, row in probe.on_end(backend=backend, data=dataset, job=job):
            emit({"event": "record", "table": table, "row": row})


def main() -> int:
    channel = wire.claim_stdout(binary=False)

    def emit(event: dict[str, Any]) -> None:
        channel.write(json.dumps(event) + "\n")

    try:
        request = json.loads(sys.stdin.read())
        exit_with_parent(int(request.get("parent_pid") or os.getppid()))
        run_job(request, emit)
    except BaseException as exc:  # every failure becomes a recorded row; the traceback goes to the job's log
        traceback.print_exc()
        diverged = isinstance(exc, Diverged)
        emit({"event": "error", "error": " ".join(str(exc).split()) if diverged else wire.one_line(exc),
              "kind": "diverged" if diverged else "error", "peak_rss_mb": peak_rss_mb()})
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
