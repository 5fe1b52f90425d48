"""Two run folders side by side (training runs or bench runs), matched on the job keys (backend, impl, mode,
variant, seed and tier: a folder from before the tiers ran what is now the tuned tier): what changed in the environment, in
accuracy (B - A paired by seed, against the seed noise) and in time (B / A of the steady epoch time, tested against
the epoch-to-epoch noise), and for bench runs each side's ``ratio_to_floor``.

The time test, and why this one. The worker times each epoch, and nothing finer can be had without changing the
backends (an epoch is one ``train_epoch`` call), so a job of E epochs gives E - 1 steady epoch times (epoch 1
carries compilation and warm-up): 3 a side for a 4-epoch run. A rank test cannot decide anything with so few:
Mann-Whitney's smallest two-sided p with 3 against 3 is 0.10, so no slowdown of any size could be called. The test
here suits small samples: Student's t on the logarithms of the steady epoch times (a ratio is what is asked, hence
the logarithm), whose noise estimate is the two runs' epoch-to-epoch spread, pooled: two runs of one configuration
share one spread, and pooling gives the estimate all 2E - 4 degrees of freedom, so that the test is exact for
log-normal times under the question it answers. With 3 epochs a side it tells a 1.5x slowdown from a spread of
several per cent. Holm's adjustment over the jobs of the comparison keeps the chance that two runs of one
configuration get any job called slower or faster below 5 %. What it cannot see is a change of the machine's state
between the two runs (another load, another clock): that is a real difference of the two runs' conditions, and a
gate tolerates it with its percentage (``--fail-above``).

"cannot judge": a side with fewer than two steady epochs, or with no spread at all while the times differ (no noise
to weigh the difference against); and, under a gate of PCT %, a job more than PCT % slower whose difference is not
significant: the samples cannot tell whether that slowdown is real, so the gate fails closed (``verdict``; exit
status 3 of ``python harness.py compare``) instead of passing."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from experiments.options import UsageError
from experiments.report.results import dropout_columns, setting_value
from experiments.running.rundir import (
    KEY_COLUMNS, LATER_COLUMNS, REQUIRED_COLUMNS, SETTING_COLUMNS, DamagedFolder, check_table,
)
from experiments.report.stats import Stat, describe, holm, paired, steady_epochs, log_ratio_test

ALPHA = 0.05  # significance level of the time test (Holm-adjusted over the jobs of a comparison)
# A job of A is matched with the job of B that has the same values of these.
JOB_KEYS = KEY_COLUMNS + [c for c in ("tuning",) if c not in KEY_COLUMNS]
DEFAULT_TUNING = "tuned"  # the tier of a row from before the tiers: it ran what is now the tuned code
GROUP_COLUMNS = [c for c in JOB_KEYS if c != "seed"]  # accuracy is paired by seed within these
UNDECIDED = ("cannot judge", "not measured")  # time verdicts on which a gate fails closed
ENVIRONMENT = ["python", "numpy", "cpu", "cpu_count", "threads", "platform", "device", "blas_line", "git_commit"]


@dataclass
class Run:
    path: Path
    kind: str  # "train" or "bench"
    meta: dict[str, Any]
    epochs: pd.DataFrame
    jobs: pd.DataFrame  # a row per job: keys, status, final_val_acc, device
    bench: pd.DataFrame | None = None


def _read(path: Path, required: list[str]) -> pd.DataFrame:
    """The table, after ``rundir.check_table``: a cut, edited or foreign CSV is one line naming the file."""
    try:
        check_table(path, required)
        frame = pd.read_csv(path)
    except DamagedFolder as damage:
        raise UsageError(f"{damage}; restore the file from a copy, or give the folder of another finished run") \
            from None
    except (OSError, ValueError) as exc:
        raise UsageError(f"{path}: cannot read it as a CSV table ({' '.join(str(exc).split())}); "
                         f"give the folder of a finished run") from None
    if "tuning" in frame.columns:
        frame["tuning"] = frame["tuning"].astype(object).where(frame["tuning"].notna(), DEFAULT_TUNING)
    else:
        frame["tuning"] = DEFAULT_TUNING
    return frame


def load_run(path: Path) -> Run:
    """A training run (summary.csv, epochs.csv, meta.json) or a bench run (bench.csv, epochs.csv, meta.json)."""
    path = Path(path)
    if not path.is_dir():
        raise UsageError(f"{path} is not a folder; give two run folders (results/<run>/)")
    kind = "bench" if (path / "bench.csv").exists() else "train"
    needed = ["meta.json", "epochs.csv"] + (["bench.csv"] if kind == "bench" else ["summary.csv"])
    missing = [name for name in needed if not (path / name).exists()]
    if missing:
        raise UsageError(f"{path} is not a run folder (no {', '.join(missing)}); give the folders that "
                         f"python harness.py or python harness.py bench wrote")
    try:
        meta = json.loads((path / "meta.json").read_text())
    except (OSError, ValueError) as exc:
        raise UsageError(f"{path / 'meta.json'} is not readable JSON ({exc}); give a run folder") from None
    keys = [c for c in KEY_COLUMNS if c not in LATER_COLUMNS]  # a folder from before the tiers has no tuning
    epochs = _read(path / "epochs.csv", keys + ["epoch", "epoch_seconds", "val_acc"])
    if (path / "summary.csv").exists():
        jobs = _read(path / "summary.csv", REQUIRED_COLUMNS["summary"] + ["final_val_acc"])
    else:  # a bench run without its summary: the jobs that have epochs finished them
        last = epochs.sort_values("epoch").groupby(JOB_KEYS, as_index=False).last()
        jobs = last.assign(status="ok", final_val_acc=last["val_acc"])
    if "device" not in jobs.columns:
        jobs["device"] = meta.get("device")
    bench = _read(path / "bench.csv", ["backend", "mode", "status"]) if kind == "bench" else None
    return Run(path=path, kind=kind, meta=meta, epochs=epochs, jobs=jobs[jobs["status"] == "ok"], bench=bench)


def environment_differences(a: Run, b: Run) -> list[tuple[str, Any, Any]]:
    """(what, A, B) for every environment fact that differs: versions, CPU, threads, BLAS, device, git commit."""
    def facts(run: Run) -> dict[str, Any]:
        meta = run.meta
        out = {key: meta.get(key) for key in ENVIRONMENT}
        devices = sorted(set(run.epochs["device"].dropna())) if "device" in run.epochs.columns else []
        out["device"] = meta.get("device") or ", ".join(devices) or None
        out.update({f"{name} version": version for name, version in (meta.get("frameworks") or {}).items()})
        out.update({f"env {name}": value for name, value in (meta.get("blas_environment") or {}).items()})
        return out

    left, right = facts(a), facts(b)
    return [(key, left.get(key), right.get(key)) for key in dict.fromkeys([*left, *right])
            if left.get(key) != right.get(key)]


def setting_differences(a: Run, b: Run, shared: list[tuple]) -> list[tuple[str, Any, Any]]:
    """(setting, A's values, B's values) for every job setting that differs between the shared jobs of A and B:
    a comparison of lr 0.1 against lr 0.2 is no like-for-like timing, and the reader must see it."""
    present = {*a.jobs.columns, *b.jobs.columns}
    columns = [c for c in SETTING_COLUMNS[:3] + dropout_columns(present) + SETTING_COLUMNS[3:] if c in present]
    rows_a = {_key(r): r for _, r in a.jobs.iterrows()}
    rows_b = {_key(r): r for _, r in b.jobs.iterrows()}
    differences = []
    for column in columns:
        pairs = [(setting_value(rows_a[k].get(column)), setting_value(rows_b[k].get(column))) for k in shared]
        if any(left != right for left, right in pairs):
            left = ", ".join(str(x) for x in dict.fromkeys(x for x, _ in pairs))  # None: unset (train_limit: all)
            right = ", ".join(str(y) for y in dict.fromkeys(y for _, y in pairs))
            differences.append((column, left, right))
    return differences


def _key(row) -> tuple:
    return tuple(row[c] for c in JOB_KEYS)


def epoch_times(run: Run) -> dict[tuple, list[float]]:
    """Every job's epoch times in epoch order (a bench's jobs, which ran once a round: ``round_times``)."""
    if "round" in run.epochs.columns:
        return round_times(run)
    return {tuple(key): list(group.sort_values("epoch")["epoch_seconds"].astype(float))
            for key, group in run.epochs.groupby(JOB_KEYS)}


def round_times(run: Run) -> dict[tuple, list[float]]:
    """A bench folder's jobs ran once a round (``epochs.csv`` has ``round``; docs/bench.md): a job's samples are its
    rounds' steady times (each the median of that round's epochs 2..E, as in ``rounds.csv``), what varies from round
    to round being what varies from bench to bench. They come in ``epoch_times``' form: behind a NaN standing for the
    warm-up epoch, which the time test leaves out."""
    times = {}
    for key, group in run.epochs.groupby(JOB_KEYS):
        rounds = [steady_epochs(list(r.sort_values("epoch")["epoch_seconds"].astype(float)))
                  for _, r in group.groupby("round")]
        times[tuple(key)] = [float("nan")] + [s.median for s in rounds if s is not None]
    return times


@dataclass
class Comparison:
    a: Run
    b: Run
    jobs: pd.DataFrame  # a row per shared job
    accuracy: pd.DataFrame  # a row per backend x impl x mode x variant
    only_a: list[tuple]
    only_b: list[tuple]
    environment: list[tuple[str, Any, Any]]
    stats: dict[tuple, Stat] = field(default_factory=dict)
    settings: list[tuple[str, Any, Any]] = field(default_factory=list)  # job settings that differ (shared jobs)


def _floor_ratios(run: Run) -> dict[tuple[str, str, str], float]:
    if run.bench is None or "ratio_to_floor" not in run.bench.columns:
        return {}
    return {(r["backend"], r["mode"], r["tuning"]): r["ratio_to_floor"] for _, r in run.bench.iterrows()}


def _time_row(seconds_a: list[float], seconds_b: list[float]) -> dict[str, Any]:
    """Steady medians (``stats.steady_epochs``: epochs 2..E), their ratio, and Student's t on the logs of those
    epochs' times (``stats.log_ratio_test``); the verdict is given by ``time_verdicts`` over every job."""
    steady_a, steady_b = steady_epochs(seconds_a), steady_epochs(seconds_b)
    times_a, times_b = seconds_a[1:], seconds_b[1:]
    row: dict[str, Any] = {"steady_epochs_a": len(times_a), "steady_epochs_b": len(times_b),
                           "steady_seconds_a": steady_a.median if steady_a else None,
                           "steady_seconds_b": steady_b.median if steady_b else None, "time_ratio": None,
                           "ratio_ci95_low": None, "ratio_ci95_high": None, "p_value": None, "p_adjusted": None,
                           "significant": False}
    if not (steady_a and steady_b) or steady_a.median <= 0:
        return row
    test = log_ratio_test(times_a, times_b)
    row["time_ratio"] = steady_b.median / steady_a.median
    if test is not None and test.p is not None:
        row.update(ratio_ci95_low=test.low, ratio_ci95_high=test.high, p_value=test.p)
    return row


