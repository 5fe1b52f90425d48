"""The section's exercises as experiments: the catalog, the probes (on the NumPy backend), the analysis text, and every
experiment end to end through the real command line on a small subset."""
from __future__ import annotations

import math
import re
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

import backends
from backends.contract import shared_init
from backends.numpy.backend import Backend as NumpyBackend
from experiments.exercises import probes
from experiments.report import writer as report, stats
from experiments.exercises import activation_variance, long_training
from experiments.catalog import CATALOG, build
from backends.contract.spec import ModelSpec, TrainSpec
from experiments.running.plan import Job

EXERCISES = ["dropout-swap", "long-training", "activation-variance", "test-time-dropout", "dropout-vs-weight-decay",
             "dropconnect", "noise-injection"]
SMOKE_EPOCHS = 2


# ----------------------------------------------------------------------------------------------------------- catalog
def test_every_exercise_is_a_catalog_entry_with_an_analysis_and_full_defaults():
    for name in EXERCISES:
        entry = CATALOG[name]
        assert callable(entry.analysis), name
        assert entry.description and "\n" not in entry.description
        experiment = build(name, backends=["numpy"])
        assert experiment.seeds == (0, 1, 2), name
        assert experiment.base_train.epochs == (50 if name == "long-training" else 10), name
        assert experiment.base_train.train_limit is None, name
        for probe in entry.probes:
            assert probe in probes.PROBES


def test_list_shows_every_exercise():
    from experiments.commands.train import list_everything

    listing = list_everything()
    for name in EXERCISES:
        assert f"  {name} " in listing


def test_a_flag_that_fights_the_experiments_variants_is_refused():
    from experiments.catalog import CatalogError

    with pytest.raises(CatalogError, match="dropouts"):
        build("dropout-swap", backends=["numpy"], model_overrides={"dropouts": (0.3, 0.3)})
    with pytest.raises(CatalogError, match="weight_decay"):
        build("dropout-vs-weight-decay", backends=["numpy"], train_overrides={"weight_decay": 0.1})


# ------------------------------------------------------------------------------------------------------------ probes
def _numpy(dropouts, noise="dropout", seed=0):
    model, train = ModelSpec(dropouts=dropouts, noise=noise), TrainSpec(seed=seed)
    backend = NumpyBackend(model=model, train=train)
    backend.build(seed=seed, params=shared_init(model, seed))
    return backend, Job(backend="numpy", variant="probe-test", model=model, train=train)


def _rows(generator):
    return [row for _, row in generator]


@pytest.fixture(scope="module")
def probe_data():
    """Real images: 300 training images and the first 1,024 test images (the probe batch's size)."""
    from experiments import data

    split = data.load(data.locate(download=False, progress=False), train_limit=300)
    n = probes.PROBE_BATCH
    return SimpleNamespace(train_x=split.train_x, train_y=split.train_y, test_x=split.test_x[:n],
                           test_y=split.test_y[:n])


@pytest.mark.parametrize("noise,rates", [("dropout", (0.5, 0.3)), ("gaussian", (0.5, 0.3)), ("additive", (0.4, 0.2))])
def test_activation_probe_variance_before_and_after_the_noise(probe_data, noise, rates):
    backend, job = _numpy(rates, noise)
    rows = _rows(probes.ActivationVariance().on_epoch(backend=backend, data=probe_data, epoch=0, job=job))
    frame = pd.DataFrame(rows)
    assert len(frame) == 2 * 2 * 2 and set(frame["probe_examples"]) == {probes.PROBE_BATCH}
    assert (frame["var"] >= 0).all() and np.isfinite(frame[["var", "mean", "mean_sq", "unit_var"]]).all().all()
    for (layer, forward_mode), group in frame.groupby(["layer", "forward_mode"]):
        pre = group[group["stage"] == "pre_noise"].iloc[0]
        post = group[group["stage"] == "post_noise"].iloc[0]
        assert pre["mean_sq"] == pytest.approx(pre["var"] + pre["mean"] ** 2, rel=1e-9)
        if forward_mode == "eval":  # the noise is off: after == before, exactly
            assert post["var"] == pre["var"] and post["mean"] == pre["mean"]
            continue
        p = rates[layer - 1]
        expected = activation_variance.predicted_post_var(noise, p, pre["var"], pre["mean"])
        if noise != "additive":  # inverted dropout and its Gaussian twin: (var + mean^2) / (1 - p) - mean^2
            assert expected == pytest.approx((pre["var"] + pre["mean"] ** 2) / (1 - p) - pre["mean"] ** 2)
        assert post["var"] == pytest.approx(expected, rel=0.05), (layer, post["var"], expected)
        assert post["var"] > pre["var"] * 1.05  # the noise is really on in training mode
        assert post["mean"] == pytest.approx(pre["mean"], rel=0.05, abs=0.01)  # all three kinds are unbiased


