"""The benchmark mode runs end to end, in rounds and for both tiers, writes its files with the documented columns,
and its numbers are sane.

Timings are never compared with thresholds here: only what must hold whatever the machine's load (positive times,
a round's ratio = its steady median / the floor timed beside its steady epochs, the medians over the rounds and their
intervals taken from those rows, a harness share in [0, 1)).
"""
import json
import math
import os
import re
import subprocess
import sys

import pytest

import backends
from experiments import cli
from experiments.report import stats
from experiments.bench import breakdown as bench_breakdown
from experiments.bench import floor as bench_floor
from experiments.bench import output as bench_output
from experiments.bench import scaling as bench_scaling
from tests.helpers import read_csv

HARNESS = [sys.executable, str(backends.PROJECT_ROOT / "harness.py")]
DOCUMENTED = ["backend", "mode", "tuning", "device", "status", "error", "framework_version", "threads", "rounds",
              "rounds_ok", "import_seconds", "build_seconds", "first_epoch_seconds", "steady_median_seconds",
              "steady_median_seconds_low", "steady_median_seconds_high", "samples_per_second", "eval_seconds",
              "peak_rss_mb", "harness_seconds", "harness_fraction", "floor_seconds", "ratio_to_floor",
              "ratio_to_floor_low", "ratio_to_floor_high", "floor_full_seconds", "ratio_to_full_floor", "peak_gflops",
              "floor_efficiency", "noise_off_seconds", "noise_seconds", "noise_seconds_low", "noise_seconds_high",
              "gain", "gain_low", "gain_high", "noise_draw_library", "noise_draw_seconds", "gemm_library",
              "gemm_gflops", "framework_gemm_seconds", "framework_gemm_gflops", "framework_gemm_to_floor"]
ROUND_DOCUMENTED = ["backend", "mode", "tuning", "round", "position", "status", "steady_median_seconds",
                    "steady_iqr_seconds", "floor_when", "floor_seconds", "ratio_to_floor", "noise_off_seconds",
                    "noise_seconds", "gain"]
TEXT = ("backend", "mode", "tuning", "device", "status", "error", "framework_version", "gemm_library",
        "noise_draw_library", "floor_when", "hiddens")

# Run under each backend's own interpreter (MXNet's venv too): the shapes of what its gemm_step_probe computes, and
# whether several rounds (a loop inside one program where the mode compiles) end with the one round's results.
PROBE_SCRIPT = """
import json, sys
import numpy as np
from backends import registry
from backends.contract.spec import ModelSpec, TrainSpec
from experiments.bench.floor import step_gemms
name, modes = sys.argv[1], sys.argv[2:]
probes = registry.load_probes(name)
products = [g for g in step_gemms((784, 24, 16, 10), 8) if g["necessary"]]
report = {}
for mode in modes:
    for tuning in ("stock", "tuned"):
        backend = registry.load_class(name, tuning)(model=ModelSpec(hiddens=(24, 16)),
                                                    train=TrainSpec(mode=mode, batch_size=8, tuning=tuning), threads=1)
        backend.build(seed=0)
        def run(rounds):
            return [np.asarray(r.asnumpy() if hasattr(r, "asnumpy") else r)
                    for r in probes.gemm_step_probe(backend, products=products, rounds=rounds)()]
        once, thrice = run(1), run(3)
        report[f"{mode} {tuning}"] = {
            "shapes": [list(r.shape) for r in once],
            "rounds_agree": all(np.array_equal(a, b) for a, b in zip(once, thrice)) and len(once) == len(thrice),
            "library": probes.gemm_library(backend, m=8, k=784, n=24)}
print(json.dumps(report))
"""


def test_flop_formula_equals_the_hand_count_for_the_d2l_mlp():
    b, sizes = 256, (784, 256, 256, 10)
    forward = 2 * b * 784 * 256 + 2 * b * 256 * 256 + 2 * b * 256 * 10
    kernel_grads = 2 * 256 * b * 10 + 2 * 256 * b * 256 + 2 * 784 * b * 256  # X^T dZ: (in x B) @ (B x out)
    input_grads = 2 * b * 10 * 256 + 2 * b * 256 * 256  # dZ W^T, layers 3 and 2: the images need no gradient
    first_input_grad = 2 * b * 256 * 784
    gemms = bench_floor.step_gemms(sizes, b)
    assert bench_floor.step_flops(sizes, b) == forward + kernel_grads + input_grads
    assert sum(g["flops"] for g in gemms if g["necessary"]) == forward + kernel_grads + input_grads
    assert [g["name"] for g in gemms if not g["necessary"]] == ["input grad 1: dZ1 W1^T"]
    assert len(gemms) == 9 and sum(g["necessary"] for g in gemms) == 8
    assert bench_floor.epoch_flops(sizes, 60_000) == 1_211_392 * 60_000  # 72.7 GFLOP
    # the old count, kept as the full floor: every layer's input gradient too, 3x forward
    full = forward + kernel_grads + input_grads + first_input_grad
    assert bench_floor.step_flops(sizes, b, full=True) == sum(g["flops"] for g in gemms) == full == 3 * forward
    assert bench_floor.epoch_flops(sizes, 60_000, full=True) == 1_612_800 * 60_000  # 96.8 GFLOP
    # baselines.md's 96.6 GFLOP is the full count over its 234 full batches (bare_loops.py drops the partial batch)
    assert round(bench_floor.epoch_flops(sizes, 234 * 256, full=True) / 1e9, 1) == 96.6


