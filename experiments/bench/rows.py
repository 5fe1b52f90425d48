"""The bench's rows: one per backend x mode x tier x round (``rounds.csv``), from the job's summary, its epochs and
the worker's timings of its own work, against the floor timed beside the job's steady epochs; and one per backend x
mode x tier over the rounds (``bench.csv``): the median over the rounds with its interval
(``experiments.bench.intervals``), and the tuning gain (stock / tuned steady epoch, taken within each round)."""
from __future__ import annotations

import statistics
from typing import Any, Sequence

from experiments.bench.intervals import median_interval, spread_columns
from experiments.report.stats import steady_epochs

KEYS = ["backend", "mode", "tuning"]
ROUND_COLUMNS = KEYS + [
    "round", "position", "device", "status", "error", "framework_version", "threads", "import_seconds",
    "data_seconds", "build_seconds", "first_epoch_seconds", "steady_median_seconds", "steady_iqr_seconds",
    "steady_q1_seconds", "steady_q3_seconds", "steady_epochs", "samples_per_second", "eval_seconds", "peak_rss_mb",
    "harness_seconds", "harness_fraction", "order_seconds", "gather_seconds", "floor_when", "floor_seconds",
    "ratio_to_floor", "floor_full_seconds", "ratio_to_full_floor", "peak_gflops", "floor_efficiency",
    "noise_off_seconds", "noise_seconds", "gain", "noise_draw_library", "noise_draw_seconds", "gemm_library",
    "gemm_gflops", "framework_gemm_seconds", "framework_gemm_gflops", "framework_gemm_to_floor", "final_val_acc",
    "n_train", "batch_size", "hiddens"]
SPREADS = ("steady_median_seconds", "ratio_to_floor", "noise_seconds", "gain")  # each with _low and _high
COLUMNS = KEYS + [
    "device", "status", "error", "framework_version", "threads", "rounds", "rounds_ok", "import_seconds",
    "data_seconds", "build_seconds", "first_epoch_seconds", "steady_median_seconds", "steady_median_seconds_low",
    "steady_median_seconds_high", "steady_epochs", "samples_per_second", "eval_seconds", "peak_rss_mb",
    "harness_seconds", "harness_fraction", "order_seconds", "gather_seconds", "floor_seconds", "ratio_to_floor",
    "ratio_to_floor_low", "ratio_to_floor_high", "floor_full_seconds", "ratio_to_full_floor", "peak_gflops",
    "floor_efficiency", "noise_off_seconds", "noise_seconds", "noise_seconds_low", "noise_seconds_high", "gain",
    "gain_low", "gain_high", "noise_draw_library", "noise_draw_seconds", "gemm_library", "gemm_gflops",
    "framework_gemm_seconds", "framework_gemm_gflops", "framework_gemm_to_floor", "final_val_acc", "n_train",
    "batch_size", "hiddens"]
# Taken as the median over the rounds that finished (their own spread is not reported: only the SPREADS' is).
MEDIANS = ("import_seconds", "data_seconds", "build_seconds", "first_epoch_seconds", "eval_seconds", "peak_rss_mb",
           "harness_seconds", "harness_fraction", "order_seconds", "gather_seconds", "floor_seconds",
           "floor_full_seconds", "ratio_to_full_floor", "peak_gflops", "floor_efficiency", "noise_off_seconds",
           "noise_draw_seconds", "gemm_gflops", "framework_gemm_seconds", "framework_gemm_gflops",
           "framework_gemm_to_floor", "final_val_acc")
FIRST = ("device", "framework_version", "threads", "steady_epochs", "noise_draw_library", "gemm_library", "n_train",
         "batch_size", "hiddens")  # the same in every round


class EventLog:
    """Collects each job's events from the runner (its ``on_event`` hook), keyed by (backend, mode, tuning,
    variant)."""

    def __init__(self) -> None:
        self.epochs: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
        self.timings: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
        self.starts: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.floors: dict[tuple[str, str, str], list[dict[str, Any]]] = {}  # the passes timed beside the epochs

    def __call__(self, job, event: dict[str, Any], process) -> None:
        key = (job.backend, job.train.mode, job.train.tuning, job.variant)
        if event.get("event") == "start":
            self.starts[key] = event
        elif event.get("event") == "floor":
            self.floors.setdefault(key, []).append(event)
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