def test_activation_probe_leaves_the_backends_noise_stream_alone(probe_data):
    probed, job = _numpy((0.5, 0.5), seed=3)
    untouched, _ = _numpy((0.5, 0.5), seed=3)
    _rows(probes.ActivationVariance().on_epoch(backend=probed, data=probe_data, epoch=1, job=job))
    x = probe_data.test_x[:64]
    np.testing.assert_array_equal(probed.forward(x=x, train=True), untouched.forward(x=x, train=True))


def test_activation_stats_pool_examples_and_units():
    values = np.array([[0.0, 2.0], [4.0, 6.0]])
    stats = probes.activation_stats(values)
    assert stats["mean"] == 3.0 and stats["var"] == 5.0 and stats["mean_sq"] == 14.0
    assert stats["unit_var"] == 4.0 and stats["zero_fraction"] == 0.25


def test_train_eval_probe_is_the_noise_off_evaluation_of_the_training_subset(probe_data):
    backend, job = _numpy((0.5, 0.5))
    (row,) = _rows(probes.TrainEval().on_epoch(backend=backend, data=probe_data, epoch=3, job=job))
    n = min(probes.TRAIN_EVAL_EXAMPLES, len(probe_data.train_y))
    logits = backend.forward(x=probe_data.train_x[:n], train=False)
    assert row["epoch"] == 3 and row["train_eval_examples"] == n == 300
    assert row["train_eval_acc"] == pytest.approx(float(np.mean(logits.argmax(1) == probe_data.train_y[:n])))
    (again,) = _rows(probes.TrainEval().on_epoch(backend=backend, data=probe_data, epoch=3, job=job))
    assert again == row  # noise off: the same numbers every time


def test_test_time_probe_with_p0_gives_mc_accuracy_equal_to_eval_accuracy(probe_data):
    backend, job = _numpy((0.0, 0.0))
    records = list(probes.TestTimeNoise().on_end(backend=backend, data=probe_data, job=job))
    table = pd.DataFrame([row for name, row in records if name == "test_time"])
    (spread,) = [row for name, row in records if name == "test_time_spread"]
    off = table[table["method"] == "noise off"]["acc"].item()
    assert off == pytest.approx(backend.evaluate(x=probe_data.test_x, y=probe_data.test_y).acc)
    mc = table[table["method"] == "mc average"]
    assert tuple(mc["n_passes"]) == probes.MC_PASSES
    assert (mc["acc"] == off).all() and table["acc"].to_numpy() == pytest.approx(off, rel=1e-12)
    assert spread["flip_rate"] == 0 and spread["unstable_fraction"] == 0
    assert spread["mean_prob_std"] == pytest.approx(0.0, abs=1e-12)
    assert spread["single_vs_noise_off"] == 0 and spread["n_passes"] == max(probes.MC_PASSES)


def test_test_time_rows_average_probabilities_and_measure_the_spread():
    y = np.array([0, 1, 2, 0])
    onehot = lambda labels, scale: np.eye(3)[labels] * scale  # noqa: E731
    eval_logits = onehot([0, 1, 2, 1], 5.0)
    confident_right, unsure_wrong = onehot([0, 1, 2, 0], 10.0), onehot([1, 1, 1, 1], 1.0)
    records = list(probes.test_time_rows(eval_logits, [confident_right, unsure_wrong], y, passes=(1, 2)))
    table = {(row["method"], row["n_passes"]): row for name, row in records if name == "test_time"}
    (spread,) = [row for name, row in records if name == "test_time_spread"]
    assert table[("noise off", 0)]["acc"] == 0.75
    assert table[("single pass", 1)]["acc"] == pytest.approx((1.0 + 0.25) / 2)
    assert table[("single pass", 1)]["acc_sd"] == pytest.approx(np.std([1.0, 0.25], ddof=1))
    assert table[("mc average", 1)]["acc"] == 1.0  # the first pass alone
    assert table[("mc average", 2)]["acc"] == 1.0  # the confident pass dominates the averaged probabilities
    assert spread["flip_rate"] == 0.75 and spread["unstable_fraction"] == 0.75
    assert spread["single_vs_noise_off"] == pytest.approx((1 + 2) / 8) and spread["mc_vs_noise_off"] == 0.25
    assert spread["mean_prob_std"] > 0