def test_the_necessary_floor_leaves_out_only_the_first_input_gradient_at_any_width():
    for sizes in ((784, 64, 10), (784, 512, 128, 32, 10)):
        gemms = bench_floor.step_gemms(sizes, 100)
        assert len(gemms) == 3 * (len(sizes) - 1)
        assert bench_floor.step_flops(sizes, 100, full=True) - bench_floor.step_flops(sizes, 100) == \
            2 * 100 * sizes[0] * sizes[1] == sum(g["flops"] for g in gemms if not g["necessary"])


def test_a_floor_measured_without_a_variable_runs_without_it(monkeypatch):
    """``unset`` keeps a variable of this environment out of the floor's process (and only that one). The bench
    unsets ``OPENBLAS_CORETYPE`` that way; the test unsets ``OPENBLAS_VERBOSE`` (set to OpenBLAS's default), since no
    test may change the kernels OpenBLAS runs."""
    monkeypatch.setenv("OPENBLAS_VERBOSE", "1")
    named = bench_floor.measure_floor(threads=1, sizes=(24, 8, 4), batch=16, rounds=1, calls=1)
    own = bench_floor.measure_floor(threads=1, sizes=(24, 8, 4), batch=16, rounds=1, calls=1,
                                    unset=("OPENBLAS_VERBOSE",))
    assert named["environment"]["OPENBLAS_VERBOSE"] == "1" and own["environment"]["OPENBLAS_VERBOSE"] is None
    assert own["environment"]["OPENBLAS_NUM_THREADS"] == named["environment"]["OPENBLAS_NUM_THREADS"] == "1"
    assert own["environment"]["OPENBLAS_CORETYPE"] == named["environment"]["OPENBLAS_CORETYPE"] == \
        os.environ.get("OPENBLAS_CORETYPE")


def test_the_paragraph_on_openblas_own_kernels_is_there_only_where_the_environment_names_them():
    own = {"unset": "OPENBLAS_CORETYPE", "set_to": "Haswell", "blas_line": "OpenBLAS 0.3 (SkylakeX, 1 thread)",
           "floor_seconds": 0.5, "gflops": 120.0, "peak_gflops": 150.0, "ratio_to_floor": 0.8}
    assert bench_output.own_kernels_lines(None) == []
    text = " ".join(bench_output.own_kernels_lines(own))
    assert "OPENBLAS_CORETYPE=Haswell in this environment names the floor's BLAS kernels" in text
    assert "0.80x the floor above" in text and "1.25 times as high" in text


def test_the_full_and_necessary_floors_and_the_peak_come_from_one_measurement():
    gemms = [dict(name=f"g{i}", flops=2e9, necessary=i > 0, samples=[1.0, 2.0, 3.0]) for i in range(3)]
    floor = bench_floor._summarize(gemms, [1e11, 2e11, 4e11])
    assert floor["step_seconds"] == 4.0 and floor["step_seconds_full"] == 6.0
    assert floor["step_flops"] == 4e9 and floor["step_flops_full"] == 6e9 and floor["gflops"] == 1.0
    assert floor["peak_gflops"] == 200.0 and floor["peak_gflops_best"] == 400.0
    assert floor["efficiency"] == pytest.approx(1.0 / 200.0)
    assert bench_floor.floor_seconds(floor, 1000, 100) == 40.0
    assert bench_floor.floor_seconds(floor, 1000, 100, full=True) == 60.0


def test_vector_isa_reads_the_widest_extension_from_cpuinfo():
    assert bench_floor.vector_isa("processor: 0\nflags\t: fpu sse2 avx avx2 fma avx512f avx512bw\n") == "AVX-512"
    assert bench_floor.vector_isa("flags : fpu sse2 avx avx2 fma\n") == "AVX2"
    assert bench_floor.vector_isa("flags : fpu\n") == "unknown"


