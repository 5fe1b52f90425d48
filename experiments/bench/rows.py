"""A bench row per backend x mode, from the job's summary, its epochs and the worker's timings of its own work."""
from __future__ import annotations

import statistics
from typing import Any

from experiments.stats import steady_epochs

COLUMNS = ["backend", "mode", "device", "status", "error", "framework_version", "threads", "import_seconds",
           "data_seconds", "build_seconds", "first_epoch_seconds", "steady_median_seconds", "steady_iqr_seconds",
           "steady_q1_seconds", "steady_q3_seconds", "steady_epochs", "samples_per_second", "eval_seconds",
           "peak_rss_mb", "harness_seconds", "harness_fraction", "order_seconds", "gather_seconds",
           "floor_seconds", "ratio_to_floor", "floor_full_seconds", "ratio_to_full_floor", "peak_gflops",
           "floor_efficiency", "noise_off_seconds", "noise_seconds", "noise_draw_library", "noise_draw_seconds",
           "gemm_library", "gemm_gflops", "framework_gemm_seconds", "framework_gemm_gflops",
           "framework_gemm_to_floor", "final_val_acc",
           "n_train", "batch_size", "hiddens"]


class EventLog:
    """Collects each job's events from the runner (its ``on_event`` hook), keyed by (backend, mode, variant)."""

    def __init__(self) -> None:
        self.epochs: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
        self.timings: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
        self.starts: dict[tuple[str, str, str], dict[str, Any]] = {}

    def __call__(self, job, event: dict[str, Any], process) -> None:
        key = (job.backend, job.train.mode, job.variant)
        if event.get("event") == "start":
            self.starts[key] = event
        elif event.get("event") == "epoch":
            self.epochs.setdefault(key, []).append(event)
        elif event.get("event") == "bench":
            self.timings.setdefault(key, []).append(event)


def harness_parts(epoch: dict[str, Any], timing: dict[str, Any]) -> tuple[float, float]:
    """(harness seconds, wall seconds) of one epoch, both measured in the worker.

    Harness work: generating the epoch's batch order, everything inside the timed epoch but outside
    ``backend.train_epoch`` (building ``EpochBatches``, the timer itself), the batch gathers that the harness's
    ``EpochBatches`` iterators do inside a backend's loop, the divergence check and sending the epoch's row.
    Wall: the timed epoch plus the harness work around it (order, check, row)."""
    around = timing["order_seconds"] + timing["check_seconds"] + timing["emit_seconds"]
    inside = max(0.0, epoch["epoch_seconds"] - timing["train_epoch_seconds"]) + timing["gather_seconds"]
    return around + inside, epoch["epoch_seconds"] + around


def bench_row(*, backend: str, mode: str, device: str, threads: int, summary: dict[str, Any] | None,
              epochs: list[dict[str, Any]], timings: list[dict[str, Any]], floor: float | None,
              batch: int, start: dict[str, Any] | None = None) -> dict[str, Any]:
    row: dict[str, Any] = {"backend": backend, "mode": mode, "device": device, "threads": threads,
                           "batch_size": batch, "floor_seconds": floor}
    gemm = (start or {}).get("gemm") or {}
    row.update(gemm_library=gemm.get("library"), gemm_gflops=gemm.get("gflops"))
    summary = summary or {}
    for key in ("status", "error", "framework_version", "import_seconds", "data_seconds", "build_seconds",
                "peak_rss_mb"):
        row[key] = summary.get(key)
    row["status"] = row["status"] or "failed"
    row["error"] = row["error"] or ""
    noise_draw = (start or {}).get("noise") or {}
    row["noise_draw_library"] = noise_draw.get("library")
    if epochs:
        row["first_epoch_seconds"] = epochs[0]["epoch_seconds"]
        if noise_draw.get("seconds") is not None:  # one step's draws alone, times the floor's steps
            row["noise_draw_seconds"] = noise_draw["seconds"] * epochs[0]["n_train"] / batch
        row["n_train"] = epochs[0]["n_train"]
        gemm_step = (start or {}).get("gemm_step") or {}
        if gemm_step.get("seconds"):  # one step's necessary GEMMs through the framework, alone, times the steps
            row["framework_gemm_seconds"] = gemm_step["seconds"] * epochs[0]["n_train"] / batch
            row["framework_gemm_gflops"] = gemm_step["gflops"]
            if floor:
                row["framework_gemm_to_floor"] = row["framework_gemm_seconds"] / floor
        row["final_val_acc"] = epochs[-1]["val_acc"]
        row["eval_seconds"] = statistics.median(e["eval_seconds"] for e in epochs)
    measured = steady_epochs([e["epoch_seconds"] for e in epochs])
    steady = epochs[1:]
    if measured:
        median = measured.median
        row.update(steady_median_seconds=median, steady_q1_seconds=measured.q1, steady_q3_seconds=measured.q3,
                   steady_iqr_seconds=measured.iqr, steady_epochs=measured.epochs,
                   samples_per_second=steady[0]["n_train"] / median if median > 0 else None)
        if floor:
            row["ratio_to_floor"] = median / floor
        by_epoch = {t["epoch"]: t for t in timings}
        parts = [(e, by_epoch[e["epoch"]]) for e in steady if e["epoch"] in by_epoch]
        if parts:
            harness = [harness_parts(e, t) for e, t in parts]
            row["harness_seconds"] = statistics.median(h for h, _ in harness)
            row["harness_fraction"] = statistics.median(h / wall for h, wall in harness)
            row["order_seconds"] = statistics.median(t["order_seconds"] for _, t in parts)
            row["gather_seconds"] = statistics.median(t["gather_seconds"] for _, t in parts)
    return row


def unavailable_row(backend: str, mode: str, device: str, threads: int, reason: str, batch: int,
                    floor: float | None) -> dict[str, Any]:
    return {"backend": backend, "mode": mode, "device": device, "threads": threads, "status": "unavailable",
            "error": reason, "framework_version": None, "batch_size": batch, "floor_seconds": floor}


def sort_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Timed rows by steady epoch time, then the rest (failed, unavailable) in their order."""
    timed = [r for r in rows if r.get("steady_median_seconds") is not None]
    return sorted(timed, key=lambda r: r["steady_median_seconds"]) + [r for r in rows if r not in timed]