def time_verdicts(rows: list[dict[str, Any]], fail_above: float | None = None) -> None:
    """Holm's adjustment over the jobs that could be tested, then each job's verdict: ``slower`` / ``faster``
    (adjusted p < ALPHA), ``within the noise``, ``cannot judge`` (fewer than two steady epochs a side, no spread to
    measure the noise by; or, under a gate of ``fail_above`` %, slower by more than that without significance),
    ``not measured`` (no epoch times on a side)."""
    tested = [row for row in rows if row["p_value"] is not None]
    for row, adjusted in zip(tested, holm([row["p_value"] for row in tested])):
        row["p_adjusted"] = adjusted
        row["significant"] = adjusted < ALPHA
    limit = None if fail_above is None else 1 + fail_above / 100
    for row in rows:
        ratio = row["time_ratio"]
        if ratio is None:
            row["time"] = "not measured"
        elif row["significant"]:
            row["time"] = "slower" if ratio > 1 else "faster"
        elif row["p_value"] is None or (limit is not None and ratio > limit):
            row["time"] = "cannot judge"
        else:
            row["time"] = "within the noise"


def compare(a: Run, b: Run, fail_above: float | None = None) -> Comparison:
    """``fail_above``: the gate's percentage, which the time verdicts of undecided slowdowns depend on."""
    jobs_a = {_key(r): r for _, r in a.jobs.iterrows()}
    jobs_b = {_key(r): r for _, r in b.jobs.iterrows()}
    shared = [key for key in jobs_a if key in jobs_b]
    if not shared:
        raise UsageError(f"{a.path} and {b.path} share no finished job (keys: {', '.join(JOB_KEYS)}); compare "
                         f"runs of the same backends, modes, variants and seeds")
    times_a, times_b = epoch_times(a), epoch_times(b)
    floors_a, floors_b = _floor_ratios(a), _floor_ratios(b)
    rows = []
    for key in shared:
        row = dict(zip(JOB_KEYS, key))
        acc_a, acc_b = float(jobs_a[key]["final_val_acc"]), float(jobs_b[key]["final_val_acc"])
        row.update(final_val_acc_a=acc_a, final_val_acc_b=acc_b, val_acc_diff=acc_b - acc_a)
        row.update(_time_row(times_a.get(key, []), times_b.get(key, [])))
        where = (row["backend"], row["mode"], row["tuning"])
        floor_a, floor_b = floors_a.get(where), floors_b.get(where)
        row.update(ratio_to_floor_a=floor_a, ratio_to_floor_b=floor_b,
                   floor_normalised_ratio=floor_b / floor_a if floor_a and floor_b else None)
        rows.append(row)
    time_verdicts(rows, fail_above)
    jobs = pd.DataFrame(rows)
    long = pd.concat([a.jobs.assign(side="A"), b.jobs.assign(side="B")])
    wanted = set(shared)
    long = long[long.apply(lambda r: _key(r) in wanted, axis=1)]
    groups, stats = [], {}
    for group, frame in long.groupby(GROUP_COLUMNS, sort=False):
        difference = paired(frame, "final_val_acc", "A", "B", key="side").scaled(100)
        stats[tuple(group)] = difference
        groups.append({**dict(zip(GROUP_COLUMNS, group)), "seeds": difference.n,
                       "val_acc_diff_points": difference.mean, "sd_points": difference.sd,
                       "ci95_half_width_points": difference.half_width, "beyond_seed_noise": difference.clear,
                       "dropped": difference.clear and difference.mean < 0})
    return Comparison(a=a, b=b, jobs=jobs, accuracy=pd.DataFrame(groups),
                      only_a=[k for k in jobs_a if k not in jobs_b], only_b=[k for k in jobs_b if k not in jobs_a],
                      environment=environment_differences(a, b), stats=stats,
                      settings=setting_differences(a, b, shared))