def test_the_fit_recovers_t0_and_k_from_synthetic_timings():
    gemm = [0.1e-3, 0.2e-3, 0.4e-3, 0.8e-3, 1.6e-3, 3.2e-3]
    t0, k = 250e-6, 1.3
    exact = bench_scaling.fit_step_times(gemm, [t0 + k * g for g in gemm])
    assert exact["t0_seconds"] == pytest.approx(t0, rel=1e-9) and exact["k"] == pytest.approx(k, rel=1e-9)
    assert max(abs(r) for r in exact["residuals"]) < 1e-9 and exact["sizes"] == 6
    wobble = [1.02, 0.98, 1.01, 0.99, 1.015, 0.985]  # +-2 % on every step: the fit stays near, residuals show it
    noisy = bench_scaling.fit_step_times(gemm, [(t0 + k * g) * w for g, w in zip(gemm, wobble)])
    assert noisy["t0_seconds"] == pytest.approx(t0, rel=0.1) and noisy["k"] == pytest.approx(k, rel=0.05)
    assert 0.005 < max(abs(r) for r in noisy["residuals"]) < 0.05
    assert bench_scaling.fit_step_times([1e-3], [2e-3]) is None  # one size: nothing to fit


def test_the_fit_of_every_backend_mode_and_tier_annotates_its_rows():
    rows = [dict(backend="x", mode=m, tuning=t, batch_size=b, step_seconds=t0 + 2.0 * b * 1e-6,
                 floor_step_seconds=b * 1e-6)
            for m, t, t0 in (("eager", "stock", 1e-3), ("eager", "tuned", 5e-4), ("compiled", "tuned", 1e-4))
            for b in (64, 256, 1024)]
    rows.append(dict(backend="y", mode="eager", tuning="stock", batch_size=64, step_seconds=None,
                     floor_step_seconds=64e-6))
    fits = bench_scaling.fit_all(rows)
    assert set(fits) == {("x", "eager", "stock"), ("x", "eager", "tuned"), ("x", "compiled", "tuned")}  # y: no time
    assert fits[("x", "eager", "stock")]["t0_seconds"] == pytest.approx(1e-3)
    assert fits[("x", "eager", "tuned")]["t0_seconds"] == pytest.approx(5e-4)  # the tiers are fitted apart
    assert fits[("x", "compiled", "tuned")]["k"] == pytest.approx(2.0)
    assert all(r["fit_step_seconds"] == pytest.approx(r["step_seconds"]) for r in rows[:9])
    assert "| x | eager | stock | 1000 | 2.00 |" in "\n".join(bench_scaling.fit_lines(rows, fits))


def test_each_round_is_fitted_on_its_own_figures_at_every_size():
    from types import SimpleNamespace

    def size(batch, t0_by_round):
        rows = [dict(backend="x", mode="eager", tuning="stock", round=r, status="ok", batch_size=batch,
                     steady_median_seconds=(t0 + 2.0 * batch * 1e-6) * 1000 / batch, floor_seconds=1e-3 * 1000)
                for r, t0 in t0_by_round.items()]
        for row in rows:  # the floor beside the job: batch us a step
            row["floor_seconds"] = batch * 1e-6 * 1000 / batch
        return SimpleNamespace(batch=batch, n_train=1000, round_rows=rows)

    results = [size(b, {1: 1e-3, 2: 3e-3}) for b in (64, 256, 1024)]
    fits = bench_scaling.round_fits(results)
    assert fits[("x", "eager", "stock", 1)]["t0_seconds"] == pytest.approx(1e-3)
    assert fits[("x", "eager", "stock", 2)]["t0_seconds"] == pytest.approx(3e-3)


def test_the_breakdown_of_a_round_adds_up_to_its_epoch():
    row = dict(backend="x", mode="eager", tuning="tuned", round=1, batch_size=100, steady_median_seconds=2.0,
               floor_seconds=0.8, noise_seconds=0.3, noise_off_seconds=1.7, gemm_library="BLAS", gemm_gflops=50.0)
    with_fit = bench_breakdown.decompose(row, 10_000, {"t0_seconds": 2e-3, "k": 1.1})
    assert with_fit["fixed_seconds"] == pytest.approx(0.2) and with_fit["rest_seconds"] == pytest.approx(0.7)
    assert sum(with_fit[k] for k in ("floor_seconds", "noise_seconds", "fixed_seconds", "rest_seconds")) == \
        pytest.approx(with_fit["epoch_seconds"], rel=1e-12)
    alone = bench_breakdown.decompose(row, 10_000, None)
    assert not alone["fixed_measured"] and alone["fixed_seconds"] == 0 and alone["rest_seconds"] == pytest.approx(0.9)
    _, parts = bench_breakdown.breakdown_rows([row], 10_000, {}, None)
    text = "\n".join(bench_breakdown.breakdown_lines(parts, 100, 120.0))
    assert "not measured" in text and "BLAS" in text and "dropout alone" in text and "| x | eager | tuned |" in text
    assert bench_breakdown.decompose(dict(row, steady_median_seconds=None), 10_000, None) is None


def test_quartiles_match_numpy():
    import numpy as np

    values = [0.9, 1.3, 1.0, 1.1, 2.5]
    median, q1, q3 = stats.quartiles(values)
    assert (median, q1, q3) == pytest.approx((np.median(values), *np.percentile(values, [25, 75])))
    assert stats.quartiles([1.5]) == (1.5, 1.5, 1.5)


