"""``python harness.py compare RUN_A RUN_B``: did B change accuracy or time against A, beyond the noise?

Matches the two run folders' jobs on (backend, impl, mode, variant, seed, tier) and writes ``compare.md``,
``compare.csv`` and ``compare_accuracy.csv`` (``experiments.compare``); prints one paragraph of verdict. Exit status
(``EXIT_STATUS``): 0 without ``--fail-above``, or when its gate passes; 1 when a job got slower by more than PCT %
beyond the noise or a group's accuracy dropped beyond the seed noise (a CI gate); 3 when nothing failed but the
samples cannot judge a job's time (too few steady epochs, or a slowdown beyond PCT % that is not significant): the
gate fails closed instead of passing; 2 for folders that are not whole runs (a missing, cut, edited or foreign
table) or share no job, and for a bad flag.
"""
from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

from experiments import compare
from experiments.options import Parser, UsageError

EXIT_STATUS = {None: 0, "pass": 0, "fail": 1, "cannot judge": 3}  # the gate's outcome (compare.verdict) -> status
EPILOG = """exit status:
  0  no --fail-above, or its gate passed
  1  the gate failed: a job slower by more than PCT % beyond the noise, or an accuracy drop beyond the seed noise
  3  the samples cannot judge a job's time (fewer than two steady epochs a side, or a slowdown beyond PCT % that
     is not significant): the gate fails closed instead of passing
  2  a folder that is not a whole run (missing, cut, edited or foreign table), no shared job, or a bad flag
time test: Student's t on the logs of the steady epochs' times (epochs 2..E), Holm-adjusted over the jobs

examples:
  python harness.py compare results/d2l-A results/d2l-B                      # two training runs
  python harness.py compare results/bench-A results/bench-B --fail-above 10  # a CI gate on two benches
  python harness.py compare results/scale-A/batch-256 results/scale-B/batch-256   # one size of two scaling runs"""


def build_parser() -> Parser:
    parser = Parser(prog="python harness.py compare", description="Compare two run folders (training or bench "
                    "runs): accuracy B - A paired by seed, steady epoch time B / A against the epochs' noise.",
                    epilog=EPILOG)
    parser.add_argument("run_a", type=Path, metavar="RUN_A", help="the reference run folder")
    parser.add_argument("run_b", type=Path, metavar="RUN_B", help="the run folder compared with it")
    parser.add_argument("--fail-above", type=float, metavar="PCT",
                        help="exit 1 when a job got slower by more than PCT %% beyond the noise, or a group's "
                             "accuracy dropped beyond the seed noise; 3 when a job's time cannot be judged "
                             "(default: no gate, exit 0)")
    parser.add_argument("--out", type=Path, metavar="DIR", help="output folder (default: results/compare-<timestamp>)")
    return parser


def run(args: argparse.Namespace, argv: list[str]) -> int:
    if args.fail_above is not None and not (math.isfinite(args.fail_above) and args.fail_above >= 0):
        raise UsageError(f"--fail-above must be a percentage >= 0, got {args.fail_above}")
    comparison = compare.compare(compare.load_run(args.run_a), compare.load_run(args.run_b), args.fail_above)
    out = args.out or Path("results") / f"compare-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)
    paragraph, outcome = compare.verdict(comparison, args.fail_above)
    comparison.jobs.to_csv(out / "compare.csv", index=False)
    comparison.accuracy.to_csv(out / "compare_accuracy.csv", index=False)
    compare.write_markdown(out / "compare.md", comparison, paragraph)
    for side, only in (("A", comparison.only_a), ("B", comparison.only_b)):
        for key in only:
            print(f"only in {side}: {' '.join(map(str, key))}")
    print(paragraph)
    print(f"results in {out}/ (compare.md, compare.csv, compare_accuracy.csv)")
    return EXIT_STATUS[outcome]
