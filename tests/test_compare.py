"""``python harness.py compare``: two run folders built here with the runner's real columns (training and bench
runs), one job made slower or less accurate on purpose."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from experiments import cli
from experiments.running.rundir import EPOCH_COLUMNS, SUMMARY_COLUMNS
from experiments.bench.rows import COLUMNS as BENCH_COLUMNS
from tests.helpers import read_csv

BACKENDS = ("numpy", "torch")
SEEDS = (0, 1, 2)
EPOCHS = 6  # 5 steady epochs a side


def write_run(folder, *, seconds=None, accuracy=None, bench=False, threads=2, seeds=SEEDS, settings=None,
              n_epochs=EPOCHS, noise_seed=0, jitter=0.02, tuning="stock", times=None):
    """A run folder: every backend x seed of the d2l variant, epoch times about 0.5 s with a jitter of up to
    ``jitter`` (uniform, relative; drawn from ``noise_seed``: one seed gives one run, another seed a repeat of it);
    ``settings``: per backend, the job settings its summary rows carry (``rundir.job_columns``' parameters);
    ``tuning``: the tier of every job, None for a folder from before the tiers (no tuning column); ``times``: per
    (backend, seed), epoch times given outright."""
    seconds, accuracy, settings, given = seconds or {}, accuracy or {}, settings or {}, times
    rng = np.random.default_rng(noise_seed)
    folder.mkdir(parents=True)
    epochs, summary = [], []
    for backend in BACKENDS:
        for seed in seeds:
            key = {"backend": backend, "tuning": tuning, "impl": "concise", "mode": "eager", "variant": "d2l",
                   "seed": seed}
            scale = seconds.get((backend, seed), 1.0)
            acc = 0.80 + 0.01 * seed + accuracy.get((backend, seed), 0.0)
            times = [2.0 * scale] + list(0.5 * (1 + rng.uniform(-jitter, jitter, n_epochs - 1)) * scale)
            times = (given or {}).get((backend, seed), times)
            for epoch, time in enumerate(times, start=1):
                epochs.append({**key, "epoch": epoch, "train_loss": 0.5, "train_acc": acc, "val_loss": 0.5,
                               "val_acc": acc, "epoch_seconds": time, "eval_seconds": 0.1, "n_train": 2000,
                               "device": "cpu"})
            summary.append({**key, "status": "ok", "error": "", "final_val_acc": acc,
                            "median_epoch_seconds": float(np.median(times[1:])), **settings.get(backend, {})})
    untiered = [] if tuning else ["tuning"]
    pd.DataFrame(epochs, columns=EPOCH_COLUMNS + ["n_train", "device"]).drop(columns=untiered).to_csv(
        folder / "epochs.csv", index=False)
    extra = list(dict.fromkeys(c for values in settings.values() for c in values))
    pd.DataFrame(summary, columns=SUMMARY_COLUMNS + extra).drop(columns=untiered).to_csv(folder / "summary.csv",
                                                                                         index=False)
    meta = {"python": "3.11.7", "numpy": "2.4.6", "frameworks": {"numpy": "2.4.6", "torch": "2.13.0+cpu"},
            "cpu": "Intel(R) Xeon(R) Processor", "cpu_count": 2, "threads": threads, "git_commit": "abc",
            "command": "harness.py", "started": "2026-12-01T10:00:00+0000"}
    if bench:
        steady = {(r["backend"], r["seed"]): r["median_epoch_seconds"] for r in summary}
        rows = [{"backend": b, "mode": "eager", "tuning": tuning or "tuned", "device": "cpu", "status": "ok",
                 "threads": threads,
                 "steady_median_seconds": steady[(b, 0)], "floor_seconds": 0.25,
                 "ratio_to_floor": steady[(b, 0)] / 0.25} for b in BACKENDS]
        pd.DataFrame(rows, columns=BENCH_COLUMNS).to_csv(folder / "bench.csv", index=False)
        meta.update(device="cpu", blas_line="openblas 0.3.31 (SkylakeX kernels, 2 threads)")
    (folder / "meta.json").write_text(json.dumps(meta))
    return folder


def compare(a, b, tmp_path, *extra):
    out = tmp_path / "cmp"
    shutil.rmtree(out, ignore_errors=True)
    status = cli.main(["compare", str(a), str(b), "--out", str(out), *extra])
    return status, read_csv(out / "compare.csv") if (out / "compare.csv").exists() else [], out


def flagged(rows):
    return [(r["backend"], int(r["seed"]), r["time"]) for r in rows if r["time"] != "within the noise"]


def test_a_run_against_itself_flags_nothing(tmp_path, capsys):
    run = write_run(tmp_path / "a")
    status, rows, out = compare(run, run, tmp_path, "--fail-above", "0")
    assert status == 0
    assert len(rows) == len(BACKENDS) * len(SEEDS) and flagged(rows) == []
    assert all(float(r["time_ratio"]) == 1.0 for r in rows)
    paragraph = capsys.readouterr().out
    assert "0 job(s) slower beyond the noise" in paragraph and "Gate --fail-above 0%: pass" in paragraph
    assert "No difference in meta.json" in (out / "compare.md").read_text()


def test_one_slower_job_is_flagged_alone_and_fails_the_gate(tmp_path, capsys):
    a = write_run(tmp_path / "a")
    b = write_run(tmp_path / "b", seconds={("torch", 1): 1.5}, threads=1)
    status, rows, out = compare(a, b, tmp_path)
    assert status == 0  # no gate asked for
    assert flagged(rows) == [("torch", 1, "slower")]
    slow = next(r for r in rows if r["backend"] == "torch" and r["seed"] == "1")
    assert float(slow["time_ratio"]) == pytest.approx(1.5, rel=0.03) and float(slow["p_value"]) < 0.05
    markdown = (out / "compare.md").read_text()
    assert "| threads | 2 | 1 |" in markdown and "~1.000" in markdown
    assert compare(a, b, tmp_path, "--fail-above", "20")[0] == 1
    assert "torch stock concise eager d2l seed 1 1.50x" in capsys.readouterr().out
    assert compare(a, b, tmp_path, "--fail-above", "60")[0] == 0  # 50 % slower passes a 60 % gate


def test_an_accuracy_difference_within_the_seed_noise_is_not_flagged_a_clear_drop_is(tmp_path, capsys):
    a = write_run(tmp_path / "a")
    noisy = write_run(tmp_path / "noisy", accuracy={("numpy", 0): 0.004, ("numpy", 1): -0.003, ("numpy", 2): 0.001})
    status, _, out = compare(a, noisy, tmp_path, "--fail-above", "10")
    assert status == 0
    groups = read_csv(out / "compare_accuracy.csv")
    numpy_group = next(g for g in groups if g["backend"] == "numpy")
    assert numpy_group["beyond_seed_noise"] == "False" and numpy_group["dropped"] == "False"
    assert "within the seed noise" in (out / "compare.md").read_text()
    dropped = write_run(tmp_path / "dropped", accuracy={("torch", s): -0.02 - 0.001 * s for s in SEEDS})
    status, _, out = compare(a, dropped, tmp_path, "--fail-above", "10")
    assert status == 1
    assert "1 of 2 group(s) with two or more seeds dropped beyond the seed noise (torch eager d2l -2.10 points)" in \
        capsys.readouterr().out


def test_bench_runs_show_each_sides_ratio_to_floor(tmp_path):
    a = write_run(tmp_path / "a", bench=True, seeds=(0,))
    b = write_run(tmp_path / "b", bench=True, seeds=(0,), seconds={("numpy", 0): 1.5})
    status, rows, out = compare(a, b, tmp_path)
    assert status == 0
    numpy_row = next(r for r in rows if r["backend"] == "numpy")
    assert float(numpy_row["ratio_to_floor_a"]) == pytest.approx(2.0, rel=0.05)
    assert float(numpy_row["floor_normalised_ratio"]) == pytest.approx(1.5, rel=0.03)
    assert flagged(rows) == [("numpy", 0, "slower")]
    assert "x floor A" in (out / "compare.md").read_text()


def test_settings_that_differ_between_the_shared_jobs_are_named(tmp_path, capsys):
    same = {"lr": 0.1, "batch_size": 256, "train_limit": None, "dropout_1": 0.5}
    a = write_run(tmp_path / "a", settings={"numpy": same, "torch": same})
    b = write_run(tmp_path / "b", settings={"numpy": same, "torch": {**same, "lr": 0.2, "train_limit": 2000}})
    status, _, out = compare(a, b, tmp_path)
    assert status == 0
    paragraph = capsys.readouterr().out
    assert "The shared jobs' settings differ: lr 0.1 in A, 0.1, 0.2 in B; train_limit None in A, None, 2000 in B." \
        in paragraph
    markdown = (out / "compare.md").read_text()
    assert "| lr | 0.1 | 0.1, 0.2 |" in markdown and "batch_size" not in markdown.split("## Environment")[0]
    assert compare(a, a, tmp_path)[0] == 0
    assert "settings differ" not in capsys.readouterr().out
    assert "Settings that differ" not in (tmp_path / "cmp" / "compare.md").read_text()


def test_jobs_on_one_side_only_are_listed(tmp_path, capsys):
    a = write_run(tmp_path / "a")
    b = write_run(tmp_path / "b", seeds=(0, 1))
    status, rows, _ = compare(a, b, tmp_path)
    assert status == 0 and len(rows) == 4
    out = capsys.readouterr().out
    assert "only in A: numpy stock concise eager d2l 2" in out and "only in A: torch stock concise eager d2l 2" in out


@pytest.mark.parametrize("case, message", [
    ("missing", "is not a folder"),
    ("empty", "is not a run folder (no meta.json, epochs.csv, summary.csv)"),
    ("disjoint", "share no finished job"),
    ("gate", "--fail-above must be a percentage >= 0"),
    ("one", "the following arguments are required: RUN_B"),
])
def test_bad_inputs_are_one_line_and_exit_2(tmp_path, capsys, case, message):
    a = write_run(tmp_path / "a")
    other = {"missing": tmp_path / "nowhere", "empty": tmp_path}.get(case)
    if case == "disjoint":
        other = write_run(tmp_path / "b", seeds=(7,))
    argv = {"gate": [str(a), str(a), "--fail-above", "-5"], "one": [str(a)]}.get(case, [str(a), str(other)])
    assert cli.main(["compare", *argv, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


# --- the time test: power with 4-epoch runs, no false calls between runs of one configuration, cannot judge ---

SHORT = 4  # epochs of a short run: 3 steady epochs a side, where Mann-Whitney's smallest two-sided p is 0.10


def test_a_1_5x_slowdown_between_two_4_epoch_runs_is_flagged_and_fails_the_gate(tmp_path, capsys):
    a = write_run(tmp_path / "a", n_epochs=SHORT)
    b = write_run(tmp_path / "b", n_epochs=SHORT, noise_seed=1, seconds={("torch", 0): 1.5})
    status, rows, out = compare(a, b, tmp_path, "--fail-above", "10")
    assert status == 1
    assert flagged(rows) == [("torch", 0, "slower")]
    slow = next(r for r in rows if r["backend"] == "torch" and r["seed"] == "0")
    assert int(slow["steady_epochs_a"]) == int(slow["steady_epochs_b"]) == 3
    assert float(slow["p_adjusted"]) < 0.05 and float(slow["ratio_ci95_low"]) > 1.1
    assert "Gate --fail-above 10%: FAIL (1 job(s) slower" in capsys.readouterr().out


def test_a_4_epoch_run_against_itself_passes_the_gate(tmp_path, capsys):
    run = write_run(tmp_path / "a", n_epochs=SHORT, jitter=0.05)
    status, rows, _ = compare(run, run, tmp_path, "--fail-above", "10")
    assert status == 0 and flagged(rows) == []
    assert "Gate --fail-above 10%: pass" in capsys.readouterr().out


def test_a_repeat_of_a_run_with_other_epoch_noise_is_within_the_noise(tmp_path):
    a = write_run(tmp_path / "a", n_epochs=SHORT, jitter=0.05)
    repeat = write_run(tmp_path / "b", n_epochs=SHORT, jitter=0.05, noise_seed=1)
    status, rows, _ = compare(a, repeat, tmp_path, "--fail-above", "10")
    assert status == 0 and flagged(rows) == [], flagged(rows)
    assert {r["time_ratio"] for r in rows} != {"1.0"}  # the epochs differ: a repeat, not the run itself


def simulated_verdicts(rng, ratios, steady, spread, fail_above=None):
    """One comparison of jobs whose B / A is ``ratios``: ``steady`` epoch times a side, each the job's time times
    a log-normal factor of sd ``spread``; the verdicts ``experiments.compare`` gives them."""
    from experiments import compare as comparing

    rows = []
    for ratio in ratios:
        a = [2.0] + list(0.5 * np.exp(rng.normal(0, spread, steady)))
        b = [2.0 * ratio] + list(0.5 * ratio * np.exp(rng.normal(0, spread, steady)))
        rows.append(comparing._time_row(a, b))
    comparing.time_verdicts(rows, fail_above)
    return [row["time"] for row in rows]


@pytest.mark.parametrize("steady", [3, 5])
def test_comparisons_of_runs_of_one_configuration_call_a_job_significant_at_most_one_time_in_twenty(steady):
    """Six jobs a comparison, each job's epochs with a spread of 5 %: over 400 such comparisons of two runs of
    one configuration, at most 5 % get any job called slower or faster (Holm over the jobs), give or take the
    sampling error of 400 comparisons (3 standard errors: 8 %; without Holm it would be about 26 %)."""
    rng = np.random.default_rng(7)
    calls = [simulated_verdicts(rng, [1.0] * 6, steady, 0.05) for _ in range(400)]
    false = sum(any(v in ("slower", "faster") for v in verdicts) for verdicts in calls)
    assert false <= 0.08 * len(calls), false


def test_a_1_5x_slowdown_with_3_steady_epochs_a_side_is_found_nineteen_times_in_twenty():
    """One job of six 1.5x slower, 3 steady epochs a side, a spread of 5 %: called slower in at least 95 % of 400
    comparisons, and the five others called within the noise as often as in the comparisons above."""
    rng = np.random.default_rng(8)
    calls = [simulated_verdicts(rng, [1.5] + [1.0] * 5, 3, 0.05) for _ in range(400)]
    assert sum(verdicts[0] == "slower" for verdicts in calls) >= 0.95 * len(calls)
    assert sum(any(v != "within the noise" for v in verdicts[1:]) for verdicts in calls) <= 0.08 * len(calls)


def test_samples_that_cannot_decide_are_cannot_judge_and_the_gate_fails_closed(tmp_path, capsys):
    a = write_run(tmp_path / "a", n_epochs=2)  # one steady epoch a side: no spread to weigh a difference against
    status, rows, out = compare(a, a, tmp_path, "--fail-above", "10")
    assert status == 3 and {r["time"] for r in rows} == {"cannot judge"}
    assert "Gate --fail-above 10%: CANNOT JUDGE (6 job(s)" in capsys.readouterr().out
    assert compare(a, a, tmp_path)[0] == 0  # without a gate it is a report, not a verdict
    # 3 steady epochs spread over +-20 %: a 1.3x slowdown can be neither confirmed nor ruled out
    noisy = write_run(tmp_path / "noisy", n_epochs=SHORT, times={("numpy", 1): [2.0, 0.4, 0.5, 0.6]})
    slower = write_run(tmp_path / "slower", n_epochs=SHORT, times={("numpy", 1): [2.6, 0.52, 0.65, 0.78]})
    status, rows, _ = compare(noisy, slower, tmp_path, "--fail-above", "10")
    numpy_1 = next(r for r in rows if r["backend"] == "numpy" and r["seed"] == "1")
    assert numpy_1["significant"] == "False" and float(numpy_1["time_ratio"]) > 1.1
    assert numpy_1["time"] == "cannot judge" and status == 3
    status, rows, _ = compare(noisy, slower, tmp_path, "--fail-above", "60")  # a gate the ratio does not reach
    assert status == 0 and numpy_1["time_ratio"] == next(
        r for r in rows if r["backend"] == "numpy" and r["seed"] == "1")["time_ratio"]


def test_a_definite_failure_outranks_a_job_that_cannot_be_judged(tmp_path):
    a = write_run(tmp_path / "a", n_epochs=SHORT, times={("numpy", 1): [2.0, 0.4, 0.5, 0.6]})
    b = write_run(tmp_path / "b", n_epochs=SHORT, times={("numpy", 1): [2.6, 0.52, 0.65, 0.78]},
                  accuracy={("torch", s): -0.02 - 0.001 * s for s in SEEDS})
    status, rows, _ = compare(a, b, tmp_path, "--fail-above", "10")
    assert "cannot judge" in {r["time"] for r in rows} and status == 1


def test_jobs_are_matched_on_their_tier_and_a_folder_from_before_the_tiers_holds_tuned_jobs(tmp_path, capsys):
    """A folder from before the tiers ran the code that is now the tuned tier."""
    old = write_run(tmp_path / "old", tuning=None)
    tuned = write_run(tmp_path / "tuned", tuning="tuned")
    status, rows, _ = compare(old, tuned, tmp_path)
    assert status == 0 and len(rows) == len(BACKENDS) * len(SEEDS) and {r["tuning"] for r in rows} == {"tuned"}
    stock = write_run(tmp_path / "stock")
    assert cli.main(["compare", str(stock), str(tuned), "--out", str(tmp_path / "out")]) == 2
    assert "share no finished job" in capsys.readouterr().err


@pytest.mark.parametrize("damage", ["cut", "edited", "foreign", "empty"])
def test_a_damaged_table_is_one_line_naming_the_file_and_exit_2(tmp_path, capsys, damage):
    a = write_run(tmp_path / "a")
    b = write_run(tmp_path / "b")
    table = b / "epochs.csv"
    text = table.read_text()
    table.write_text({"cut": text[:len(text) // 2], "edited": text.replace("0.5,", "0.5x,", 1),
                      "foreign": "when,what\n2026,x\n", "empty": ""}[damage])
    before = {p.name: p.read_bytes() for p in b.iterdir()}
    assert cli.main(["compare", str(a), str(b), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(table) in err[0] and "restore the file" in err[0], err
    assert {p.name: p.read_bytes() for p in b.iterdir()} == before