ROUNDS = 2


@pytest.fixture(scope="module")
def numpy_bench(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "run"
    result = subprocess.run([*HARNESS, "bench", "--backend", "numpy", "--rounds", str(ROUNDS), "--repeats", "2",
                             "--train-limit", "2000", "--threads", "1", "--out", str(out)], capture_output=True,
                            text=True, cwd=backends.PROJECT_ROOT, timeout=900)
    assert result.returncode == 0, result.stderr
    return out, result


def test_numpy_bench_writes_its_files_with_the_documented_columns(numpy_bench):
    out, result = numpy_bench
    for name in ("bench.csv", "rounds.csv", "bench.md", "bench.png", "meta.json", "timings.csv", "epochs.csv",
                 "summary.csv", "breakdown.csv", "breakdown_rounds.csv", "breakdown.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    for number in range(1, ROUNDS + 1):  # each round a run folder of its own, with its workers' logs
        assert len(list((out / f"round-{number}" / "logs").glob("*.log"))) == 4
    rows = read_csv(out / "bench.csv")
    assert set(DOCUMENTED) <= set(rows[0])
    assert [(r["backend"], r["mode"], r["tuning"], r["status"], r["rounds"], r["rounds_ok"]) for r in rows] == \
        [("numpy", "eager", "stock", "ok", "2", "2"), ("numpy", "eager", "tuned", "ok", "2", "2")]
    per_round = read_csv(out / "rounds.csv")
    assert set(ROUND_DOCUMENTED) <= set(per_round[0])
    assert sorted((r["tuning"], r["round"]) for r in per_round) == \
        [(t, str(n)) for t in ("stock", "tuned") for n in range(1, ROUNDS + 1)]
    meta = json.loads((out / "meta.json").read_text())
    assert meta["threads"] == 1 and meta["device"] == "cpu" and meta["cpu"]
    bench = meta["bench"]
    assert bench["repeats"] == 2 and bench["epochs_per_job"] == 3 and bench["rounds"] == bench["rounds_run"] == ROUNDS
    assert bench["order_seed"] == 0 and bench["tunings"] == ["stock", "tuned"]
    for r in per_round:  # the order each round ran in is recorded, and each row says where its job stood
        assert bench["orders"][int(r["round"]) - 1][int(r["position"]) - 1] == f"numpy eager {r['tuning']}"
    assert all(sorted(order) == sorted(bench["orders"][0]) and len(order) == 4 for order in bench["orders"])
    assert meta["floor"]["statistic"] == "median" and meta["blas"]
    assert meta["floor"]["environment"]["OPENBLAS_NUM_THREADS"] == "1"  # the jobs' thread count, before import
    assert "numpy" in meta["frameworks"]
    markdown = (out / "bench.md").read_text()
    assert "| backend | mode | tier | steady s" in markdown and "x floor" in markdown and "BLAS:" in markdown
    assert "## Two tiers" in markdown and "## Rank on this machine" in markdown and "\nstock:\n" in markdown
    assert "Where the time goes (batch 256)" in markdown and ("AVX" in markdown or "ISA unknown" in markdown)
    assert "What the tuning removed" in markdown
    assert not re.search(r"\(-\d+%\)", markdown)  # no negative share: a part below zero is said otherwise
    assert "peak sgemm" in markdown and "full count only" in markdown
    named = os.environ.get("OPENBLAS_CORETYPE")  # as the machine's environment has it: no test changes it
    assert meta["floor"]["environment"]["OPENBLAS_CORETYPE"] == named
    own = meta["floor_own_kernels"]  # where the environment names the kernels: the floor once more without them
    if named:
        assert own["set_to"] == named and own["environment"]["OPENBLAS_CORETYPE"] is None
        assert own["ratio_to_floor"] == pytest.approx(own["floor_seconds"] / bench["floor_seconds"])
        assert f"OPENBLAS_CORETYPE={named} in this environment names the floor's BLAS kernels" in markdown
    else:
        assert own is None and "in this environment names the floor's BLAS kernels" not in markdown
    assert "numpy" in result.stdout and "floor:" in result.stdout  # the table on the console
    last = result.stdout.strip().splitlines()[-2:]  # the console ends with the two tiers side by side
    assert last[0].split()[:4] == ["backend", "mode", "stock", "x"] and last[1].split()[:2] == ["numpy", "eager"]
    timings = read_csv(out / "timings.csv")  # the harness's own timings, one row per epoch, job and round
    assert sorted((r["round"], r["tuning"], r["variant"]) for r in timings) == sorted(
        (str(n), t, v) for n in range(1, ROUNDS + 1) for t in ("stock", "tuned") for v in ("d2l", "noise-off")
        for _ in range(3))
    summary = read_csv(out / "summary.csv")  # the noise-off twins ran, with dropout 0, in every round
    assert sorted((r["round"], r["tuning"], r["variant"], r["dropout_1"], r["status"]) for r in summary) == sorted(
        (str(n), t, v, p, "ok") for n in range(1, ROUNDS + 1) for t in ("stock", "tuned")
        for v, p in (("d2l", "0.5"), ("noise-off", "0.0")))


def test_numpy_bench_numbers_are_sane(numpy_bench):
    out, _ = numpy_bench
    rows = {r["tuning"]: r for r in read_csv(out / "bench.csv")}
    per_round = read_csv(out / "rounds.csv")
    meta = json.loads((out / "meta.json").read_text())
    floor = meta["floor"]
    beside = {m["when"]: m["step_seconds"] for m in floor["measurements"]}
    assert len(beside) == 2 * ROUNDS  # one beside each job, none beside a noise-off twin
    epochs = read_csv(out / "epochs.csv")
    for r in per_round:  # a round's row: its own epochs, against the floor timed beside them
        number = {k: float(r[k]) for k in r if k not in TEXT and r[k] != ""}
        mine = [float(e["epoch_seconds"]) for e in epochs if (e["round"], e["tuning"], e["variant"]) ==
                (r["round"], r["tuning"], "d2l")]
        twin = [float(e["epoch_seconds"]) for e in epochs if (e["round"], e["tuning"], e["variant"]) ==
                (r["round"], r["tuning"], "noise-off")]
        assert len(mine) == len(twin) == 3 and int(r["steady_epochs"]) == 2 and int(r["n_train"]) == 2000
        assert number["steady_median_seconds"] == pytest.approx(sum(mine[1:]) / 2, rel=1e-12)
        assert number["noise_off_seconds"] == pytest.approx(sum(twin[1:]) / 2, rel=1e-12)
        assert number["noise_seconds"] == pytest.approx(number["steady_median_seconds"] - number["noise_off_seconds"])
        assert r["floor_when"] == "beside the job"
        step = beside[f"round {r['round']}, beside numpy eager {r['tuning']}"]
        assert number["floor_seconds"] == pytest.approx(2000 / 256 * step, rel=1e-12)
        assert number["ratio_to_floor"] == pytest.approx(number["steady_median_seconds"] / number["floor_seconds"],
                                                         rel=1e-12)
        assert float(r["steady_q1_seconds"]) <= number["steady_median_seconds"] <= float(r["steady_q3_seconds"])
        other = next(o for o in per_round if o["round"] == r["round"] and o["tuning"] != r["tuning"])
        stock, tuned = (r, other) if r["tuning"] == "stock" else (other, r)
        assert number["gain"] == pytest.approx(float(stock["steady_median_seconds"])
                                               / float(tuned["steady_median_seconds"]), rel=1e-12)
    for tuning, row in rows.items():  # over the rounds: the median, and with two rounds their range as interval
        number = {k: float(row[k]) for k in DOCUMENTED if k not in TEXT}
        mine = [o for o in per_round if o["tuning"] == tuning]
        for key in ("steady_median_seconds", "ratio_to_floor", "noise_seconds", "gain"):
            values = sorted(float(o[key]) for o in mine)
            assert (number[key], number[f"{key}_low"], number[f"{key}_high"]) == \
                pytest.approx((sum(values) / 2, values[0], values[1]), rel=1e-12), key
        assert number["threads"] == 1 and int(row["steady_epochs"]) == 2 and int(row["n_train"]) == 2000
        for key in ("import_seconds", "build_seconds", "first_epoch_seconds", "steady_median_seconds",
                    "eval_seconds", "samples_per_second", "peak_rss_mb", "floor_seconds", "ratio_to_floor",
                    "harness_seconds", "floor_full_seconds", "ratio_to_full_floor", "peak_gflops", "floor_efficiency",
                    "noise_off_seconds", "gemm_gflops", "noise_draw_seconds", "gain"):
            assert number[key] > 0 and math.isfinite(number[key]), key
        assert number["samples_per_second"] == pytest.approx(2000 / number["steady_median_seconds"], rel=1e-12)
        assert 0 <= number["harness_fraction"] < 1
        assert number["floor_full_seconds"] > number["floor_seconds"]  # the full count has one GEMM more
        assert "openblas" in row["gemm_library"].lower() or "blas" in row["gemm_library"].lower()
    assert rows["stock"]["gain"] == rows["tuned"]["gain"]  # the backend x mode's gain, on both its rows
    assert floor["step_seconds"] == pytest.approx(sum(g["median_seconds"] for g in floor["gemms"] if g["necessary"]),
                                                  rel=1e-12)
    assert floor["step_seconds_full"] == pytest.approx(sum(g["median_seconds"] for g in floor["gemms"]), rel=1e-12)
    assert floor["peak_gflops"] > 0 and len(floor["peak_samples"]) == 2 * ROUNDS * bench_floor.PEAK_CALLS
    assert all(g["best_seconds"] <= g["median_seconds"] for g in floor["gemms"])
    passes = 2 + 1  # one right before each steady epoch, one after the last
    assert all(len(g["samples"]) == floor["rounds"] == 2 * ROUNDS * passes * bench_floor.PASS_ROUNDS
               for g in floor["gemms"])
    parts = {p["tuning"]: p for p in read_csv(out / "breakdown.csv")}
    assert sorted(parts) == ["stock", "tuned"]
    for p in read_csv(out / "breakdown_rounds.csv"):  # every round's parts add up to its epoch
        seconds = {k: float(p[k]) for k in ("epoch_seconds", "floor_seconds", "noise_seconds", "rest_seconds")}
        assert p["fixed_measured"] == "False" and float(p["fixed_seconds"]) == 0  # one size: no fit
        assert seconds["floor_seconds"] + seconds["noise_seconds"] + seconds["rest_seconds"] == \
            pytest.approx(seconds["epoch_seconds"], rel=1e-9)
    for tuning, p in parts.items():
        assert float(p["epoch_seconds"]) == pytest.approx(float(rows[tuning]["steady_median_seconds"]), rel=1e-12)
        assert float(p["epoch_seconds_low"]) <= float(p["epoch_seconds"]) <= float(p["epoch_seconds_high"])
    assert parts["stock"]["removed_epoch_seconds"] == parts["tuned"]["removed_epoch_seconds"] != ""


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
                         "--rounds", "2", "--train-limit", "512", "--threads", "1", "--out", str(out)])
    finally:
        backends.framework_version.cache_clear()
    assert code == 1  # nothing could run, but the run finished and wrote its files
    rows = {(r["backend"], r["mode"], r["tuning"]): r for r in read_csv(out / "bench.csv")}
    assert sorted(rows) == [(b, "compiled", t) for b in ("mxnet", "numpy") for t in ("stock", "tuned")]
    for tuning in ("stock", "tuned"):  # a row per tier, each saying why
        assert rows[("mxnet", "compiled", tuning)]["status"] == "unavailable"
        assert "make mxnet-venv" in rows[("mxnet", "compiled", tuning)]["error"]  # the install command
        assert rows[("mxnet", "compiled", tuning)]["rounds_ok"] == "0"
        assert rows[("numpy", "compiled", tuning)]["status"] == "unavailable"
        assert "numpy has no compiled mode" in rows[("numpy", "compiled", tuning)]["error"]
        assert float(rows[("numpy", "compiled", tuning)]["floor_seconds"]) > 0  # the floor is measured all the same
    assert (out / "bench.md").is_file() and (out / "meta.json").is_file() and (out / "rounds.csv").is_file()


