"""What every command shares: the parser that turns a bad flag into one line, the run options, their validation,
and the choice lists, derived from the contract's constants and the registry."""
from __future__ import annotations

import argparse
import importlib.util
import os
import textwrap
from pathlib import Path

from backends.contract.spec import DEVICES, IMPLS, INITS, MODES, NOISE_KINDS, TUNINGS, ModelSpec, TrainSpec
from backends.registry import REGISTRY

USER_ERROR = 2
EXECUTORS = ("local", "ray")
MODE_CHOICES = (*MODES, "all")
TUNING_CHOICES = (*TUNINGS, "all")
BACKEND_HELP = f"{', '.join(REGISTRY)}, or all (repeatable)"
TARGET_ACC = 0.84  # the validation accuracy that seconds_to_target is measured to (--target-acc)
GPU_BACKENDS = ", ".join(name for name, info in REGISTRY.items() if "gpu" in info.devices)


class UsageError(Exception):
    pass


class HelpFormatter(argparse.HelpFormatter):
    """Option help is wrapped as argparse wraps it; in the description and the epilog, indented lines (the examples,
    the exit statuses) keep their own lines and the other lines are wrapped as paragraphs."""

    def __init__(self, prog: str, **kwargs) -> None:
        kwargs.setdefault("max_help_position", 30)
        super().__init__(prog, **kwargs)

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        lines: list[str] = []
        paragraph: list[str] = []

        def flush() -> None:
            if paragraph:
                lines.extend(textwrap.wrap(" ".join(paragraph), width, initial_indent=indent,
                                           subsequent_indent=indent))
                paragraph.clear()

        for line in text.splitlines():
            if line.strip() and not line.startswith(" "):
                paragraph.append(line.strip())
                continue
            flush()
            lines.append(indent + line)
        flush()
        return "\n".join(lines)


class Parser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line (no usage block) that names the command's own ``--help``, exit
    status 2; ``--help`` keeps the examples' lines."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{message} (see {self.prog} --help)")


def add_backend_option(parser: argparse.ArgumentParser, default_text: str) -> None:
    parser.add_argument("--backend", action="append", metavar="NAME", help=f"{BACKEND_HELP}; {default_text}")


def add_mode_option(parser: argparse.ArgumentParser, default: str) -> None:
    parser.add_argument("--mode", choices=MODE_CHOICES, default=default,
                        help="eager: the framework's own step by step execution; compiled: its graph compiler "
                             "(torch.compile, a jitted lax.scan epoch, tf.function, hybridize); all: every mode each "
                             f"backend has (numpy: eager only) (default: {default})")


def add_tuning_option(parser: argparse.ArgumentParser, default: str) -> None:
    parser.add_argument("--tuning", choices=TUNING_CHOICES, default=default,
                        help="stock: each framework as its own tutorial writes it; tuned: this project's same-law "
                             f"speed paths; all: both, as separate rows (default: {default})")


def add_device_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", choices=DEVICES, default=DEVICES[0],
                        help=f"where the backends run; gpu: {GPU_BACKENDS} only (name them with --backend), refused "
                             f"in one line where no NVIDIA GPU is visible (default: {DEVICES[0]})")


def add_spec_options(parser: argparse.ArgumentParser) -> None:
    """The model's and the trainer's fields a user may set on the command line. Their defaults are D2L's (the
    ``ModelSpec`` and ``TrainSpec`` defaults), unless the experiment sets its own (``--list``)."""
    model, train = ModelSpec(), TrainSpec()
    pair = " ".join(f"{p:g}" for p in model.dropouts)
    parser.add_argument("--epochs", type=int, metavar="N",
                        help=f"training epochs (default: the experiment's: {train.epochs}, 50 for long-training)")
    parser.add_argument("--batch-size", type=int, metavar="B", help=f"minibatch size (default: {train.batch_size})")
    parser.add_argument("--lr", type=float, help=f"SGD learning rate (default: {train.lr:g})")
    parser.add_argument("--dropout", type=float, nargs="+", metavar="P",
                        help="one rate per hidden layer; with --noise dropout or dropconnect the probability of "
                             "dropping a unit or weight (the rest scaled by 1/(1-P)), gaussian: multiplicative noise "
                             "N(1, P/(1-P)), dropout's variance, additive: the standard deviation of the N(0, P^2) "
                             f"noise added to each unit (default: {pair})")
    parser.add_argument("--hiddens", type=int, nargs="+", metavar="H",
                        help=f"hidden layer widths (default: {' '.join(map(str, model.hiddens))}); other than two "
                             "layers needs --dropout with one rate per layer")
    parser.add_argument("--impl", choices=IMPLS,
                        help="concise: the framework's own Dropout layer; scratch: the section's dropout_layer "
                             f"written with the framework's ops (default: {model.impl})")
    parser.add_argument("--noise", choices=tuple(NOISE_KINDS),
                        help=f"the noise after each hidden layer; its rate is --dropout (default: {model.noise})")
    parser.add_argument("--init", choices=INITS,
                        help="shared: one NumPy draw of PyTorch's default init, the same weights for every backend; "
                             f"framework: each framework's own default (default: {model.init})")
    parser.add_argument("--weight-decay", type=float, metavar="WD",
                        help="adds WD * W to each kernel's gradient, biases not decayed "
                             f"(default: {train.weight_decay:g})")


