"""The benchmark mode runs end to end, writes its files with the documented columns, and its numbers are sane.

Timings are never compared with thresholds here: only what must hold whatever the machine's load (positive times,
ratio = median / floor, IQR >= 0, a harness share in [0, 1)).
"""
import json
import math
import subprocess
import sys

import pytest

import backends
from experiments import cli, stats
from experiments.bench import floor as bench_floor
from tests.helpers import read_csv

HARNESS = [sys.executable, str(backends.PROJECT_ROOT / "harness.py")]
DOCUMENTED = ["backend", "mode", "device", "status", "error", "framework_version", "threads", "import_seconds",
              "build_seconds", "first_epoch_seconds", "steady_median_seconds", "steady_iqr_seconds",
              "samples_per_second", "eval_seconds", "peak_rss_mb", "harness_seconds", "harness_fraction",
              "floor_seconds", "ratio_to_floor"]


def test_flop_formula_equals_the_hand_count_for_the_d2l_mlp():
    b = 256
    forward = 2 * b * 784 * 256 + 2 * b * 256 * 256 + 2 * b * 256 * 10
    kernel_grads = 2 * 256 * b * 10 + 2 * 256 * b * 256 + 2 * 784 * b * 256  # X^T dZ: (in x B) @ (B x out)
    input_grads = 2 * b * 10 * 256 + 2 * b * 256 * 256 + 2 * b * 256 * 784  # dZ W^T, layers 3, 2 and 1
    assert bench_floor.step_flops((784, 256, 256, 10), b) == forward + kernel_grads + input_grads == 3 * forward
    assert sum(g["flops"] for g in bench_floor.step_gemms((784, 256, 256, 10), b)) == forward + kernel_grads + input_grads
    assert len(bench_floor.step_gemms((784, 256, 256, 10), b)) == 9
    assert bench_floor.epoch_flops((784, 256, 256, 10), 60_000) == 1_612_800 * 60_000  # 96.8 GFLOP
    # baselines.md's 96.6 GFLOP is the same count over its 234 full batches (bare_loops.py drops the partial batch)
    assert round(bench_floor.epoch_flops((784, 256, 256, 10), 234 * 256) / 1e9, 1) == 96.6


def test_quartiles_match_numpy():
    import numpy as np

    values = [0.9, 1.3, 1.0, 1.1, 2.5]
    median, q1, q3 = stats.quartiles(values)
    assert (median, q1, q3) == pytest.approx((np.median(values), *np.percentile(values, [25, 75])))
    assert stats.quartiles([1.5]) == (1.5, 1.5, 1.5)