# ---------------------------------------------------------------------------------------------- analysis and text
def test_describe_states_sign_size_spread_and_verdict():
    frame = pd.DataFrame({"variant": ["a"] * 3 + ["b"] * 3, "seed": [0, 1, 2] * 2,
                          "acc": [0.850, 0.860, 0.855, 0.848, 0.856, 0.852]})
    s = stats.paired(frame, "acc", "a", "b").scaled(100)
    assert (s.mean, s.n) == (pytest.approx(-0.30), 3) and s.sd == pytest.approx(0.10)
    text = stats.describe(s)
    assert text.startswith("-0.30 points (sd 0.10 over 3 seeds, negative in 3 of them; 95 % CI -0.55 to -0.05")
    assert text.endswith("beyond the seed noise)")
    noisy = stats.stat([0.5, -0.4, 0.2])
    assert stats.describe(noisy).startswith("+0.10 points (sd 0.46 over 3 seeds, positive in 2 of them")
    assert "within the seed noise" in stats.describe(noisy)
    assert "one seed" in stats.describe(stats.stat([0.7]))
    assert stats.fmt_stat(stats.stat([85.0, 86.0])) == "85.50 ± 0.71"


def test_ahead_from_and_predicted_variance():
    assert long_training.ahead_from(pd.Series([-1.0, 0.5, -0.1, 0.2, 0.3], index=[1, 2, 3, 4, 5])) == 4
    assert long_training.ahead_from(pd.Series([1.0, -0.5], index=[1, 2])) is None
    assert activation_variance.predicted_post_var("dropout", 0.5, 1.0, 1.0) == 3.0  # (1 + 1) / 0.5 - 1
    assert activation_variance.predicted_post_var("additive", 0.5, 1.0, 1.0) == 1.25
    assert activation_variance.predicted_post_var("dropconnect", 0.5, 1.0, 1.0) == 1.0


def _summary_rows(accuracies: dict[tuple[float, float], list[float]]):
    rows = []
    for (p1, p2), values in accuracies.items():
        for seed, acc in enumerate(values):
            rows.append({"backend": "numpy", "impl": "concise", "mode": "eager", "variant": f"{p1:g}-{p2:g}",
                         "seed": seed, "status": "ok", "error": "", "final_val_acc": acc, "final_val_loss": 0.4,
                         "first_epoch_seconds": 1.0, "median_epoch_seconds": 1.0, "samples_per_second": 1.0,
                         "framework_version": "x", "noise": "dropout", "dropout_1": p1, "dropout_2": p2,
                         "weight_decay": 0.0, "epochs": 10, "train_limit": None})
    return rows


def test_swap_report_states_the_right_sign_and_size(tmp_path):
    accuracies = {(0.5, 0.5): [0.850, 0.852, 0.851], (0.2, 0.5): [0.860, 0.861, 0.862],
                  (0.5, 0.2): [0.850, 0.851, 0.852],  # -1.00 points, sd 0: beyond the noise
                  (0.1, 0.9): [0.800, 0.810, 0.805], (0.9, 0.1): [0.810, 0.800, 0.807],  # +0.07 ± 1: noise
                  (0.0, 0.0): [0.860, 0.860, 0.860]}
    pd.DataFrame(_summary_rows(accuracies)).to_csv(tmp_path / "summary.csv", index=False)
    text = report.write("dropout-swap", tmp_path).read_text()
    assert re.search(r"swapping \(0\.2, 0\.5\) to \(0\.5, 0\.2\) .* by -1\.00 points \(sd 0\.00 over 3 seeds, "
                     r"negative in 3 of them; 95 % CI -1\.00 to -1\.00: beyond the seed noise\)", text)
    assert re.search(r"swapping \(0\.1, 0\.9\) to \(0\.9, 0\.1\) .* by \+0\.07 points .*within the seed noise", text)
    assert "in 1 of 2 swap pairs the larger rate on the *second* layer" in text
    assert "highest mean test accuracy: (0.2, 0.5) at 86.10 %" in text
    assert "| numpy | 0.5-0.2 | 0.5 | 0.2 | 85.10 ± 0.10 |" in text
    assert (tmp_path / "final_accuracy.png").stat().st_size > 0


