"""``python -m backends.worker``: the only process a framework lives in.

``run``: reads one job (JSON) on stdin, trains it, and writes events as JSON lines on stdout.
``serve --backend NAME``: answers Backend method calls framed by ``backends.wire`` (the parity tests' remote backend).

Frameworks print to stdout at will, so the event channel is a duplicate of the original stdout and fd 1 is pointed
at stderr before anything is imported.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import sys
import time
import traceback
from typing import Any, TextIO

THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "TF_NUM_INTRAOP_THREADS")


def thread_environment(threads: int) -> dict[str, str]:
    """Variables that bound every framework's thread pools; they must be set before any framework is imported."""
    env = {name: str(threads) for name in THREAD_VARIABLES}
    env["TF_NUM_INTEROP_THREADS"] = "1"
    env["DROPBENCH_THREADS"] = str(threads)
    return env


def _claim_event_channel() -> TextIO:
    channel = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return channel


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


class Diverged(RuntimeError):
    pass


def _timed_batches_class(base):
    """``EpochBatches`` that add up the time spent in their own iterators (slicing the order, gathering ``x[idx]``,
    ``y[idx]``): the harness's batching work that runs inside a backend's loop. Built lazily, after the timed import."""
    import dataclasses

    @dataclasses.dataclass(frozen=True)
    class TimedEpochBatches(base.EpochBatches):
        spent: list = dataclasses.field(default_factory=lambda: [0.0], repr=False, compare=False)

        def indices(self):
            clock, spent = time.perf_counter, self.spent
            start = clock()
            for idx in base.EpochBatches.indices(self):
                spent[0] += clock() - start
                yield idx
                start = clock()
            spent[0] += clock() - start

        def __iter__(self):
            clock, spent = time.perf_counter, self.spent
            start = clock()
            for idx in base.EpochBatches.indices(self):
                batch = self.x[idx], self.y[idx]
                spent[0] += clock() - start
                yield batch
                start = clock()
            spent[0] += clock() - start

    return TimedEpochBatches


def run_job(job_data: dict[str, Any], emit) -> None:
    started = time.perf_counter()
    from experiments.spec import Job

    job = Job.from_dict(job_data["job"])
    threads = int(job_data.get("threads") or 0) or None

    clock = time.perf_counter()
    import backends
    from backends import base

    backend_class = backends.load_class(job.backend)
    version = backend_class.version()  # imports the framework: part of the import time
    import_seconds = time.perf_counter() - clock

    clock = time.perf_counter()
    from experiments import data as data_module

    dataset = data_module.load(job_data["data_dir"], train_limit=job.train.train_limit)
    data_seconds = time.perf_counter() - clock

    from experiments import probes as probe_module

    active_probes = [probe_module.PROBES[name]() for name in job.probes]

    clock = time.perf_counter()
    backend = backend_class(model=job.model, train=job.train, threads=threads)
    init = base.shared_init(job.model, job.train.seed) if job.model.init == "shared" else None
    backend.build(seed=job.train.seed, params=init)
    backend.synchronize()
    build_seconds = time.perf_counter() - clock
    emit({"event": "start", "pid": os.getpid(), "framework_version": version, "import_seconds": import_seconds,
          "data_seconds": data_seconds, "build_seconds": build_seconds})

    for probe in active_probes:
        for table, row in probe.on_epoch(backend=backend, data=dataset, epoch=0, job=job):
            emit({"event": "record", "table": table, "row": row})
    n_train = len(dataset.train_y)
    # Bench timing (``python harness.py bench``): the harness's own work per epoch is measured apart from the
    # backend's, and reported in one extra "bench" event after each "epoch" event; other runs are unchanged.
    bench_timing = bool(job_data.get("bench_timing"))
    batches_class = _timed_batches_class(base) if bench_timing else base.EpochBatches
    for epoch in range(1, job.train.epochs + 1):
        clock = time.perf_counter()
        order = data_module.epoch_order(n_train, seed=job.train.seed, epoch=epoch)
        order_seconds = time.perf_counter() - clock
        with base.Stopwatch(backend) as train_clock:
            batches = batches_class(x=dataset.train_x, y=dataset.train_y, order=order,
                                    batch_size=job.train.batch_size)
            with base.Stopwatch(backend if bench_timing else None) as backend_clock:
                metrics = backend.train_epoch(batches=batches)
        clock = time.perf_counter()
        if not (math.isfinite(metrics.loss)):
            raise Diverged(f"diverged: training loss is {metrics.loss} in epoch {epoch}")
        check_seconds = time.perf_counter() - clock
        with base.Stopwatch(backend) as eval_clock:
            evaluation = backend.evaluate(x=dataset.test_x, y=dataset.test_y)
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
    for probe in active_probes:
        for table, row in probe.on_end(backend=backend, data=dataset, job=job):
            emit({"event": "record", "table": table, "row": row})
    emit({"event": "done", "peak_rss_mb": peak_rss_mb(), "threads": threads,
          "total_seconds": time.perf_counter() - started})


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if isinstance(exc, Diverged) else f"{type(exc).__name__}: {text}"


def main_run() -> int:
    channel = _claim_event_channel()

    def emit(event: dict[str, Any]) -> None:
        channel.write(json.dumps(event) + "\n")

    try:
        run_job(json.loads(sys.stdin.read()), emit)
    except BaseException as exc:  # every failure becomes a recorded row; the traceback goes to the job's log
        traceback.print_exc()
        emit({"event": "error", "error": _one_line(exc), "kind": "diverged" if isinstance(exc, Diverged) else "error",
              "peak_rss_mb": peak_rss_mb()})
        return 1
    return 0


def main_serve(backend_name: str) -> int:
    """Answer calls until stdin closes: {"method", "kwargs"} -> {"ok": value} or {"error": text}."""
    from backends import wire

    channel = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    requests = sys.stdin.buffer
    backend = None
    while True:
        try:
            request = wire.receive(requests)
        except EOFError:
            return 0
        try:
            method, kwargs = request["method"], request.get("kwargs", {})
            if method == "__init__":
                import backends
                from experiments.spec import ModelSpec, TrainSpec

                backend_class = backends.load_class(backend_name)
                model, train = ModelSpec(**kwargs["model"]), TrainSpec(**kwargs["train"])
                backend = backend_class(model=model, train=train, threads=kwargs.get("threads"))
                result: Any = {"version": backend_class.version(), "capabilities": backend.capabilities.__dict__}
            elif method == "__exit__":
                wire.send(channel, {"ok": None})
                return 0
            else:
                if backend is None:
                    raise RuntimeError("call __init__ first")
                result = getattr(backend, method)(**kwargs)
            wire.send(channel, {"ok": result})
        except Exception as exc:
            wire.send(channel, {"error": _one_line(exc), "traceback": traceback.format_exc()})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m backends.worker")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("run", help="train the job read from stdin; events on stdout")
    serve = commands.add_parser("serve", help="answer Backend calls on stdin/stdout")
    serve.add_argument("--backend", required=True)
    args = parser.parse_args(argv)
    if args.command == "run":
        return main_run()
    return main_serve(args.backend)


if __name__ == "__main__":
    sys.exit(main())
