"""``python harness.py compare RUN_A RUN_B``: did B change accuracy or time against A, beyond the noise?

Matches the two run folders' jobs on (backend, impl, mode, variant, seed) and writes ``compare.md``,
``compare.csv`` and ``compare_accuracy.csv`` (``experiments.compare``); prints one paragraph of verdict. With
``--fail-above PCT`` the exit status is 1 when a job got slower by more than PCT % beyond the noise or a group's
accuracy dropped beyond the seed noise (a CI gate); otherwise 0. Folders that are not runs, or share no job: 2.
"""
from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

from experiments import compare
from experiments.options import Parser, UsageError


def build_parser() -> Parser:
    parser = Parser(prog="python harness.py compare", description="Compare two run folders (training or bench "
                    "runs): accuracy B - A paired by seed, steady epoch time B / A with a Mann-Whitney U test.")
    parser.add_argument("run_a", type=Path, metavar="RUN_A", help="the reference run folder")
    parser.add_argument("run_b", type=Path, metavar="RUN_B", help="the run folder compared with it")
    parser.add_argument("--fail-above", type=float, metavar="PCT",
                        help="exit 1 when a job got slower by more than PCT %% beyond the noise, or a group's "
                             "accuracy dropped beyond the seed noise")
    parser.add_argument("--out", type=Path, help="output folder (default results/compare-<timestamp>)")
    return parser


def run(args: argparse.Namespace, argv: list[str]) -> int:
    if args.fail_above is not None and not (math.isfinite(args.fail_above) and args.fail_above >= 0):
        raise UsageError(f"--fail-above must be a percentage >= 0, got {args.fail_above}")
    comparison = compare.compare(compare.load_run(args.run_a), compare.load_run(args.run_b))
    out = args.out or Path("results") / f"compare-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)
    paragraph, failed = compare.verdict(comparison, args.fail_above)
    comparison.jobs.to_csv(out / "compare.csv", index=False)
    comparison.accuracy.to_csv(out / "compare_accuracy.csv", index=False)
    compare.write_markdown(out / "compare.md", comparison, paragraph)
    for side, only in (("A", comparison.only_a), ("B", comparison.only_b)):
        for key in only:
            print(f"only in {side}: {' '.join(map(str, key))}")
    print(paragraph)
    print(f"results in {out}/ (compare.md, compare.csv, compare_accuracy.csv)")
    return 1 if failed else 0