def _d2l_rows(accuracies: dict[tuple[str, str], list[float]], seconds: dict[tuple[str, str], tuple[float, float]]):
    rows = []
    for (backend, mode), values in accuracies.items():
        first, steady = seconds[(backend, mode)]
        for row in _summary_rows({(0.5, 0.5): values}):
            rows.append(dict(row, backend=backend, tuning="stock", mode=mode, variant="d2l", first_epoch_seconds=first,
                             median_epoch_seconds=steady, samples_per_second=60000 / steady,
                             seconds_to_target=first + steady, target_acc=0.84))
    return rows


def test_d2l_report_states_agreement_with_numpy_and_the_time(tmp_path):
    accuracies = {("numpy", "eager"): [0.850, 0.852, 0.851],
                  ("torch", "eager"): [0.852, 0.851, 0.853],  # +0.2, -0.1, +0.2 points: within the noise
                  ("torch", "compiled"): [0.840, 0.842, 0.841]}  # -1.00 points at every seed: beyond it
    seconds = {("numpy", "eager"): (1.0, 0.9), ("torch", "eager"): (1.5, 1.0), ("torch", "compiled"): (20.0, 0.5)}
    pd.DataFrame(_d2l_rows(accuracies, seconds)).to_csv(tmp_path / "summary.csv", index=False)
    epochs = [{"backend": b, "tuning": "stock", "impl": "concise", "mode": m, "variant": "d2l", "seed": seed,
               "epoch": e, "train_loss": 1.0 / e, "val_loss": 1.1 / e, "val_acc": acc - 0.1 / e}
              for (b, m), values in accuracies.items() for seed, acc in enumerate(values) for e in (1, 2, 3)]
    pd.DataFrame(epochs).to_csv(tmp_path / "epochs.csv", index=False)
    text = report.write("d2l", tmp_path).read_text()
    sections = re.findall(r"^## (.+)$", text, flags=re.M)
    assert sections == ["Learning curves", "Side by side", "Agreement with the NumPy reference", "Time"]
    assert "```" not in text and (tmp_path / "learning_curves.png").stat().st_size > 5000
    assert "| 1st epoch s | epoch s | s to 0.84 | samples/s |" in text  # the time to the target accuracy, beside
    assert "| d2l | torch | stock | concise | compiled | 3/3 | 0.8410 | 0.0010 | 0.4000 | 20.00 | 0.50 | 20.50 | 120,000 |" \
        in text
    # t(0.975, 2) = 4.303: +0.10 ± 0.17 -> -0.33 to +0.53
    assert "| torch | eager | 3 | +0.10 ± 0.17 | -0.33 to +0.53 | within the seed noise |" in text
    assert "| torch | compiled | 3 | -1.00 ± 0.00 | -1.00 to -1.00 | beyond the seed noise |" in text
    assert "NumPy reference (concise): final validation accuracy 85.10 ± 0.10 % over 3 seed(s)." in text
    assert ("1 of 2 backend x mode arms are within the seed noise of NumPy's final validation accuracy; the "
            "largest mean difference is -1.00 points (torch compiled, beyond the seed noise).") in text
    assert "| torch | compiled | 3 | 20.00 | 0.50 | +19.50 | 120,000 |" in text
    assert ("torch: steady epoch compiled 0.50 s, eager 1.00 s (compiled 2.0x faster); first epoch compiled 20.00 s, "
            "eager 1.50 s; compiling pays for its warm-up after about 38 epoch(s).") in text
    assert "fastest steady epoch: torch compiled at 0.50 s." in text


