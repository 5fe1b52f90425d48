#!/usr/bin/env bash
# Regenerates docs/samples/, the committed samples of real output that the README's headline points at:
#   docs/samples/run/    a full training run as `make run` makes it, with three seeds: every backend x mode, the stock
#                        tier, 10 epochs, seeds 0 1 2 (report.md, its figure, summary.csv, epochs.csv, meta.json)
#   docs/samples/bench/  a bench of every backend x mode x tier in 3 rounds, each job one steady epoch of 20,000
#                        training images and no noise-off twin (bench.md, bench.csv, bench.png, rounds.csv,
#                        meta.json): the default bench of all five backends takes over an hour on two cores
#   docs/samples/README.md  what made them, on which machine (the CPU named), how long each took, and the headline
#                        table in the README's format, read from the two folders
# Run it from anywhere, on an otherwise idle machine (other load shows up in every timing): it sets up first as
# `make run` does, then trains and benches, which takes a while (the run has 27 jobs, the bench several rounds of
# every backend x mode x tier). The full run folders stay under results/samples-<timestamp>/.
#   scripts/make-samples.sh                  # PYTHON=... to use another interpreter than .venv/bin/python
#   SAMPLES_WORK=results/samples-<timestamp> scripts/make-samples.sh   # go on in that folder: a step that finished
#                                                                       # there (its <step>.seconds) is not rerun
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-.venv/bin/python}
work=${SAMPLES_WORK:-results/samples-$(date +%Y%m%d-%H%M%S)}
samples=docs/samples

make setup
mkdir -p "$work"

timed() {  # timed NAME COMMAND...: run it, keep its console output, record its wall seconds; stop on failure
  local name=$1 start=$SECONDS status=0
  shift
  if [ -f "$work/$name.seconds" ]; then
    echo "== $name: finished before in $work, kept"
    return 0
  fi
  echo "== $name: $*"
  "$@" 2>&1 | tee "$work/$name.console.txt" || status=$?
  if [ "$status" -ne 0 ]; then
    echo "make-samples: $name exited $status; docs/samples/ is left as it was (see $work/)" >&2
    exit "$status"
  fi
  echo $((SECONDS - start)) > "$work/$name.seconds"
}

timed run "$py" harness.py --backend all --mode all --tuning stock --epochs 10 --seeds 0 1 2 --out "$work/run"
[ -f "$work/bench.seconds" ] || rm -rf "$work/bench"  # a bench cut short begins again
timed bench "$py" harness.py bench --rounds 3 --repeats 1 --train-limit 20000 --no-noise-off --out "$work/bench"

# Replace the samples only once both runs finished whole.
rm -rf "$samples/run" "$samples/bench"
mkdir -p "$samples/run" "$samples/bench"
copy() {  # copy FROM TO FILE...: the files that exist, and every file FROM's markdown links to
  local from=$1 to=$2
  shift 2
  for name in "$@"; do
    if [ -f "$from/$name" ]; then cp "$from/$name" "$to/"; fi
  done
  for page in "$from"/*.md; do
    [ -f "$page" ] || continue
    { grep -o '](\([^)#]*\))' "$page" || true; } | sed 's/^](\(.*\))$/\1/' | while read -r link; do
      if [ -n "$link" ] && [ "${link#*/}" = "$link" ] && [ -f "$from/$link" ]; then cp "$from/$link" "$to/"; fi
    done
  done
  return 0
}
copy "$work/run" "$samples/run" report.md learning_curves.png summary.csv epochs.csv meta.json
copy "$work/bench" "$samples/bench" bench.md bench.csv rounds.csv bench.png breakdown.csv breakdown_rounds.csv \
  breakdown.png meta.json

"$py" - "$work" "$samples" <<'EOF'
"""Undate the copied meta.json files (their wall time stays), and write docs/samples/README.md: the commands, the
machine, the wall times and the README's headline table read from the two folders."""
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pandas as pd

work, samples = Path(sys.argv[1]), Path(sys.argv[2])
seconds = {name: int((work / f"{name}.seconds").read_text()) for name in ("run", "bench")}
for name in ("run", "bench"):
    path = samples / name / "meta.json"
    meta = json.loads(path.read_text())
    for key in ("started", "finished"):
        meta.pop(key, None)
    meta["wall_seconds"] = seconds[name]
    path.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