DATA_DIR_HELP = ("folder with the four Fashion-MNIST files (default: $FASHION_MNIST_DIR, the user cache, "
                 "/usr/share/datasets/fashion-mnist, else downloaded into the user cache)")
THREADS_HELP = f"threads per framework, set before it is imported (default: all cores, here {os.cpu_count() or 1})"


def add_run_options(parser: argparse.ArgumentParser, *, out_default: str, jobs_help: str | None = None) -> None:
    """The options every command that runs jobs shares (training runs and the benchmark). ``jobs_help``: what
    ``--jobs`` means for this command, where it accepts less than the local executor can do."""
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, metavar="N", help=THREADS_HELP)
    parser.add_argument("--train-limit", type=int, metavar="N",
                        help="train on the first N training images only, a smoke run (default: all 60,000)")
    parser.add_argument("--data-dir", type=Path, metavar="DIR", help=DATA_DIR_HELP)
    parser.add_argument("--out", type=Path, metavar="DIR", help=f"run folder (default: {out_default})")
    parser.add_argument("--job-timeout", type=float, default=900.0, metavar="S",
                        help="seconds without an event from a job before it is killed and recorded failed "
                             "(default: 900)")
    parser.add_argument("--jobs", type=int, default=1, metavar="N",
                        help=jobs_help or "local executor: run up to N jobs at once; their timings then share the "
                                          "machine (default: 1)")
    parser.add_argument("--executor", choices=EXECUTORS, default=EXECUTORS[0],
                        help="local: worker processes on this machine; ray: one Ray task per job, on a local Ray or "
                             f"the cluster of --ray-address (default: {EXECUTORS[0]})")
    parser.add_argument("--ray-address", metavar="ADDR",
                        help="a running Ray cluster's head, host:port (default: none; --executor ray then starts a "
                             "local Ray for the run)")


def add_target_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--target-acc", type=float, default=TARGET_ACC, metavar="ACC",
                        help="validation accuracy for the time to target: summary.csv's seconds_to_target and the "
                             "report give the training seconds, first epoch included, until val_acc first reaches "
                             f"ACC, none where it never does (default: {TARGET_ACC:g})")


def add_resume_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--resume", action="store_true",
                        help="continue the run folder --out: reuse its finished jobs, rerun the rest (default: off)")
    parser.add_argument("--force", action="store_true",
                        help="with --resume: rerun every job, reuse none (default: off)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the jobs (and with --resume which are reused), then exit without running "
                             "(default: off)")


def validate_run_options(args: argparse.Namespace) -> None:
    """The checks of ``add_run_options``' values that argparse cannot make; a UsageError names the flag."""
    if args.threads < 1:
        raise UsageError(f"--threads must be at least 1, got {args.threads}")
    if args.job_timeout <= 0:
        raise UsageError(f"--job-timeout must be positive, got {args.job_timeout}")
    if args.jobs < 1:
        raise UsageError(f"--jobs must be at least 1, got {args.jobs}")
    target = getattr(args, "target_acc", TARGET_ACC)  # training runs only (add_target_option)
    if not (isinstance(target, (int, float)) and 0 < target <= 1):
        raise UsageError(f"--target-acc must be an accuracy in (0, 1], got {target}")
    if args.executor == "ray":
        if args.jobs != 1:
            raise UsageError("--jobs is for the local executor; on Ray as many jobs run at once as the cluster's "
                             "CPUs hold (drop --jobs)")
        if importlib.util.find_spec("ray") is None:
            raise UsageError("--executor ray needs Ray: pip install ray==2.60.0 (or pip install '.[ray]')")
    elif args.ray_address:
        raise UsageError("--ray-address goes with --executor ray")
    resume = getattr(args, "resume", False)  # the training command's flags (add_resume_options)
    if getattr(args, "force", False) and not resume:
        raise UsageError("--force goes with --resume (it reruns every job of the run folder)")
    if resume and args.out is None:
        raise UsageError("--resume needs --out naming the run folder to continue")


def check_train_limit(train_limit: int | None, training_examples: int) -> None:
    if train_limit is not None and train_limit > training_examples:
        raise UsageError(f"--train-limit {train_limit} is larger than the training set ({training_examples:,} "
                         f"examples); lower it or leave it out")


def modes_of(choice: str) -> tuple[str, ...]:
    return MODES if choice == "all" else (choice,)


def tunings_of(choice: str) -> tuple[str, ...]:
    return TUNINGS if choice == "all" else (choice,)
