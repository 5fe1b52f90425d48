"""``python harness.py [--backend ...] [--experiment ...]``: train an experiment's jobs, then write its report.

The flow is ``prepare`` (flags -> a ``TrainRun``, every check of the input made before any work) and ``execute``
(dry run, or run, report and the resume hint after an interrupt), so that code other than the command line can run
a ``TrainRun`` the same way.
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from backends import registry
from experiments import catalog, data, report, resume
from experiments.options import (
    Parser, UsageError, add_backend_option, add_mode_option, add_resume_options, add_run_options, add_spec_options,
    check_train_limit, modes_of, validate_run_options,
)
from experiments.plan import Experiment
from experiments.rundir import load_tables
from experiments.runner import RunInterrupted, RunOptions, run_experiment
from experiments.sections import side_by_side


def build_parser() -> Parser:
    parser = Parser(prog="python harness.py", description="Train D2L's dropout MLP on Fashion-MNIST with several "
                    "frameworks side by side and write CSV reports. Other commands: bench (python harness.py bench "
                    "--help).")
    add_backend_option(parser, "default: all available")
    parser.add_argument("--experiment", default="d2l", help="named experiment (default d2l; --list shows them)")
    add_spec_options(parser)
    add_mode_option(parser, "eager")
    parser.add_argument("--seeds", type=int, nargs="+", metavar="S", help="seeds to run, e.g. --seeds 0 1 2")
    add_run_options(parser, out_default="results/<experiment>-<timestamp>")
    add_resume_options(parser)
    parser.add_argument("--list", action="store_true", help="list backends and experiments, then exit")
    return parser


def list_everything() -> str:
    lines = ["Backends:"]
    for name, info in registry.REGISTRY.items():
        version = registry.framework_version(name)
        state = f"available  {info.distribution} {version}" if version else \
            f"missing    install: {info.install}"
        where = "" if info.in_process else f"  (runs under {info.interpreter})"
        lines.append(f"  {name:<11} {state}  modes: {', '.join(info.modes)}{where}")
    lines.append("Experiments:")
    lines.extend(f"  {entry.name:<24} {entry.description}" for entry in catalog.CATALOG.values())
    return "\n".join(lines)


def overrides(args: argparse.Namespace) -> tuple[dict, dict]:
    model = {"dropouts": args.dropout, "hiddens": args.hiddens, "impl": args.impl, "noise": args.noise,
             "init": args.init}
    train = {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "weight_decay": args.weight_decay,
             "train_limit": args.train_limit}
    model = {k: tuple(v) if isinstance(v, list) else v for k, v in model.items() if v is not None}
    if "hiddens" in model and "dropouts" not in model and len(model["hiddens"]) != 2:
        raise UsageError("--hiddens with other than two layers needs --dropout with one probability per layer")
    return model, {k: v for k, v in train.items() if v is not None}


@dataclass(frozen=True)
class TrainRun:
    """A checked training run: the experiment, where and how its jobs run, and whether only to list them."""

    experiment: Experiment
    options: RunOptions
    dry_run: bool = False


def training_examples(data_dir: Path) -> int:
    """The training set's size from its labels file (60 KB), without loading the images."""
    return int(data.read_idx(data.held_path(data_dir, data.FILES["train_labels"])).shape[0])