def test_a_bench_whose_jobs_all_fail_still_writes_every_table(tmp_path):
    """Every job killed (a timeout shorter than any start): every table and figure is written, each row failed with
    its reason in every round, and no interval, gain or rank is made up."""
    out = tmp_path / "run"
    code = cli.main(["bench", "--backend", "numpy", "--rounds", "2", "--repeats", "1", "--train-limit", "512",
                     "--threads", "1", "--no-noise-off", "--job-timeout", "0.01", "--out", str(out)])
    assert code == 1
    for name in ("bench.csv", "rounds.csv", "bench.md", "bench.png", "breakdown.csv", "breakdown_rounds.csv",
                 "breakdown.png", "meta.json"):
        assert (out / name).is_file(), name
    rows = read_csv(out / "bench.csv")
    assert [(r["tuning"], r["status"], r["rounds_ok"], r["gain"]) for r in rows] == \
        [("stock", "failed", "0", ""), ("tuned", "failed", "0", "")]
    assert all("timeout" in r["error"] for r in rows)
    assert sorted((r["round"], r["status"]) for r in read_csv(out / "rounds.csv")) == \
        [("1", "failed"), ("1", "failed"), ("2", "failed"), ("2", "failed")]
    markdown = (out / "bench.md").read_text()
    assert "| numpy | eager | - | - | - | not measured |" in markdown and "No job has a steady time" in markdown


