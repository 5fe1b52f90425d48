"""``parity.csv``, ``parity.md`` (the pass/fail grid, the worst error per rung, the machine line) and ``parity.png``
(the error against SGD step per backend x tier x mode)."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from experiments.parity.checks import RTOL
from experiments.parity.ladder import RUNG_NUMBERS, RUNGS
from experiments.parity.session import COLUMNS, FAILED


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    temporary = path.with_suffix(".csv.tmp")
    frame = pd.DataFrame(rows, columns=COLUMNS).astype({"step": "Int64", "checks": "Int64"})
    frame.to_csv(temporary, index=False)
    temporary.replace(path)


def machine_line(meta: dict[str, Any]) -> str:
    versions = ", ".join(f"{k} {v}" for k, v in sorted((meta.get("frameworks") or {}).items())
                         if v and k != "numpy")
    return (f"CPU: {meta.get('cpu')} ({meta.get('cpu_count')} cores); threads: {meta.get('threads')}; device: "
            f"{meta.get('device')}; Python {meta.get('python')}, NumPy {meta.get('numpy')}"
            f"{'; ' + versions if versions else ''}; git {meta.get('git_commit')}")


def _cell(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "-"
    if any(r["status"] in FAILED for r in rows):
        return "**FAIL**"
    return "pass"


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def grid(rows: list[dict[str, Any]]) -> list[str]:
    ran = [r for r in rows if r["rung"] != "-"]
    rungs = [rung for rung in RUNGS if any(r["rung"] == rung for r in ran)]
    lines = ["| backend | tier | mode | " + " | ".join(f"{RUNG_NUMBERS[r]}: {r}" for r in rungs) + " |",
             "| --- | --- | --- | " + " | ".join("---" for _ in rungs) + " |"]
    seen: list[tuple[str, str, str]] = []
    for r in rows:
        if (r["backend"], r.get("tuning", "-"), r["mode"]) not in seen:
            seen.append((r["backend"], r.get("tuning", "-"), r["mode"]))
    for backend, tuning, mode in seen:
        mine = [r for r in rows if r["backend"] == backend and r.get("tuning", "-") == tuning and r["mode"] == mode]
        if all(r["status"] == "unavailable" for r in mine):
            lines.append(f"| {backend} | {tuning} | {mode} | unavailable: {mine[0]['detail']} |"
                         + " |" * (len(rungs) - 1))
            continue
        cells = [_cell([r for r in mine if r["rung"] == rung]) for rung in rungs]
        lines.append(f"| {backend} | {tuning} | {mode} | " + " | ".join(cells) + " |")
    return lines


def worst_per_rung(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["| rung | rows | failed | worst max_rel_err | max_abs_err | tolerance | criterion | where | check |",
             "| --- | ---: | ---: | ---: | ---: | ---: | --- | --- | --- |"]
    for rung in RUNGS:
        mine = [r for r in rows if r["rung"] == rung and r.get("max_rel_err") is not None]
        errors = [r for r in rows if r["rung"] == rung and r["status"] == "error"]
        if not mine and not errors:
            continue
        failed = sum(r["status"] in FAILED for r in rows if r["rung"] == rung)
        if not mine:
            lines.append(f"| {RUNG_NUMBERS[rung]}: {rung} | {len(errors)} | {failed} | - | - | - | - | - | "
                         f"{errors[0]['detail']} |")
            continue
        top = max(mine, key=lambda r: (r["status"] in FAILED, r["max_rel_err"]))
        where = f"{top['backend']} {top.get('tuning', '-')} {top['mode']} {top['impl']} {top['noise']}" + (
            f" step {top['step']}" if top.get("step") is not None else "")
        lines.append(f"| {RUNG_NUMBERS[rung]}: {rung} | {len(mine) + len(errors)} | {failed} | "
                     f"{_fmt(top['max_rel_err'])} | {_fmt(top['max_abs_err'])} | {_fmt(top['tolerance'])} | "
                     f"{top['criterion']} | {where} | {top['check']} |")
    return lines


def write_markdown(path: Path, rows: list[dict[str, Any]], meta: dict[str, Any], failed: list[str]) -> None:
    precisions = sorted({(r["backend"], r["matmul_precision"]) for r in rows if r.get("matmul_precision")})
    lines = ["# dropbench: parity ladder against the NumPy float64 oracle", "",
             f"Machine: {machine_line(meta)}", "",
             f"Command: `{meta.get('command')}`; started {meta.get('started')}", "",
             "Matrix-multiply precision in force: " + ("; ".join(f"{b}: {p}" for b, p in precisions) or "-"), "",
             f"**{'FAILED: ' + str(len(failed)) + ' rung(s)' if failed else 'every rung passed'}**", "",
             "## Pass/fail", "",
             "A cell is every row of that rung for the backend x tier x mode (all implementations, noise kinds and SGD "
             "steps); `-`: the rung does not run in that mode (rungs 1, 2's forward, 3, 5 and 6 run in eager mode).",
             "", *grid(rows), "", "## Worst error per rung", "",
             f"Scale-relative error: max |actual - expected| / max |expected| (tolerance {RTOL:g} for the exact "
             "rungs); for statistics, `max_abs_err` is the statistic's distance from its expectation and the "
             "tolerance four standard errors; `rel > tol` rows must differ (fresh noise).", "",
             *worst_per_rung(rows), ""]
    if failed:
        lines += ["## Failures", "", *[f"- {line}" for line in failed], ""]
    lines += ["Files: `parity.csv` (every row), `parity.png` (error against SGD step), `meta.json`.", ""]
    path.write_text("\n".join(lines))


def write_chart(path: Path, rows: list[dict[str, Any]], title: str) -> None:
    """The worst scale-relative error over implementations and noise kinds at each SGD step, per backend x mode."""
    from matplotlib.ticker import MaxNLocator

    from experiments.report import plots

    frame = pd.DataFrame([r for r in rows if r["rung"] == "sgd_trajectory" and r.get("max_rel_err") is not None],
                         columns=COLUMNS)
    fig, ax = plots.subplots(figsize=(8, 4.5))
    if frame.empty:
        ax.text(0.5, 0.5, "no SGD trajectory ran", transform=ax.transAxes, ha="center")
    else:
        frame["max_rel_err"] = frame["max_rel_err"].astype(float).clip(lower=1e-12)
        for (backend, tuning, mode), group in frame.groupby(["backend", "tuning", "mode"], sort=False):
            worst = group.groupby("step")["max_rel_err"].max()
            ax.plot(worst.index + 1, worst.to_numpy(), marker="o", markersize=3, label=f"{backend} {tuning} {mode}")
        ax.set_yscale("log")
        ax.legend(fontsize=8, ncol=2)
    ax.axhline(RTOL, color="#c44e52", linestyle="--")
    ax.text(1, RTOL, f" tolerance {RTOL:g}", color="#c44e52", fontsize=8, va="bottom")
    ax.set_xlabel("SGD step")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole numbers
    ax.set_ylabel("max |actual - oracle| / max |oracle| (worst over impl, noise)")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=plots.DPI)