def prepare(args: argparse.Namespace) -> TrainRun:
    validate_run_options(args)
    model, train = overrides(args)
    modes = modes_of(args.mode)
    chosen = registry.select(args.backend, installed_only=True)
    if not chosen:
        raise registry.BackendError("no backend is available; run make setup (or pip install numpy) first")
    if args.mode != "all":
        for name in chosen:
            if args.mode not in registry.resolve(name).modes:
                raise UsageError(f"backend {name} has no {args.mode} mode (it offers "
                                 f"{', '.join(registry.resolve(name).modes)}); use --mode all or another backend")
    experiment = catalog.build(args.experiment, backends=chosen, modes=modes, seeds=args.seeds,
                               model_overrides=model, train_overrides=train)
    out = args.out or Path("results") / f"{experiment.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    resume.check_out_folder(out, resume=args.resume)
    if args.resume:
        resume.check_run_folder(out, experiment.name)
    data_dir = data.locate(args.data_dir)
    check_train_limit(args.train_limit, training_examples(data_dir))
    options = RunOptions(data_dir=data_dir, out_dir=out, threads=args.threads, job_timeout=args.job_timeout,
                         jobs=args.jobs, executor=args.executor, ray_address=args.ray_address, resume=args.resume,
                         force=args.force)
    return TrainRun(experiment=experiment, options=options, dry_run=args.dry_run)


def run_notes(folder: Path) -> list[str]:
    """What the report's table cannot show: jobs reused from an earlier run, jobs that shared a host."""
    summary = load_tables(folder).get("summary", [])
    notes = []
    reused = [row for row in summary if row.get("reused") == "yes"]
    if reused:
        names = ", ".join(" ".join(row[k] for k in ("backend", "impl", "mode", "variant")) + f" seed {row['seed']}"
                          for row in reused)
        notes.append(f"- {len(reused)} of {len(summary)} jobs were reused from an earlier run into this folder "
                     f"(`reused` = yes in summary.csv): same fingerprint, not rerun: {names}.")
    shared = [row for row in summary if str(row.get("concurrent_jobs") or "1") not in ("", "1")]
    if shared:
        notes.append(f"- {len(shared)} jobs ran while other jobs ran on the same host (`concurrent_jobs` in "
                     f"summary.csv): they shared its CPUs and memory bandwidth, so their timings are not those of "
                     f"a machine to themselves; compare timings only of jobs with concurrent_jobs = 1.")
    return ["", "## How the jobs ran", "", *notes] if notes else []


def write_report(experiment: str, out: Path) -> None:
    written = report.write(experiment, out)
    if written is not None:
        notes = run_notes(out)
        if notes:
            with open(written, "a") as handle:
                handle.write("\n" + "\n".join(notes) + "\n")


def resume_command(argv: list[str], out: Path) -> str:
    words = ["python", *argv]
    if "--out" not in argv:
        words += ["--out", str(out)]
    if "--resume" not in argv:
        words.append("--resume")
    return " ".join(words)


def execute(train_run: TrainRun, argv: list[str]) -> int:
    experiment, options = train_run.experiment, train_run.options
    if train_run.dry_run:
        jobs = experiment.jobs(lambda name: registry.resolve(name).modes)
        decisions = resume.plan(jobs, options.out_dir, data_dir=options.data_dir, threads=options.threads,
                                resume=options.resume, force=options.force)
        print("\n".join(resume.dry_run_lines(decisions, resume=options.resume)))
        return 0
    out = options.out_dir
    print(f"{experiment.name}: {experiment.description}", file=sys.stderr)
    print(f"data: {options.data_dir}   results: {out}   threads: {options.threads}   executor: {options.executor}",
          file=sys.stderr)
    try:
        rows = run_experiment(experiment, options, argv=argv)
    except RunInterrupted as stop:
        write_report(experiment.name, out)
        print(f"\ninterrupted by {stop.signal_name}: the finished jobs and epochs are in {out}/; continue with\n"
              f"  {resume_command(argv, out)}", file=sys.stderr)
        return stop.status
    write_report(experiment.name, out)
    print()
    print(side_by_side(rows))
    written = sorted(path.name for path in Path(out).iterdir() if path.is_file())
    print(f"\nresults in {out}/: {', '.join(written)}")
    return 0 if any(row["status"] == "ok" for row in rows) else 1


def run(args: argparse.Namespace, argv: list[str]) -> int:
    if args.list:
        print(list_everything())
        return 0
    return execute(prepare(args), argv)
