"""The Python interface, for notebooks and scripts; the command line is built on it.

    from experiments import run, load
    r = run("d2l", backends=["jax", "torch"], modes=["eager", "compiled"], epochs=10, seeds=[0, 1])
    r.summary, r.epochs        # pandas DataFrames, read back from the run folder's CSVs
    r.plot()                   # the learning curves, a matplotlib Figure
    load("results/d2l-20261126-120000")   # the same for a finished run (bench runs too: r.bench)
    load("results/bench-20261126-120000")  # a scaling bench: r.scaling, r.bench of every size, r.sizes[256]

``run`` starts one worker process per job through the same runner as ``python harness.py``, writes the same run
folder (CSVs, ``meta.json``, ``report.md``, PNGs), and raises the command line's user errors (the classes of
``experiments.cli.USER_ERRORS``, with the same one-line messages) instead of printing them.
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Iterable, Sequence

import pandas as pd

from backends import registry
from backends.contract.spec import MODES, TUNINGS, ModelSpec, TrainSpec
from experiments import catalog, data
from experiments.running import lock, resume
from experiments.report import writer as report
from experiments.running.executors import check_ray_address
from experiments.options import UsageError, check_train_limit, modes_of, tunings_of, validate_run_options
from experiments.report.results import Run
from experiments.running.runner import RunInterrupted, RunOptions, run_experiment
from experiments.report.sections import learning_curves_figure

MODEL_FIELDS = tuple(f.name for f in dataclasses.fields(ModelSpec) if f.name not in ("num_inputs", "num_outputs"))
TRAIN_FIELDS = tuple(f.name for f in dataclasses.fields(TrainSpec) if f.name not in ("seed", "mode", "tuning"))
# Every field of RunOptions but the two that run() computes can be given to run() by name, so that a field added to
# RunOptions is reachable from here without a change to this module.
RUN_FIELDS = tuple(f.name for f in dataclasses.fields(RunOptions) if f.name not in ("data_dir", "out_dir"))


@dataclass
class Result:
    """A run folder read back: its tables as DataFrames, ``meta.json``, and the learning curves."""

    folder: Path
    experiment: str
    meta: dict[str, Any] = field(repr=False)
    summary: pd.DataFrame | None = field(repr=False)
    epochs: pd.DataFrame | None = field(repr=False)
    bench: pd.DataFrame | None = field(default=None, repr=False)
    # A scaling bench (several --batch-sizes): scaling.csv, and each size's own bench folder read back, by batch
    # size; ``bench`` then holds every size's rows (their batch_size column tells them apart).
    scaling: pd.DataFrame | None = field(default=None, repr=False)
    sizes: dict[int, Result] = field(default_factory=dict, repr=False)

    @property
    def report(self) -> Path | None:
        """``report.md`` (``bench.md`` for a bench run, ``scaling.md`` for a scaling bench), or None."""
        return next((p for p in (self.folder / name for name in ("report.md", "bench.md", "scaling.md"))
                     if p.exists()), None)

    @property
    def figure(self) -> Path | None:
        """The learning curves' PNG that the report links, when it was written."""
        path = self.folder / "learning_curves.png"
        return path if path.exists() else None

    @property
    def ok(self) -> bool:
        """True when at least one job finished."""
        if self.sizes:
            return any(size.ok for size in self.sizes.values())
        return self.summary is not None and bool((self.summary["status"] == "ok").any())

    def table(self, name: str) -> pd.DataFrame | None:
        """Another table of the run folder (``train_eval``, ``activations``, ``timings``, ...), or None."""
        return read_table(self.folder, name)

    def plot(self, path: str | Path | None = None):
        """The learning curves of the finished jobs (the report's figure) as a matplotlib Figure; also saved as a
        PNG at ``path`` when given."""
        if self.sizes:
            raise UsageError(f"{self.folder} is a scaling bench: plot one size's learning curves with "
                             f".sizes[B].plot() (B in {', '.join(map(str, self.sizes))}); the scaling chart is "
                             f"{self.folder / 'scaling.png'}")
        if self.summary is None:
            raise UsageError(f"{self.folder} has no summary.csv: no job of this run has finished")
        figure = learning_curves_figure(Run(self.experiment, self.folder), path)
        if figure is None:
            raise UsageError(f"{self.folder} has no finished epoch to plot")
        return figure


def read_table(folder: Path, name: str) -> pd.DataFrame | None:
    path = Path(folder) / f"{name}.csv"
    return pd.read_csv(path) if path.exists() else None


