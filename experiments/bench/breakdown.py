"""Where a backend x mode x tier's steady epoch goes: the necessary floor, the noise, the fixed per-step cost, the rest,
taken in every round and reported as the median over the rounds with its interval.

    epoch = floor + noise + fixed + rest  (in each round)

- floor: the necessary GEMMs at NumPy's BLAS rate, timed beside the job's steady epochs (``experiments.bench.floor``);
- noise: the job against its noise-off twin (dropout (0, 0)) of the same round: their steady epochs' difference;
- fixed: t0 x steps, t0 from the scaling fit of that round (``experiments.bench.scaling``), when the run had several
  sizes; otherwise not measured (0 in the sum, said so in the table);
- rest: what is left, by construction: the framework's GEMMs above the floor's rate, the elementwise work (bias,
  ReLU, softmax, the update) and whatever else grows with the batch.

A part whose interval holds zero is "within noise": the rounds cannot tell it from nothing, and no share is printed
for it. A part that is below zero in every round is printed in seconds with what it means (parts measured apart
overlap: t0 holds the per-step part of the noise's cost), never as a negative share. Beside the tiers, what the
tuning removed: stock minus tuned, part by part, within each round.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from experiments.bench.intervals import Spread, fmt_spread, median_interval, spread_columns, spread_of

PART_KEYS = ("epoch_seconds", "floor_seconds", "noise_seconds", "fixed_seconds", "rest_seconds")
REMOVED = ("epoch_seconds", "noise_seconds", "fixed_seconds", "rest_seconds")  # the floor is the machine's
ROUND_COLUMNS = ["backend", "mode", "tuning", "round", "batch_size", *PART_KEYS, "fixed_measured", "noise_measured",
                 "noise_off_seconds", "t0_us", "k"]
BREAKDOWN_COLUMNS = (["backend", "mode", "tuning", "batch_size", "rounds_ok"]
                     + [c for key in PART_KEYS for c in (key, f"{key}_low", f"{key}_high")]
                     + ["fixed_measured", "noise_measured", "noise_off_seconds", "t0_us", "k"]
                     + [c for key in REMOVED for c in (f"removed_{key}", f"removed_{key}_low", f"removed_{key}_high")]
                     + ["noise_draw_library", "noise_draw_seconds", "gemm_library", "gemm_gflops", "blas_gemm_gflops",
                        "framework_gemm_seconds", "framework_gemm_to_floor"])
PARTS = (("floor_seconds", "floor (necessary GEMMs)", "#4c72b0"), ("noise_seconds", "noise", "#dd8452"),
         ("fixed_seconds", "fixed per step (t0 x steps)", "#55a868"), ("rest_seconds", "the rest", "#8c8c8c"))
DETAILS = ("noise_draw_library", "noise_draw_seconds", "gemm_library", "gemm_gflops", "framework_gemm_seconds",
           "framework_gemm_to_floor", "noise_off_seconds")


def decompose(row: dict[str, Any], n_train: int, fit: dict[str, Any] | None) -> dict[str, Any] | None:
    """The parts of one round's row (None for a row that has no steady time or no floor)."""
    epoch, floor = row.get("steady_median_seconds"), row.get("floor_seconds")
    if epoch is None or not floor:
        return None
    steps = (row.get("n_train") or n_train) / row["batch_size"]
    noise = row.get("noise_seconds") or 0.0
    fixed = fit["t0_seconds"] * steps if fit else 0.0
    return {"backend": row["backend"], "mode": row["mode"], "tuning": row.get("tuning"), "round": row.get("round"),
            "batch_size": row["batch_size"], "epoch_seconds": epoch, "floor_seconds": floor, "noise_seconds": noise,
            "fixed_seconds": fixed, "rest_seconds": epoch - floor - noise - fixed, "fixed_measured": fit is not None,
            "noise_measured": row.get("noise_seconds") is not None, "noise_off_seconds": row.get("noise_off_seconds"),
            "t0_us": fit["t0_seconds"] * 1e6 if fit else None, "k": fit["k"] if fit else None,
            **{key: row.get(key) for key in DETAILS}}


def _median(values):
    from statistics import median

    values = [v for v in values if v is not None]
    return median(values) if values else None