def bench_row(*, backend: str, mode: str, tuning: str, device: str, threads: int, summary: dict[str, Any] | None,
              epochs: list[dict[str, Any]], timings: list[dict[str, Any]], floor: float | None,
              batch: int, start: dict[str, Any] | None = None) -> dict[str, Any]:
    """One job of one round; ``floor``: the floor's seconds per epoch, timed beside its steady epochs."""
    row: dict[str, Any] = {"backend": backend, "mode": mode, "tuning": tuning, "device": device, "threads": threads,
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


def unavailable_row(backend: str, mode: str, tuning: str, device: str, threads: int, reason: str, batch: int,
                    floor: float | None) -> dict[str, Any]:
    return {"backend": backend, "mode": mode, "tuning": tuning, "device": device, "threads": threads,
            "status": "unavailable", "error": reason, "framework_version": None, "batch_size": batch,
            "floor_seconds": floor}


def add_gains(rows: Sequence[dict[str, Any]]) -> None:
    """Each round's gain, stock steady / tuned steady of the same backend x mode in that round, on both its rows."""
    by_key = {(r["backend"], r["mode"], r["tuning"], r["round"]): r for r in rows}
    for (backend, mode, tuning, round_), stock in by_key.items():
        tuned = by_key.get((backend, mode, "tuned", round_))
        if tuning != "stock" or tuned is None:
            continue
        if stock.get("steady_median_seconds") and tuned.get("steady_median_seconds"):
            stock["gain"] = tuned["gain"] = stock["steady_median_seconds"] / tuned["steady_median_seconds"]


def _first(values):
    return next((v for v in values if v not in (None, "")), None)


def aggregate(rounds: Sequence[dict[str, Any]], planned: int) -> dict[str, Any]:
    """One backend x mode x tier over its rounds (``rounds``: its rows, one a round, in round order): the median of
    each round's figures, the interval of the median for the SPREADS, and its status: ``ok`` where a
    round finished (``error`` names the rounds that did not), else the first round's status and error."""
    first = rounds[0]
    done = [r for r in rounds if r.get("status") == "ok" and r.get("steady_median_seconds") is not None]
    row: dict[str, Any] = {k: first.get(k) for k in KEYS}
    row.update({k: _first(r.get(k) for r in rounds) for k in FIRST})
    row.update(rounds=planned, rounds_ok=len(done))
    if not done:
        return {**row, "status": first.get("status") or "failed", "error": first.get("error") or "",
                "floor_seconds": _first(r.get("floor_seconds") for r in rounds)}
    missed = [f"round {r['round']} {r.get('status')}: {r.get('error')}" for r in rounds if r not in done]
    row.update(status="ok", error="; ".join(missed))
    for key in MEDIANS:
        values = [r[key] for r in done if r.get(key) is not None]
        row[key] = statistics.median(values) if values else None
    for key in SPREADS:
        row.update(spread_columns(key, median_interval(r.get(key) for r in done)))
    median = row["steady_median_seconds"]
    row["samples_per_second"] = row["n_train"] / median if median and row.get("n_train") else None
    gemm = next((r for r in done if r.get("framework_gemm_seconds") and r.get("framework_gemm_gflops")), None)
    if gemm is not None:  # the same products every round: their rate at the median time, not a median of rates
        row["framework_gemm_gflops"] = (gemm["framework_gemm_gflops"] * gemm["framework_gemm_seconds"]
                                        / row["framework_gemm_seconds"])
    return row


def aggregate_all(rows: Sequence[dict[str, Any]], planned: int) -> list[dict[str, Any]]:
    """``aggregate`` for every backend x mode x tier, in the order they first appear."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(tuple(row[k] for k in KEYS), []).append(row)
    return [aggregate(sorted(group, key=lambda r: r.get("round") or 0), planned) for group in groups.values()]