def test_d2l_report_without_the_numpy_reference_or_with_one_seed(tmp_path):
    seconds = {("torch", "eager"): (1.5, 1.0), ("numpy", "eager"): (1.0, 0.9)}
    pd.DataFrame(_d2l_rows({("torch", "eager"): [0.85]}, seconds)).to_csv(tmp_path / "summary.csv", index=False)
    assert "The NumPy reference did not run" in report.write("d2l", tmp_path).read_text()
    rows = _d2l_rows({("numpy", "eager"): [0.85], ("torch", "eager"): [0.86]}, seconds)
    pd.DataFrame(rows).to_csv(tmp_path / "summary.csv", index=False)
    text = report.write("d2l", tmp_path).read_text()
    assert "| torch | eager | 1 | +1.00 | - | one seed: no spread to judge |" in text
    assert "One seed only" in text and "nan" not in text.lower()


def test_t_quantiles_come_from_scipy():
    from scipy.stats import t

    for n in (2, 3, 10, 31, 41):  # the hand-typed table stopped at 30 degrees of freedom and fell back to 1.96
        assert stats.Stat(0.0, 1.0, n).half_width == pytest.approx(t.ppf(0.975, n - 1) / math.sqrt(n), rel=1e-12)
    assert stats.Stat(0.0, 1.0, 3).half_width == pytest.approx(4.303 / math.sqrt(3), abs=1e-3)
    assert math.isnan(stats.Stat(0.5, math.nan, 1).half_width)


# ------------------------------------------------------------------------------------- end to end, real CLI, subset
EXPECTED = {
    "dropout-swap": (["final_accuracy.png", "difference_to_reference.png", "test_accuracy_curves.png"], []),
    "long-training": (["curves.png", "generalisation_gap.png"], ["train_eval"]),
    "activation-variance": (["activation_variance.png"], ["activations"]),
    "test-time-dropout": (["test_time_accuracy.png"], ["test_time", "test_time_spread"]),
    "dropout-vs-weight-decay": (["final_accuracy.png", "difference_to_reference.png", "test_accuracy_curves.png",
                                 "additivity.png"], []),
    "dropconnect": (["final_accuracy.png", "difference_to_reference.png", "test_accuracy_curves.png"], []),
    "noise-injection": (["final_accuracy.png", "difference_to_reference.png", "test_accuracy_curves.png",
                         "activation_rms.png"], ["activations"]),
}


@pytest.fixture(scope="module")
def smoke_runs(tmp_path_factory):
    """Every exercise through ``harness.py`` at once (one process each, one thread each)."""
    root = tmp_path_factory.mktemp("exercises")
    started = {}
    for name in EXERCISES:
        out = root / name
        command = [sys.executable, str(backends.PROJECT_ROOT / "harness.py"), "--experiment", name, "--backend",
                   "numpy", "--train-limit", "2000", "--epochs", str(SMOKE_EPOCHS), "--seeds", "0", "--threads", "1",
                   "--out", str(out)]
        started[name] = (subprocess.Popen(command, cwd=backends.PROJECT_ROOT, stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, text=True), out)
    results = {}
    for name, (process, out) in started.items():
        stdout, stderr = process.communicate(timeout=600)
        results[name] = SimpleNamespace(returncode=process.returncode, stdout=stdout, stderr=stderr, out=out)
    return results


def _finite_in(frame, columns, low=-math.inf, high=math.inf):
    values = frame[columns].astype(float).to_numpy()
    assert np.isfinite(values).all(), columns
    assert (values >= low).all() and (values <= high).all(), (columns, values.min(), values.max())