@pytest.fixture(scope="module")
def numpy_bench(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "run"
    result = subprocess.run([*HARNESS, "bench", "--backend", "numpy", "--repeats", "2", "--train-limit", "3000",
                             "--threads", "1", "--out", str(out)], capture_output=True, text=True,
                            cwd=backends.PROJECT_ROOT, timeout=900)
    assert result.returncode == 0, result.stderr
    return out, result


def test_numpy_bench_writes_its_files_with_the_documented_columns(numpy_bench):
    out, result = numpy_bench
    for name in ("bench.csv", "bench.md", "bench.png", "meta.json", "timings.csv", "epochs.csv", "summary.csv"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    rows = read_csv(out / "bench.csv")
    assert set(DOCUMENTED) <= set(rows[0])
    assert [(r["backend"], r["mode"], r["status"]) for r in rows] == [("numpy", "eager", "ok")]
    meta = json.loads((out / "meta.json").read_text())
    assert meta["threads"] == 1 and meta["device"] == "cpu" and meta["cpu"]
    assert meta["bench"]["repeats"] == 2 and meta["bench"]["epochs_per_job"] == 3
    assert meta["floor"]["statistic"] == "median" and meta["blas"]
    assert meta["floor"]["environment"]["OPENBLAS_NUM_THREADS"] == "1"  # the jobs' thread count, before import
    assert "numpy" in meta["frameworks"]
    markdown = (out / "bench.md").read_text()
    assert "| backend | mode | steady s" in markdown and "x floor" in markdown and "BLAS:" in markdown
    assert "numpy" in result.stdout and "floor:" in result.stdout  # the table on the console
    assert len(read_csv(out / "timings.csv")) == 3  # the harness's own timings, one row per epoch


def test_numpy_bench_numbers_are_sane(numpy_bench):
    out, _ = numpy_bench
    (row,) = read_csv(out / "bench.csv")
    number = {k: float(row[k]) for k in DOCUMENTED if k not in ("backend", "mode", "device", "status", "error",
                                                                "framework_version")}
    assert number["threads"] == 1 and int(row["steady_epochs"]) == 2 and int(row["n_train"]) == 3000
    for key in ("import_seconds", "build_seconds", "first_epoch_seconds", "steady_median_seconds", "eval_seconds",
                "samples_per_second", "peak_rss_mb", "floor_seconds", "ratio_to_floor", "harness_seconds"):
        assert number[key] > 0 and math.isfinite(number[key]), key
    assert number["steady_iqr_seconds"] >= 0
    assert float(row["steady_q1_seconds"]) <= number["steady_median_seconds"] <= float(row["steady_q3_seconds"])
    assert number["ratio_to_floor"] == pytest.approx(number["steady_median_seconds"] / number["floor_seconds"],
                                                     rel=1e-12)
    assert number["samples_per_second"] == pytest.approx(3000 / number["steady_median_seconds"], rel=1e-12)
    assert 0 <= number["harness_fraction"] < 1
    epochs = read_csv(out / "epochs.csv")
    steady = sorted(float(e["epoch_seconds"]) for e in epochs[1:])
    assert number["steady_median_seconds"] == pytest.approx(sum(steady) / 2, rel=1e-12)
    meta = json.loads((out / "meta.json").read_text())
    floor = meta["floor"]
    assert number["floor_seconds"] == pytest.approx(3000 / 256 * floor["step_seconds"], rel=1e-12)
    assert floor["step_seconds"] == pytest.approx(sum(g["median_seconds"] for g in floor["gemms"]), rel=1e-12)
    assert all(g["best_seconds"] <= g["median_seconds"] for g in floor["gemms"])
    assert [m["when"] for m in floor["measurements"]] == ["before numpy eager", "after the last job"]
    assert all(len(g["samples"]) == floor["rounds"] == 2 * bench_floor.FLOOR_ROUNDS for g in floor["gemms"])


def test_the_floor_pools_the_rounds_of_its_measurements():
    def measured(seconds: list[float]) -> dict:
        gemms = [dict(name=f"g{i}", flops=1e9, samples=list(seconds)) for i in range(2)]
        return {**bench_floor._summarize(gemms), "rounds": len(seconds)}

    floor = bench_floor.pool_floors([measured([1.0, 1.0, 1.5]), measured([3.0, 3.0, 2.5])], ["a", "b"])
    assert [g["median_seconds"] for g in floor["gemms"]] == [2.0, 2.0]  # median of the six pooled rounds
    assert floor["step_seconds"] == 4.0 and floor["rounds"] == 6 and floor["step_seconds_best"] == 2.0
    assert [(m["when"], m["step_seconds"]) for m in floor["measurements"]] == [("a", 2.0), ("b", 6.0)]
    assert floor["drift"] == pytest.approx(2.0)
    alone = bench_floor.pool_floors([measured([1.0, 2.0, 3.0]), None], ["a", "b"])  # the second measurement failed
    assert alone["step_seconds"] == 4.0 and [m["when"] for m in alone["measurements"]] == ["a"]
    assert bench_floor.pool_floors([None], ["a"]) is None


def test_unavailable_backend_and_missing_mode_give_rows_not_failures(tmp_path, monkeypatch):
    monkeypatch.setenv("DROPBENCH_MXNET_PYTHON", str(tmp_path / "no-such-python"))
    backends.framework_version.cache_clear()
    try:
        out = tmp_path / "run"
        code = cli.main(["bench", "--backend", "mxnet", "--backend", "numpy", "--mode", "compiled", "--repeats", "1",
                           "--train-limit", "512", "--threads", "1", "--out", str(out)])
    finally:
        backends.framework_version.cache_clear()
    assert code == 1  # nothing could run, but the run finished and wrote its files
    rows = {(r["backend"], r["mode"]): r for r in read_csv(out / "bench.csv")}
    assert rows[("mxnet", "compiled")]["status"] == "unavailable"
    assert "make mxnet-venv" in rows[("mxnet", "compiled")]["error"]  # the install command
    assert rows[("numpy", "compiled")]["status"] == "unavailable"
    assert "numpy has no compiled mode" in rows[("numpy", "compiled")]["error"]
    assert float(rows[("numpy", "compiled")]["floor_seconds"]) > 0  # the floor is measured all the same
    assert (out / "bench.md").is_file() and (out / "meta.json").is_file()


def test_gpu_on_a_backend_without_one_is_an_unavailable_row(tmp_path):
    out = tmp_path / "run"
    code = cli.main(["bench", "--backend", "numpy", "--device", "gpu", "--repeats", "1", "--train-limit", "512",
                       "--threads", "1", "--out", str(out)])
    assert code == 1
    (row,) = read_csv(out / "bench.csv")
    assert row["status"] == "unavailable" and row["device"] == "gpu"
    assert row["error"].startswith("numpy has no gpu device"), row["error"]


@pytest.mark.parametrize("args,words", [
    (["--repeats", "0"], ["--repeats"]),
    (["--backend", "nosuch"], ["nosuch"]),
    (["--mode", "fast"], ["--mode"]),
])
def test_bad_bench_flags_are_one_line_and_status_2(args, words):
    result = subprocess.run([*HARNESS, "bench", *args], capture_output=True, text=True, cwd=backends.PROJECT_ROOT,
                            timeout=120)
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: ") and all(w in line for w in words), line