def load(folder: str | Path) -> Result:
    """A finished (or interrupted) run folder: a training run, a bench run or a scaling bench's top folder."""
    folder = Path(folder)
    if (folder / "scaling.csv").exists():
        return _load_scaling(folder)
    if not (folder / "summary.csv").exists() and not (folder / "bench.csv").exists():
        raise UsageError(f"{folder} holds no run (no summary.csv or bench.csv); give a folder that harness.py or "
                         "experiments.run wrote, e.g. results/d2l-<timestamp>")
    meta_path = folder / "meta.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    return Result(folder=folder, experiment=meta.get("experiment", folder.name.rsplit("-", 2)[0]), meta=meta,
                  summary=read_table(folder, "summary"), epochs=read_table(folder, "epochs"),
                  bench=read_table(folder, "bench"))


def _load_scaling(folder: Path) -> Result:
    sizes = {}
    for path in folder.glob("batch-*"):
        batch = path.name.removeprefix("batch-")
        if batch.isdigit() and (path / "bench.csv").exists():
            sizes[int(batch)] = load(path)
    sizes = dict(sorted(sizes.items()))
    benches = [size.bench for size in sizes.values() if size.bench is not None]
    first = next(iter(sizes.values()), None)
    return Result(folder=folder, experiment=first.experiment if first else "bench", meta=first.meta if first else {},
                  summary=None, epochs=None, bench=pd.concat(benches, ignore_index=True) if benches else None,
                  scaling=read_table(folder, "scaling"), sizes=sizes)


def _names(value: str | Iterable[str] | None) -> list[str] | None:
    return [value] if isinstance(value, str) else (list(value) if value is not None else None)


def select_modes(backends: Sequence[str], modes: str | Iterable[str]) -> tuple[str, ...]:
    """``"all"`` (each backend runs every mode it has) or modes by name, which every chosen backend must offer."""
    names = _names(modes) or ["eager"]
    if names == ["all"]:
        return modes_of("all")
    for mode in names:
        if mode not in MODES:
            raise UsageError(f"unknown mode {mode!r}; choose from {', '.join(MODES)} or all")
        for name in backends:
            offered = registry.resolve(name).modes
            if mode not in offered:
                raise UsageError(f"backend {name} has no {mode} mode (it offers {', '.join(offered)}); use --mode "
                                 "all (modes='all') or another backend")
    return tuple(names)


def select_tunings(tunings: str | Iterable[str]) -> tuple[str, ...]:
    """``"stock"``, ``"tuned"``, ``"all"`` (both, as separate jobs) or a list of tiers."""
    names = _names(tunings) or ["stock"]
    if names == ["all"]:
        return tunings_of("all")
    for tuning in names:
        if tuning not in TUNINGS:
            raise UsageError(f"unknown tuning {tuning!r}; choose from {', '.join(TUNINGS)} or all")
    return tuple(dict.fromkeys(names))


def split_overrides(overrides: dict[str, Any]) -> tuple[dict, dict, dict]:
    """The keyword arguments of ``run`` by destination: ModelSpec, TrainSpec, RunOptions."""
    model = {k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items() if k in MODEL_FIELDS}
    train = {k: v for k, v in overrides.items() if k in TRAIN_FIELDS}
    options = {k: v for k, v in overrides.items() if k in RUN_FIELDS}
    unknown = sorted(set(overrides) - set(model) - set(train) - set(options))
    if unknown:
        raise UsageError(f"unknown setting {', '.join(unknown)}; run() takes the model's "
                         f"({', '.join(MODEL_FIELDS)}), the trainer's ({', '.join(TRAIN_FIELDS)}) and the runner's "
                         f"({', '.join(RUN_FIELDS)})")
    if "hiddens" in model and "dropouts" not in model and len(model["hiddens"]) != 2:
        raise UsageError("--hiddens with other than two layers needs --dropout with one probability per layer")
    return model, train, options


def call_text(experiment: str, arguments: dict[str, Any]) -> str:
    """How the call reads in ``meta.json`` and the report's header."""
    shown = ", ".join(f"{k}={v!r}" for k, v in arguments.items() if v is not None)
    return f"experiments.run({experiment!r}{', ' + shown if shown else ''})"