def breakdown_rows(round_rows: list[dict[str, Any]], n_train: int, fits: dict[tuple, dict[str, Any]],
                   floor: dict[str, Any] | None = None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(every round's parts, and per backend x mode x tier their medians over the rounds with intervals and what
    the tuning removed). ``fits``: the scaling fit by (backend, mode, tuning, round); ``floor``'s first GEMM
    (forward 1, the product the worker times through each framework) gives NumPy's rate beside each framework's."""
    blas = floor["gemms"][0]["gflops_median"] if floor else None
    per_round = [p for p in (decompose(r, n_train, fits.get((r["backend"], r["mode"], r.get("tuning"), r.get("round"))))
                             for r in round_rows) if p]
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for p in per_round:
        groups.setdefault((p["backend"], p["mode"], p["tuning"]), []).append(p)
    parts = []
    for (backend, mode, tuning), rounds in groups.items():
        row = {"backend": backend, "mode": mode, "tuning": tuning, "batch_size": rounds[0]["batch_size"],
               "rounds_ok": len(rounds), "fixed_measured": all(p["fixed_measured"] for p in rounds),
               "noise_measured": all(p["noise_measured"] for p in rounds), "blas_gemm_gflops": blas,
               "noise_draw_library": rounds[0]["noise_draw_library"], "gemm_library": rounds[0]["gemm_library"]}
        for key in PART_KEYS:
            row.update(spread_columns(key, median_interval(p[key] for p in rounds)))
        for key in ("noise_off_seconds", "t0_us", "k", "noise_draw_seconds", "gemm_gflops", "framework_gemm_seconds",
                    "framework_gemm_to_floor"):
            row[key] = _median(p[key] for p in rounds)
        parts.append(row)
    by_round = {(p["backend"], p["mode"], p["tuning"], p["round"]): p for p in per_round}
    for row in parts:
        stock = [(p, by_round.get((p["backend"], p["mode"], "tuned", p["round"])))
                 for p in groups.get((row["backend"], row["mode"], "stock"), [])]
        pairs = [(s, t) for s, t in stock if t is not None]
        for key in REMOVED:
            row.update(spread_columns(f"removed_{key}", median_interval(s[key] - t[key] for s, t in pairs)))
    return per_round, sorted(parts, key=lambda p: (p["backend"], p["mode"], p["tuning"] != "stock"))


def part_cell(spread: Spread | None, epoch: float, measured: bool = True) -> str:
    """A part in seconds per epoch: with its share where it is positive beyond the noise; ``within noise`` where its
    interval holds zero; below zero in seconds only, with why."""
    if not measured:
        return "not measured"
    if spread is None:
        return "-"
    if spread.holds(0.0):
        return f"within noise ({fmt_spread(spread, '.3f')})"
    if spread.median < 0:
        why = "below 0 beyond the noise: parts measured apart overlap" if spread.has_interval else \
            "below 0; one round gives no interval"
        return f"{fmt_spread(spread, '.3f')} ({why})"
    return f"{fmt_spread(spread, '.3f')} ({spread.median / epoch:.0%})"


def _cell(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def removed_verdict(row: dict[str, Any]) -> str:
    """The parts the tuning removed beyond the noise, the largest first, and those it added."""
    removed, added = [], []
    for key, label in (("noise_seconds", "noise"), ("fixed_seconds", "fixed"), ("rest_seconds", "rest")):
        spread = spread_of(row, f"removed_{key}")
        if spread is not None and spread.has_interval and spread.low > 0:
            removed.append((spread.median, label))
        elif spread is not None and spread.has_interval and spread.high < 0:
            added.append((-spread.median, label))
    if not removed and not added:
        return "no part beyond the noise"
    said = [f"{what}: {', '.join(label for _, label in sorted(parts, reverse=True))}"
            for what, parts in (("removed", removed), ("added", added)) if parts]
    return "; ".join(said)


def breakdown_lines(parts: list[dict[str, Any]], batch: int, peak: float | None) -> list[str]:
    """The tables of ``bench.md`` (and ``scaling.md``): each tier's parts, and what the tuning removed."""
    if not parts:
        return [f"## Where the time goes (batch {batch})", "", "No job has a steady time and a floor to split.", ""]
    lines = [f"## Where the time goes (batch {batch})", "",
             "epoch = floor + noise + fixed + rest in every round; each part is the median over the rounds, in "
             "seconds per steady epoch, [its interval] (share of the epoch). floor: timed beside the job's steady "
             "epochs; noise: the same job with dropout (0, 0) in the same round, against on; fixed: t0 x steps from "
             "the scaling fit of that round (only a run over several `--batch-sizes` measures it); rest: the remainder "
             "by construction (the framework's GEMMs above the floor's rate, elementwise work). `within noise`: the "
             "part's interval holds zero, so the rounds cannot tell it from nothing. "
             "GEMM: the library the framework reports for its float32 matmul, and the rate the first layer's "
             f"forward product ({batch} x 784 @ 784 x H) reached through the framework in the worker, beside "
             "NumPy's BLAS on the same product in the floor's process (measured at other moments: on a busy "
             f"machine compare them with care){f'; peak sgemm here: {peak:.0f} GFLOP/s' if peak else ''}. "
             "Dropout alone: the framework's dropout of one step (every hidden layer's mask drawn and applied), "
             "timed alone in the worker on a generator of its own, times the epoch's steps. GEMMs alone: the "
             "step's necessary products through the framework's own matmul, one after another, in the worker, "
             "times the steps, and that over the floor. Neither is a part of the sum.", "",
             "| backend | mode | tier | epoch s | floor | noise | fixed | rest | dropout alone | dropout kernel | "
             "GEMM library | GEMM GFLOP/s | BLAS GFLOP/s | GEMMs alone s | GEMMs alone x floor |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- | ---: | ---: | ---: | ---: |"]
    for p in parts:
        epoch = p["epoch_seconds"]
        cells = [part_cell(spread_of(p, "floor_seconds"), epoch),
                 part_cell(spread_of(p, "noise_seconds"), epoch, p["noise_measured"]),
                 part_cell(spread_of(p, "fixed_seconds"), epoch, p["fixed_measured"]),
                 part_cell(spread_of(p, "rest_seconds"), epoch)]
        lines.append(f"| {p['backend']} | {p['mode']} | {p['tuning']} | "
                     f"{fmt_spread(spread_of(p, 'epoch_seconds'), '.3f')} | {' | '.join(cells)} | "
                     f"{_cell(p['noise_draw_seconds'], '.3f')} | {p['noise_draw_library'] or '-'} | "
                     f"{p['gemm_library'] or '-'} | {_cell(p['gemm_gflops'], '.0f')} | "
                     f"{_cell(p['blas_gemm_gflops'], '.0f')} | {_cell(p['framework_gemm_seconds'], '.3f')} | "
                     f"{_cell(p['framework_gemm_to_floor'], '.2f')} |")
    paired = [p for p in parts if p["tuning"] == "stock" and spread_of(p, "removed_epoch_seconds") is not None]
    if paired:
        lines += ["", "### What the tuning removed (stock - tuned, part by part, within each round)", "",
                  "Seconds per steady epoch, the median over the rounds [its interval]; `within noise` where the "
                  "interval holds zero (a negative figure: the tuned tier spends more on that part).", "",
                  "| backend | mode | epoch | noise | fixed | rest | beyond the noise |",
                  "| --- | --- | ---: | ---: | ---: | ---: | --- |"]
        for p in paired:
            cells = []
            for key in REMOVED:
                spread = spread_of(p, f"removed_{key}")
                measured = key != "fixed_seconds" or p["fixed_measured"]
                measured = measured and (key != "noise_seconds" or p["noise_measured"])
                cells.append("not measured" if not measured else "-" if spread is None else
                             f"within noise ({fmt_spread(spread, '.3f')})" if spread.holds(0.0) else
                             fmt_spread(spread, ".3f"))
            lines.append(f"| {p['backend']} | {p['mode']} | {' | '.join(cells)} | {removed_verdict(p)} |")
    return lines + [""]


def breakdown_chart(path: Path, parts: list[dict[str, Any]], title: str) -> None:
    """Stacked horizontal bars of the medians: each part from where the previous ended (a part within noise or
    below zero drawn as a hatched outline, a negative one going back), so that every bar ends at the median epoch
    (the dot, with its interval)."""
    from experiments.report import plots

    fig, ax = plots.subplots(figsize=(9, 2.0 + 0.45 * max(1, len(parts))))
    for y, p in enumerate(parts):
        left = 0.0
        for key, label, color in PARTS:
            spread = spread_of(p, key)
            value = spread.median if spread else 0.0
            faint = value < 0 or (spread is not None and spread.holds(0.0))
            ax.barh(y, value, left=left, height=0.6, label=label if y == 0 else None,
                    color="none" if faint else color, edgecolor=color if faint else "white",
                    hatch="//" if faint else None)
            left += value
        epoch = spread_of(p, "epoch_seconds")
        errors = [[epoch.median - epoch.low], [epoch.high - epoch.median]] if epoch.has_interval else None
        ax.errorbar([epoch.median], [y], xerr=errors, fmt="k.", capsize=3,
                    label="measured epoch (interval)" if y == 0 else None)
    ax.set_yticks(range(len(parts)))
    ax.set_yticklabels([f"{p['backend']} {p['mode']} {p['tuning']}" for p in parts])
    ax.invert_yaxis()
    ax.set_xlabel("seconds per steady epoch (median over the rounds)")
    ax.set_title(title, fontsize=8, wrap=True)
    if parts:
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=5, frameon=False)  # below the label
    fig.tight_layout()
    fig.savefig(path, dpi=plots.DPI, bbox_inches="tight")  # the legend lies outside the axes