def slower_jobs(comparison: Comparison, percent: float = 0.0) -> pd.DataFrame:
    """Jobs significantly slower in B by more than ``percent`` %."""
    jobs = comparison.jobs
    return jobs[jobs["significant"] & (jobs["time_ratio"] > 1 + percent / 100)]


def dropped_groups(comparison: Comparison) -> pd.DataFrame:
    return comparison.accuracy[comparison.accuracy["dropped"]]


def job_name(row) -> str:
    return (f"{row['backend']} {row.get('tuning', DEFAULT_TUNING)} {row['impl']} {row['mode']} {row['variant']} "
            f"seed {row['seed']}")


def undecided_jobs(comparison: Comparison) -> pd.DataFrame:
    """Jobs whose time the samples cannot judge (``time_verdicts``): a gate fails closed on them."""
    return comparison.jobs[comparison.jobs["time"].isin(UNDECIDED)]


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None or pd.isna(value) else format(value, spec)


def _shown(value: Any) -> str:
    return "not recorded" if value is None else str(value)


def verdict(comparison: Comparison, fail_above: float | None) -> tuple[str, str | None]:
    """One paragraph for the console, and the ``--fail-above`` gate's outcome: None without a gate, ``fail`` (a job
    slower by more than the percentage beyond the noise, or a group's accuracy dropped beyond the seed noise),
    ``cannot judge`` (nothing failed, but a job's time cannot be judged: the gate fails closed) or ``pass``."""
    jobs = comparison.jobs
    slower, dropped = slower_jobs(comparison), dropped_groups(comparison)
    faster = jobs[jobs["significant"] & (jobs["time_ratio"] < 1)]
    undecided = undecided_jobs(comparison)
    parts = [f"B ({comparison.b.path}) against A ({comparison.a.path}): {len(jobs)} shared job{'s' if len(jobs) != 1 else ''}"
             + (f", {len(comparison.only_a)} only in A" if comparison.only_a else "")
             + (f", {len(comparison.only_b)} only in B" if comparison.only_b else "") + "."]
    if comparison.settings:
        parts.append("The shared jobs' settings differ: " + "; ".join(
            f"{what} {left} in A, {right} in B" for what, left, right in comparison.settings) + ".")
    if comparison.environment:
        parts.append("The environments differ in " + ", ".join(what for what, _, _ in comparison.environment) + ".")
    else:
        parts.append("The environments are the same as far as meta.json tells.")
    timing = [f"{job_name(r)} {r['time_ratio']:.2f}x (p = {r['p_adjusted']:.3f})" for _, r in slower.iterrows()]
    unjudged = [f"{job_name(r)} {_fmt(r['time_ratio'], '.2f')}x" for _, r in undecided.iterrows()]
    within = len(jobs) - len(slower) - len(faster) - len(undecided)
    parts.append(f"Time: {len(slower)} job(s) slower beyond the noise" + (f" ({'; '.join(timing)})" if timing else "")
                 + f", {len(faster)} faster, {within} within the noise"
                 + (f", {len(undecided)} the samples cannot judge ({'; '.join(unjudged)})" if unjudged else "")
                 + f" (Student's t on the logs of the steady epochs' times, Holm-adjusted p < {ALPHA}).")
    judged = comparison.accuracy[comparison.accuracy["seeds"] >= 2]
    drops = [f"{r['backend']} {r['mode']} {r['variant']} {r['val_acc_diff_points']:+.2f} points"
             for _, r in dropped.iterrows()]
    parts.append(f"Accuracy: {len(dropped)} of {len(judged)} group(s) with two or more seeds dropped beyond the "
                 f"seed noise" + (f" ({'; '.join(drops)})" if drops else "")
                 + (f"; {len(comparison.accuracy) - len(judged)} with one seed: no spread to judge"
                    if len(judged) < len(comparison.accuracy) else "") + ".")
    outcome = None
    if fail_above is not None:
        gate = slower_jobs(comparison, fail_above)
        outcome = "fail" if len(gate) or len(dropped) else "cannot judge" if len(undecided) else "pass"
        text = {"fail": f"FAIL ({len(gate)} job(s) slower by more than {fail_above:g}% beyond the noise, "
                        f"{len(dropped)} accuracy drop(s))",
                "cannot judge": f"CANNOT JUDGE ({len(undecided)} job(s) whose time the samples cannot judge: the gate "
                                f"fails closed; run more epochs)", "pass": "pass"}[outcome]
        parts.append(f"Gate --fail-above {fail_above:g}%: {text}.")
    return " ".join(parts), outcome