def test_gpu_on_a_backend_without_one_is_an_unavailable_row(tmp_path):
    out = tmp_path / "run"
    code = cli.main(["bench", "--backend", "numpy", "--device", "gpu", "--repeats", "1", "--train-limit", "512",
                     "--tuning", "tuned", "--threads", "1", "--out", str(out)])
    assert code == 1
    (row,) = read_csv(out / "bench.csv")
    assert row["status"] == "unavailable" and row["device"] == "gpu" and row["tuning"] == "tuned"
    assert row["error"].startswith("numpy has no gpu device"), row["error"]


@pytest.mark.parametrize("args,words", [
    (["--repeats", "0"], ["--repeats"]),
    (["--rounds", "0"], ["--rounds"]),
    (["--tuning", "fast"], ["--tuning"]),
    (["--backend", "nosuch"], ["nosuch"]),
    (["--mode", "fast"], ["--mode"]),
    (["--batch-sizes", "64", "0"], ["--batch-sizes"]),
    (["--hiddens", "256", "0"], ["hiddens"]),
])
def test_bad_bench_flags_are_one_line_and_status_2(args, words):
    result = subprocess.run([*HARNESS, "bench", *args], capture_output=True, text=True, cwd=backends.PROJECT_ROOT,
                            timeout=120)
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: ") and all(w in line for w in words), line


