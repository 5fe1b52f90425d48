#!/usr/bin/env bash
# The GPU checks of dropbench, for a machine with one NVIDIA GPU and torch/jax (no TF, no MXNet needed): run from the
# checkout's root with that machine's python3, e.g.
#     scripts/gpu-check.sh "$OUT" .gpu-data        # .gpu-data: the four Fashion-MNIST files, carried along
# It writes every step's log and results under OUT and prints a summary; a missing framework gives rows that say
# so (the harness's unavailable rows), never an abort. Each step has its own time limit so the whole stays within
# about 9 minutes.
set -uo pipefail
out=${1:?usage: scripts/gpu-check.sh OUT_DIR [DATA_DIR]}
data=${2:-${FASHION_MNIST_DIR:-.gpu-data}}
py=${PYTHON:-python3}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 HARNESS_TEST_BACKENDS=torch,jax
summary="$out/summary.txt"
: > "$summary"

step() {  # step NAME SECONDS COMMAND...: run with a limit, keep the log, record the exit status
  local name=$1 limit=$2
  shift 2
  local start=$SECONDS
  echo "== $name: $*"
  timeout -k 10 "$limit" "$@" > "$out/$name.log" 2>&1
  local code=$?
  echo "$name: exit $code in $((SECONDS - start)) s" | tee -a "$summary"
  tail -n 25 "$out/$name.log"
}

step nvidia-smi 30 nvidia-smi
step versions 60 "$py" -c "import sys, importlib
for name in ('torch', 'jax', 'jaxlib', 'flax', 'optax', 'numpy'):
    try:
        module = importlib.import_module(name); print(name, module.__version__)
    except ImportError as exc:
        print(name, 'missing:', exc)
try:
    import torch; print('torch cuda', torch.version.cuda, torch.cuda.is_available(), torch.cuda.get_device_name(0))
except Exception as exc:
    print('torch cuda: no', exc)
try:
    import jax; print('jax devices', jax.devices())
except Exception as exc:
    print('jax devices: none', exc)"
step cuda-tests 120 "$py" -m pytest -q -p no:cacheprovider tests/test_torch_backend.py tests/test_jax_backend.py \
  -k "cuda or gpu or device"
step parity-gpu 150 "$py" harness.py parity --backend torch --backend jax --mode all --device gpu \
  --data-dir "$data" --out "$out/parity"
step bench-gpu 200 "$py" harness.py bench --device gpu --backend torch --backend jax --mode all \
  --data-dir "$data" --out "$out/bench" --no-noise-off
step train-gpu 150 "$py" harness.py --backend torch --backend jax --mode all --device gpu --epochs 10 --seeds 0 \
  --data-dir "$data" --out "$out/train"

echo
echo "== summary"
cat "$summary"
for table in "$out/bench/bench.md" "$out/parity/parity.md" "$out/train/report.md"; do
  [ -f "$table" ] && { echo; echo "== $table"; sed -n 1,60p "$table"; }
done