def write_markdown(path: Path, comparison: Comparison, paragraph: str) -> None:
    a, b = comparison.a, comparison.b
    lines = ["# dropbench: compare", "", f"- A: `{a.path}` ({a.kind} run, {a.meta.get('started', '?')})",
             f"- B: `{b.path}` ({b.kind} run, {b.meta.get('started', '?')})", "", paragraph, ""]
    if comparison.settings:
        lines += ["## Settings that differ (the shared jobs')", "", "| setting | A | B |", "| --- | --- | --- |"]
        lines += [f"| {what} | {left} | {right} |" for what, left, right in comparison.settings]
        lines.append("")
    lines += ["## Environment", ""]
    if comparison.environment:
        lines += ["| what | A | B |", "| --- | --- | --- |"]
        lines += [f"| {what} | {_shown(left)} | {_shown(right)} |" for what, left, right in comparison.environment]
    else:
        lines.append("No difference in meta.json (versions, CPU, threads, BLAS, device, git commit).")
    lines += ["", "## Accuracy (B - A, final validation accuracy, paired by seed)", "",
              f"| {' | '.join(GROUP_COLUMNS)} | seeds | B - A |",
              "| " + "--- | " * len(GROUP_COLUMNS) + "---: | --- |"]
    for group, s in comparison.stats.items():
        lines.append(f"| {' | '.join(map(str, group))} | {s.n} | {describe(s, 'points')} |")
    floor = any(comparison.jobs["ratio_to_floor_a"].notna()) if "ratio_to_floor_a" in comparison.jobs else False
    lines += ["", "## Time (B / A, steady epoch time: median of epochs 2..E)", "",
              "`~`: not significant (Student's t on the logs of the steady epochs' times, two-sided, Holm-adjusted "
              f"over the jobs, p >= {ALPHA}); 95 % CI: of the ratio of the steady epochs' geometric means; cannot "
              "judge: fewer than two steady epochs a side, or under the gate a slowdown beyond it that is not "
              "significant.", "",
              "| job | A s | B s | B / A | 95 % CI | p (Holm) | " + ("x floor A | x floor B | " if floor else "")
              + "verdict |",
              "| --- | ---: | ---: | ---: | --- | ---: | " + ("---: | ---: | " if floor else "") + "--- |"]
    for _, r in comparison.jobs.iterrows():
        floors = (f"{_fmt(r['ratio_to_floor_a'], '.2f')} | {_fmt(r['ratio_to_floor_b'], '.2f')} | " if floor else "")
        ratio = "-" if r["time_ratio"] is None or pd.isna(r["time_ratio"]) else (
            f"{'' if r['significant'] else '~'}{r['time_ratio']:.3f}")
        interval = (f"{_fmt(r['ratio_ci95_low'], '.3f')} to {_fmt(r['ratio_ci95_high'], '.3f')}"
                    if r["ratio_ci95_low"] is not None and not pd.isna(r["ratio_ci95_low"]) else "-")
        lines.append(f"| {job_name(r)} | {_fmt(r['steady_seconds_a'], '.3f')} | {_fmt(r['steady_seconds_b'], '.3f')}"
                     f" | {ratio} | {interval} | {_fmt(r['p_adjusted'], '.3f')} | {floors}{r['time']} |")
    for side, only in (("A", comparison.only_a), ("B", comparison.only_b)):
        if only:
            lines += ["", f"## Jobs only in {side}", ""]
            lines += [f"- {' '.join(map(str, key))}" for key in only]
    lines += ["", "Files: `compare.csv` (a row per shared job), `compare_accuracy.csv` (a row per group).", ""]
    path.write_text("\n".join(lines))