def test_a_scaling_run_writes_its_files_and_fits_every_backend_mode_and_tier(tmp_path):
    out = tmp_path / "run"
    result = subprocess.run([*HARNESS, "bench", "--backend", "numpy", "--repeats", "1", "--rounds", "2",
                             "--train-limit", "1024", "--threads", "1", "--batch-sizes", "64", "256", "512",
                             "--hiddens", "32", "16", "--out", str(out)], capture_output=True, text=True,
                            cwd=backends.PROJECT_ROOT, timeout=900)
    assert result.returncode == 0, result.stderr
    for name in ("scaling.csv", "scaling.md", "scaling.png", "breakdown.csv", "breakdown_rounds.csv",
                 "breakdown.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    for batch in (64, 256, 512):
        for name in ("bench.csv", "rounds.csv", "bench.md"):
            assert (out / f"batch-{batch}" / name).is_file(), (batch, name)
    rows = read_csv(out / "scaling.csv")
    assert [(r["batch_size"], r["tuning"], r["hiddens"]) for r in rows] == \
        [(b, t, "32x16") for b in ("64", "256", "512") for t in ("stock", "tuned")]
    for r in rows:  # the floor is measured at each size, at the chosen widths
        steps = 1024 / int(r["batch_size"])
        assert float(r["step_seconds"]) == pytest.approx(float(r["steady_median_seconds"]) / steps)
        assert float(r["fit_step_seconds"]) == pytest.approx(float(r["step_seconds"]) * (1 + float(r["fit_residual"])))
        # the framework's own GEMMs of a step at this size and width: rate and seconds agree, and so does the ratio
        flops = bench_floor.epoch_flops((784, 32, 16, 10), 1024)
        assert flops / float(r["framework_gemm_seconds"]) / 1e9 == pytest.approx(float(r["framework_gemm_gflops"]))
        assert float(r["gain"]) > 0 and r["gain_low"] != ""
    meta = json.loads((out / "batch-64" / "meta.json").read_text())
    assert meta["floor"]["sizes"] == [784, 32, 16, 10] and meta["floor"]["batch"] == 64
    summary = read_csv(out / "batch-256" / "summary.csv")  # the noise-off twins run at batch 256 only
    assert sorted({r["variant"] for r in summary}) == ["d2l", "noise-off"] and len(summary) == 2 * 2 * 2
    assert {r["variant"] for r in read_csv(out / "batch-64" / "summary.csv")} == {"d2l"}
    parts = {p["tuning"]: p for p in read_csv(out / "breakdown.csv")}
    assert sorted(parts) == ["stock", "tuned"]
    for p in parts.values():
        assert p["fixed_measured"] == "True" and p["batch_size"] == "256" and p["fixed_seconds_low"] != ""
    for p in read_csv(out / "breakdown_rounds.csv"):  # each round fitted on its own figures: its parts add up
        total = sum(float(p[k]) for k in ("floor_seconds", "noise_seconds", "fixed_seconds", "rest_seconds"))
        assert total == pytest.approx(float(p["epoch_seconds"]), rel=1e-9) and p["fixed_measured"] == "True"
    assert "t0 us/step" in result.stdout and "resid. B=512" in result.stdout  # the fit and its residuals, printed
    scaling_md = (out / "scaling.md").read_text()
    assert "## Fixed cost per step" in scaling_md and "| numpy | eager | tuned |" in scaling_md

    from experiments import load  # the notebook's view of the same folder

    loaded = load(out)
    assert list(loaded.sizes) == [64, 256, 512] and loaded.report == out / "scaling.md" and loaded.ok
    assert len(loaded.scaling) == 6 and sorted(loaded.bench["batch_size"]) == [64, 64, 256, 256, 512, 512]
    assert loaded.sizes[256].bench["batch_size"].tolist() == [256, 256] and loaded.sizes[256].summary is not None
    assert len(loaded.sizes[64].plot().axes) == 3
    with pytest.raises(cli.UsageError, match=r"sizes\[B\]\.plot\(\)"):
        loaded.plot()


def test_every_backends_gemm_step_probe_computes_the_floors_products():
    """The products the bench times through each framework are the floor's, in every mode and tier: one m x n result
    per necessary GEMM, in order (a product with its operands the wrong way round, or one left out, fails here), and
    the rounds the bench times them over compute the same products again (a loop that fed a round's results or the
    wrong operands into the next fails here); every backend names its GEMM library. One process per backend, under
    its own interpreter (MXNet's venv too)."""
    from tests.conftest import backends_under_test, require_backend

    expected = [[g["m"], g["n"]] for g in bench_floor.step_gemms((784, 24, 16, 10), 8) if g["necessary"]]
    for name in backends_under_test():
        require_backend(name)
        info = backends.resolve(name)
        result = subprocess.run([info.interpreter, "-c", PROBE_SCRIPT, name, *info.modes], capture_output=True,
                                text=True, cwd=backends.PROJECT_ROOT, timeout=600,
                                env={**os.environ, "PYTHONPATH": str(backends.PROJECT_ROOT)})
        assert result.returncode == 0, (name, result.stderr[-2000:])
        reports = json.loads(result.stdout.strip().splitlines()[-1])
        assert sorted(reports) == sorted(f"{m} {t}" for m in info.modes for t in ("stock", "tuned")), name
        for which, report in reports.items():
            assert report["shapes"] == expected, (name, which)
            assert report["rounds_agree"], (name, which)
            assert isinstance(report["library"], str) and report["library"], (name, which)


def test_every_backend_reports_its_gemm_library_and_rate(tmp_path):
    from tests.conftest import backends_under_test, require_backend

    names = backends_under_test()
    for name in names:
        require_backend(name)
    out = tmp_path / "run"
    result = subprocess.run([*HARNESS, "bench", *[f"--backend={n}" for n in names], "--mode", "eager", "--repeats", "1",
                             "--rounds", "1", "--train-limit", "512", "--threads", "1", "--no-noise-off",
                             "--out", str(out)], capture_output=True, text=True, cwd=backends.PROJECT_ROOT, timeout=900)
    assert result.returncode == 0, result.stderr
    rows = {(r["backend"], r["tuning"]): r for r in read_csv(out / "bench.csv")}
    assert sorted(rows) == sorted((n, t) for n in names for t in ("stock", "tuned"))
    for name, row in rows.items():  # what the framework says it runs, and a rate through it, from the worker
        assert row["status"] == "ok" and row["gemm_library"], (name, row["error"])
        assert float(row["gemm_gflops"]) > 0, name
        assert row["noise_draw_library"] and float(row["noise_draw_seconds"]) > 0, name  # its dropout, alone
        # the step's necessary GEMMs through the framework: rate, epoch seconds and floor ratio agree
        seconds, n_train = float(row["framework_gemm_seconds"]), int(row["n_train"])
        flops = bench_floor.epoch_flops((784, 256, 256, 10), n_train)
        assert seconds > 0 and flops / seconds / 1e9 == pytest.approx(float(row["framework_gemm_gflops"]), rel=1e-6)
        assert float(row["framework_gemm_to_floor"]) == pytest.approx(seconds / float(row["floor_seconds"]), rel=1e-6)
    meta = json.loads((out / "meta.json").read_text())
    assert all(meta["gemm_libraries"][f"{n} eager {t}"]["shape"] == [256, 784, 256] for n, t in rows)
    assert not (out / "summary.csv").read_text().count("noise-off")  # --no-noise-off: no twins


def test_an_interrupted_bench_still_writes_its_tables_for_the_jobs_that_finished(tmp_path):
    """SIGINT once the first job of the first round has its row on disk: the finished jobs keep their bench rows
    and bench.md, the rest are marked interrupted, no later round runs, and no worker is left."""
    import signal
    import time

    import psutil

    out = tmp_path / "bench"
    process = subprocess.Popen([*HARNESS, "bench", "--backend", "numpy", "--rounds", "3", "--repeats", "1",
                                "--no-noise-off", "--train-limit", "2000", "--threads", "1", "--out", str(out)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               cwd=backends.PROJECT_ROOT)
    children = []
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and not (out / "round-1" / "summary.csv").exists():
            time.sleep(0.05)
        children = psutil.Process(process.pid).children(recursive=True)
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=300)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, stderr[-2000:]
    assert "interrupted by SIGINT" in stderr and "Traceback" not in stderr
    rows = {r["tuning"]: r for r in read_csv(out / "bench.csv")}
    assert sorted(rows) == ["stock", "tuned"]
    finished = [r for r in rows.values() if r["status"] == "ok"]
    assert finished and all(float(r["ratio_to_floor"]) > 0 and r["rounds_ok"] == "1" for r in finished)
    assert all(r["status"] == "interrupted" for r in rows.values() if r not in finished)
    assert {r["round"] for r in read_csv(out / "rounds.csv")} == {"1"} and not (out / "round-2").exists()
    assert json.loads((out / "meta.json").read_text())["bench"]["rounds_run"] == 1
    assert f"| numpy | eager | {finished[0]['tuning']} |" in (out / "bench.md").read_text()
    assert "batch 256:" in stdout
    assert not [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