def run(experiment: str = "d2l", *, backends: str | Iterable[str] | None = None,
        modes: str | Iterable[str] = "eager", tuning: str | Iterable[str] = "stock", seeds: Iterable[int] | None = None,
        out: str | Path | None = None,
        data_dir: str | Path | None = None, threads: int | None = None, job_timeout: float = 900.0,
        progress: bool = True, dry_run: bool = False, argv: list[str] | None = None, **overrides: Any) -> Result | None:
    """Train ``experiment``'s jobs, one worker process each, write the run folder and its report, and return it.

    ``backends``: names or ``"all"`` (default: every installed backend); ``modes``: ``"eager"``, ``"compiled"``,
    a list of them, or ``"all"`` (each backend's own modes); ``tuning``: ``"stock"`` (each framework as its own
    tutorial writes it), ``"tuned"`` (this project's same-law speed paths), or ``"all"`` (both);
    ``seeds``: the experiment's default when None;
    ``out``: the run folder (``results/<experiment>-<timestamp>``); ``threads``: per framework (all cores).
    ``overrides``: the model's and the trainer's fields (``epochs=2, train_limit=3000, lr=0.05,
    dropouts=(0.2, 0.5), impl="scratch"``, ...) and any further field of ``experiments.running.runner.RunOptions``
    by name (``resume=True``, ``force``, ``jobs=2``, ``executor="ray"``, ``ray_address``). ``dry_run``: print the
    job matrix (and with ``resume`` what would be reused), run nothing and return None. ``argv``: the command line
    to record (the CLI's); by default this call. A SIGINT or SIGTERM stops the workers, writes the report for what
    finished and raises ``experiments.running.runner.RunInterrupted``."""
    model, train, extra = split_overrides(overrides)
    threads = (os.cpu_count() or 1) if threads is None else threads
    checked = {"jobs": 1, "executor": "local", "ray_address": None, "resume": False, "force": False, **extra}
    validate_run_options(SimpleNamespace(threads=threads, job_timeout=job_timeout, out=out, **checked))
    chosen = registry.select(_names(backends), installed_only=True)
    if not chosen:
        raise registry.BackendError("no backend is available; run make setup (or pip install numpy) first")
    registry.check_device(chosen, train.get("device", "cpu"))
    planned = catalog.build(experiment, backends=chosen, modes=select_modes(chosen, modes),
                            tunings=select_tunings(tuning),
                            seeds=tuple(seeds) if seeds is not None else None, model_overrides=model,
                            train_overrides=train)
    folder = Path(out) if out is not None else Path("results") / f"{planned.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    located = data.locate(data_dir)  # before the folder is made: refused data must not leave an empty run folder
    check_train_limit(train.get("train_limit"), data.training_examples(located))
    check_ray_address(checked["executor"], checked["ray_address"])
    made = [f for f in (folder, *folder.parents) if not f.exists()]
    resume.check_out_folder(folder, resume=checked["resume"])
    if checked["resume"]:
        resume.check_run_folder(folder, planned.name)
    options = RunOptions(data_dir=located, out_dir=folder, threads=threads, job_timeout=job_timeout,
                         progress=progress, **extra)
    if dry_run:
        jobs = planned.jobs(lambda name: registry.resolve(name).modes)
        decisions = resume.plan(jobs, folder, data_dir=located, threads=threads, resume=options.resume,
                                force=options.force)
        print("\n".join(resume.dry_run_lines(decisions, resume=options.resume)))
        _remove_empty(made)  # a dry run writes nothing
        return None
    if progress:
        print(f"{planned.name}: {planned.description}\nsettings: {planned.settings_text()}\n"
              f"data: {located}   results: {folder}   threads: {threads}   "
              f"executor: {options.executor}", file=sys.stderr)
    if argv is None:
        argv = [call_text(experiment, {"backends": _names(backends), "modes": modes, "tuning": tuning, "seeds": seeds,
                                       **overrides})]
    interrupted = False
    try:
        with lock.hold(folder):  # the run and its report: a second harness on this folder is refused before either
            try:
                run_experiment(planned, options, argv=argv)
            except RunInterrupted as stop:
                stop.out, interrupted = folder, True  # where to resume
                raise
            finally:  # an interrupted or failed run gets its report too, for what finished
                written = [p for p in folder.iterdir() if p != lock.lock_path(folder)]
                if interrupted or written or not made:
                    report.write(planned.name, folder)
    finally:
        if made and folder.is_dir() and not any(folder.iterdir()):  # refused before a job started: leave nothing
            _remove_empty(made)
    return load(folder)


def _remove_empty(folders: list[Path]) -> None:
    """Remove the folders this call made (innermost first), as long as nothing else was put in them."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return