meta = json.loads((samples / "run" / "meta.json").read_text())
try:
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    cpu = next(line.split(":", 1)[1].strip() for line in lscpu.splitlines() if line.startswith("Model name"))
except (OSError, subprocess.CalledProcessError, StopIteration):
    cpu = meta.get("cpu") or platform.processor()


def fmt(values, how: str, digits: int) -> str:
    """The mean or the median over the seeds; none where no seed has a value (a target never reached), and how many
    seeds have one where only some do (as the report writes it)."""
    present = pd.to_numeric(values, errors="coerce").dropna()
    if present.empty:
        return "none"
    shown = f"{getattr(present, how)():.{digits}f}"
    return shown if len(present) == len(values) else f"{shown} ({len(present)}/{len(values)} seeds)"


summary = pd.read_csv(samples / "run" / "summary.csv")
summary = summary[summary["status"] == "ok"]
bench = pd.read_csv(samples / "bench" / "bench.csv")
rows = []
for backend in ("numpy", "torch", "jax", "tensorflow", "mxnet"):
    cells = []
    for column, how, digits in (("final_val_acc", "mean", 4), ("seconds_to_target", "median", 1),
                                ("median_epoch_seconds", "median", 2)):
        modes = []
        for mode in ("eager", "compiled"):
            jobs = summary[(summary["backend"] == backend) & (summary["mode"] == mode)]
            modes.append(fmt(jobs[column], how, digits) if len(jobs) else "-")
        cells.append(" / ".join(modes))
    mode = "eager" if backend == "numpy" else "compiled"
    ratios = []
    for tuning in ("stock", "tuned"):
        tier = bench["tuning"] == tuning if "tuning" in bench else True
        row = bench[(bench["backend"] == backend) & (bench["mode"] == mode) & tier]
        ratio = pd.to_numeric(row["ratio_to_floor"], errors="coerce").dropna() if len(row) else pd.Series(dtype=float)
        ratios.append(f"{ratio.iloc[0]:.2f}" if len(ratio) else "-")
    cells.append(" / ".join(ratios) + (" (eager)" if backend == "numpy" else ""))
    rows.append(f"| {backend} | " + " | ".join(cells) + " |")

versions = ", ".join(f"{k} {v}" for k, v in sorted((meta.get("frameworks") or {}).items()))
threads = meta.get("threads")
text = f"""# Samples of real output

Made by `scripts/make-samples.sh`; rerun it to regenerate them on another machine.

- `run/`: `python harness.py --backend all --mode all --tuning stock --epochs 10 --seeds 0 1 2` (what `make run`
  does, with three seeds): its `report.md`, the learning curves, `summary.csv`, `epochs.csv` and `meta.json`.
  Wall time: {seconds['run'] // 60} min {seconds['run'] % 60} s.
- `bench/`: `python harness.py bench --rounds 3 --repeats 1 --train-limit 20000 --no-noise-off` (every backend x
  mode x tier, 3 rounds of one steady epoch of 20,000 images each, no noise-off twins: the default bench of all five
  backends takes over an hour on two cores): `bench.md`, `bench.csv`, `bench.png`, `rounds.csv` and `meta.json`.
  Wall time: {seconds['bench'] // 60} min {seconds['bench'] % 60} s.

Machine: {cpu}, {meta.get('cpu_count')} cores, {threads} threads per job; Python {meta.get('python')}, NumPy
{meta.get('numpy')}; {versions}; dropbench {meta.get('dropbench_version')}.

The README's headline, from these two folders (accuracy: the mean over the seeds; seconds to 0.84 and the steady
epoch: the median over the seeds; x floor: the bench's median over its rounds):

| backend | val acc after 10 epochs, eager / compiled | s to 0.84 acc, eager / compiled | steady epoch s, eager / compiled | bench x floor, compiled: stock / tuned |
| --- | --- | --- | --- | --- |
""" + "\n".join(rows) + "\n"
(samples / "README.md").write_text(text)
print(text)
EOF

if grep -rl "UTC" "$samples" >/dev/null 2>&1; then
  echo "make-samples: a file under $samples names UTC (the docs hold no dated runs):" >&2
  grep -rl "UTC" "$samples" >&2
  exit 1
fi
echo "make-samples: docs/samples/ regenerated (full folders in $work/); put its headline table into README.md"
