"""``python harness.py parity``: the parity ladder on this machine, every backend against the NumPy float64 oracle.

The same rungs as tests/test_parity.py (``experiments.parity``), run in this process (MXNet behind its venv's worker),
written as ``parity.csv``, ``parity.md`` and ``parity.png``. Exit status 0 when every rung passed, 1 when one failed
(named on the console) or when nothing could be checked (every backend unavailable), 2 for a bad flag.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from backends import registry
from backends.contract.spec import IMPLS, NOISE_KINDS, TUNINGS
from experiments import data
from experiments.options import (
    DATA_DIR_HELP, THREADS_HELP, Parser, UsageError, add_backend_option, add_device_option, add_mode_option,
    add_tuning_option, modes_of, tunings_of,
)
from experiments.parity import ladder
from experiments.parity.factory import BackendFactory
from experiments.parity.output import machine_line, write_chart, write_csv, write_markdown
from experiments.parity.session import Selection, failures, run_backend
from experiments.running.rundir import RunFolder, run_metadata

MAX_STEPS = 234  # consecutive batches of 256 in the 60,000 training images


EPILOG = """\
The rungs, their tolerances and why: docs/parity.md.

exit status:
  0  every rung passed
  1  a rung failed or raised (each named on the console), or nothing could be checked
  2  a usage error, one line on stderr

examples:
  python harness.py parity                                   # every backend x tier x mode, all rungs
  python harness.py parity --backend torch --mode compiled   # one backend x mode
  python harness.py parity --backend jax --tuning stock --noise dropout   # a smaller slice
  python harness.py parity --backend jax --device gpu        # on a GPU, full float32 products
  python harness.py parity --backend jax --device gpu --allow-tf32        # what TF32 does to the errors"""


def build_parser() -> Parser:
    parser = Parser(prog="python harness.py parity", epilog=EPILOG, description="Check every backend against the "
                    "NumPy float64 oracle on this machine (the parity ladder of the tests) and write "
                    "parity.csv/.md/.png.")
    add_backend_option(parser, "default all, and a backend that is not installed gets a row that says so")
    parser.add_argument("--impl", choices=(*IMPLS, "all"), default="all",
                        help="concise: the framework's Dropout layer; scratch: the section's dropout_layer; all: both "
                             "(default: all)")
    add_mode_option(parser, "all")
    add_tuning_option(parser, "all")
    parser.add_argument("--noise", choices=(*NOISE_KINDS, "all"), default="all",
                        help="noise kind of the rungs that take one (default: all)")
    add_device_option(parser)
    parser.add_argument("--steps", type=int, default=ladder.DEFAULT_STEPS,
                        help=f"SGD steps of the trajectory rung, each checked, at most {MAX_STEPS} (default: "
                             f"{ladder.DEFAULT_STEPS})")
    parser.add_argument("--allow-tf32", action="store_true",
                        help="on --device gpu, let the frameworks use TF32 matmuls (default: off, full float32)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, metavar="N", help=THREADS_HELP)
    parser.add_argument("--data-dir", type=Path, metavar="DIR", help=DATA_DIR_HELP)
    parser.add_argument("--out", type=Path, metavar="DIR", help="output folder (default: results/parity-<timestamp>)")
    return parser


def selection(args: argparse.Namespace) -> Selection:
    if not 1 <= args.steps <= MAX_STEPS:
        raise UsageError(f"--steps must be between 1 and {MAX_STEPS}, got {args.steps}")
    if args.threads < 1:
        raise UsageError(f"--threads must be at least 1, got {args.threads}")
    if args.allow_tf32 and args.device != "gpu":
        raise UsageError("--allow-tf32 applies to --device gpu only (CPU matmuls are float32 in every framework)")
    return Selection(backends=registry.select(args.backend, installed_only=False), modes=modes_of(args.mode),
                     modes_named=args.mode != "all", impls=IMPLS if args.impl == "all" else (args.impl,),
                     noises=tuple(NOISE_KINDS) if args.noise == "all" else (args.noise,), device=args.device,
                     steps=args.steps, tunings=tunings_of(args.tuning))


def run(args: argparse.Namespace, argv: list[str], *, classes: dict[str, type] | None = None) -> int:
    """``classes``: backend classes to use instead of the registry's (a test's deliberately broken double)."""
    chosen = selection(args)
    fashion = data.load(data.locate(args.data_dir))
    out = args.out or Path("results") / f"parity-{time.strftime('%Y%m%d-%H%M%S')}"
    folder = RunFolder(out)
    versions = {name: registry.framework_version(name) for name in chosen.backends}
    meta = run_metadata(root=registry.PROJECT_ROOT, threads=args.threads, argv=argv, versions=versions)
    meta.update(started=time.strftime("%Y-%m-%dT%H:%M:%S%z"), device=args.device, allow_tf32=args.allow_tf32,
                steps=args.steps)
    print(f"parity: {', '.join(chosen.backends)} x {', '.join(chosen.tunings)} x {', '.join(chosen.modes)} on {args.device}, {args.threads} "
          f"threads, {args.steps} SGD steps; results: {out}", file=sys.stderr)
    rows: list[dict] = []
    # Full float32 on a GPU unless --allow-tf32; on the CPU the frameworks' settings are left as they are.
    allow_tf32 = args.allow_tf32 if args.device == "gpu" else None
    with BackendFactory(classes=classes, allow_tf32=allow_tf32, threads=args.threads) as make:
        for name in chosen.backends:
            rows.extend(run_backend(name, chosen, make, fashion))
            write_csv(out / "parity.csv", rows)
    meta.update(finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                matmul_precision={r["backend"]: r["matmul_precision"] for r in rows if r.get("matmul_precision")})
    folder.write_json("meta.json", meta)
    failed = failures(rows)
    write_markdown(out / "parity.md", rows, meta, failed)
    write_chart(out / "parity.png", rows, f"parity: SGD trajectory against the float64 oracle "
                f"({args.device}{', TF32 allowed' if args.allow_tf32 else ''})")
    checked = [r for r in rows if r["status"] != "unavailable"]
    for r in rows:
        if r["status"] == "unavailable":
            print(f"unavailable: {r['backend']} {r['tuning']} {r['mode']}: {r['detail']}")
    print(f"machine: {machine_line(meta)}")
    print(f"results in {out}/ (parity.csv, parity.md, parity.png, meta.json)")
    if failed:
        print(f"FAILED {len(failed)} rung(s):")
        print("\n".join(f"  {line}" for line in failed))
        return 1
    if not checked:
        print("nothing was checked: every backend x mode is unavailable here (rows above)")
        return 1
    print(f"every rung passed ({len(checked)} rows)")
    return 0