@pytest.mark.parametrize("name", EXERCISES)
def test_exercise_runs_end_to_end(smoke_runs, name):
    run = smoke_runs[name]
    assert run.returncode == 0, run.stderr[-2000:]
    out = run.out
    pngs, tables = EXPECTED[name]
    for png in [*pngs, "learning_curves.png"]:  # every report draws the learning curves of its variants
        assert (out / png).stat().st_size > 5000, png
    report = (out / "report.md").read_text()
    assert report.startswith(f"# {name}\n") and "## What the numbers show" in report and "Smoke run" in report
    for link in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report):
        assert (out / link).exists(), link
    assert {*pngs, "learning_curves.png"} <= set(re.findall(r"\]\(([^)]+\.png)\)", report))
    assert "## Learning curves" in report and "```" not in report
    assert not re.search(r"\bnan\b", report.lower())

    summary = pd.read_csv(out / "summary.csv")
    declared = [v.name for v in CATALOG[name].variants]
    assert list(dict.fromkeys(summary["variant"])) == declared
    assert (summary["status"] == "ok").all() and set(summary["seed"]) == {0}
    _finite_in(summary, ["final_val_acc"], 0, 1)
    epochs = pd.read_csv(out / "epochs.csv")
    assert {"variant", "seed", "epoch", "train_acc", "val_acc", "dropout_1", "dropout_2", "noise",
            "weight_decay"} <= set(epochs.columns)
    assert len(epochs) == len(declared) * SMOKE_EPOCHS
    _finite_in(epochs, ["train_acc", "val_acc"], 0, 1)
    _finite_in(epochs, ["train_loss", "val_loss"], 0)
    for table in tables:
        frame = pd.read_csv(out / f"{table}.csv")
        assert {"backend", "variant", "seed", "noise", "dropout_1"} <= set(frame.columns), table
        assert set(frame["variant"]) <= set(declared)
    check = CHECKS.get(name)
    if check:
        check(out, summary, declared)


def _check_long_training(out, summary, declared):
    train_eval = pd.read_csv(out / "train_eval.csv")
    assert {"epoch", "train_eval_loss", "train_eval_acc", "train_eval_examples"} <= set(train_eval.columns)
    assert sorted(set(train_eval["epoch"])) == list(range(SMOKE_EPOCHS + 1))  # epoch 0 and after every epoch
    assert set(train_eval["train_eval_examples"]) == {2000}  # min(10,000, the 2,000 trained on)
    _finite_in(train_eval, ["train_eval_acc"], 0, 1)
    _finite_in(train_eval, ["train_eval_loss"], 0)


def _check_activations(out, summary, declared):
    acts = pd.read_csv(out / "activations.csv")
    assert {"epoch", "layer", "forward_mode", "stage", "var", "mean", "mean_sq", "unit_var",
            "zero_fraction"} <= set(acts.columns)
    assert sorted(set(acts["epoch"])) == list(range(SMOKE_EPOCHS + 1))
    assert set(acts["layer"]) == {1, 2} and set(acts["forward_mode"]) == {"train", "eval"}
    assert set(acts["stage"]) == {"pre_noise", "post_noise"}
    assert len(acts) == len(declared) * (SMOKE_EPOCHS + 1) * 8
    _finite_in(acts, ["var", "unit_var", "mean_sq"], 0)
    _finite_in(acts, ["zero_fraction"], 0, 1)


def _check_test_time(out, summary, declared):
    table = pd.read_csv(out / "test_time.csv")
    assert tuple(sorted(table[table["method"] == "mc average"]["n_passes"])) == probes.MC_PASSES
    assert set(table["method"]) == {"noise off", "single pass", "mc average"}
    _finite_in(table, ["acc"], 0, 1)
    _finite_in(table, ["loss"], 0)
    spread = pd.read_csv(out / "test_time_spread.csv")
    _finite_in(spread, ["flip_rate", "unstable_fraction", "single_vs_noise_off", "mc_vs_noise_off"], 0, 1)
    _finite_in(spread, ["mean_prob_std"], 0, 0.5)


def _check_weight_decay(out, summary, declared):
    assert set(summary["weight_decay"]) == {0.0, 1e-4, 1e-3, 1e-2}
    assert "Are the effects additive?" in (out / "report.md").read_text()


def _check_noise(out, summary, declared):
    kinds = dict(zip(summary["variant"], summary["noise"]))
    assert set(kinds.values()) >= {"dropout"} and set(kinds.values()) - {"dropout"}
    for variant, kind in kinds.items():
        assert variant.split("-")[0] in (kind, "none"), (variant, kind)


CHECKS = {"long-training": _check_long_training, "activation-variance": _check_activations,
          "noise-injection": lambda *a: (_check_activations(*a), _check_noise(*a)),
          "test-time-dropout": _check_test_time, "dropout-vs-weight-decay": _check_weight_decay,
          "dropconnect": _check_noise}
