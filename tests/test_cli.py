"""The command line as a user meets it: one-line errors with exit status 2, --list, and real runs with their files."""
import csv
import gzip
import json
import shutil
import subprocess
import sys

import pytest

import backends
from experiments import data

HARNESS = [sys.executable, str(backends.PROJECT_ROOT / "harness.py")]


def harness(*args, timeout=600, env=None):
    return subprocess.run([*HARNESS, *args], capture_output=True, text=True, cwd=backends.PROJECT_ROOT,
                          timeout=timeout, env=env)


def assert_user_error(result, *words):
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    for word in words:
        assert word in lines[0], lines[0]


@pytest.mark.parametrize("args,words", [
    (["--backend", "nosuch"], ["nosuch", "numpy"]),
    (["--backend", "numpy", "--dropout", "1.5", "0.5"], ["dropouts[0]", "[0, 1]"]),
    (["--backend", "numpy", "--lr", "-1"], ["lr", "positive"]),
    (["--backend", "numpy", "--epochs", "0"], ["epochs"]),
    (["--backend", "numpy", "--batch-size", "-5"], ["batch_size"]),
    (["--backend", "numpy", "--hiddens", "256", "0"], ["hiddens[1]"]),
    (["--backend", "numpy", "--experiment", "nosuch"], ["nosuch", "d2l"]),
    (["--backend", "numpy", "--mode", "compiled"], ["compiled", "numpy"]),
    (["--bogus"], ["--bogus"]),
    (["--backend", "numpy", "--device", "gpu"], ["numpy cannot run on gpu", "torch, jax"]),
    (["--epochs", "ten"], ["--epochs"]),
])
def test_bad_input_is_one_line_and_status_2(args, words):
    assert_user_error(harness(*args), *words)


def _copy_real_data(folder):
    folder.mkdir()
    for name in data.FILES.values():
        shutil.copy(data.SYSTEM_DIR / f"{name}.gz", folder / f"{name}.gz")


@pytest.mark.skipif(not (data.SYSTEM_DIR / "t10k-labels-idx1-ubyte.gz").exists(), reason="Debian data not installed")
def test_truncated_and_corrupted_data_files_are_refused(tmp_path):
    truncated = tmp_path / "truncated"
    _copy_real_data(truncated)
    labels = truncated / "t10k-labels-idx1-ubyte.gz"
    labels.write_bytes(labels.read_bytes()[:-100])
    assert_user_error(harness("--backend", "numpy", "--data-dir", str(truncated)), "t10k-labels", "truncated")
    corrupted = tmp_path / "corrupted"
    _copy_real_data(corrupted)
    raw = bytearray(gzip.decompress((corrupted / "train-labels-idx1-ubyte.gz").read_bytes()))
    raw[100] = (raw[100] + 1) % 10
    (corrupted / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(bytes(raw)))
    assert_user_error(harness("--backend", "numpy", "--data-dir", str(corrupted)), "train-labels")


def test_empty_data_folder_is_refused_before_any_run_folder_is_made(tmp_path):
    empty, out = tmp_path / "empty", tmp_path / "runs" / "run"
    empty.mkdir()
    assert_user_error(harness("--backend", "numpy", "--data-dir", str(empty), "--out", str(out)), "train-images",
                      "--data-dir")
    assert not (tmp_path / "runs").exists()


def test_list_names_every_backend_and_experiment():
    result = harness("--list")
    assert result.returncode == 0, result.stderr
    for name in backends.REGISTRY:
        assert f"\n  {name} " in result.stdout
    assert "d2l" in result.stdout


def test_short_run_writes_the_three_files_with_their_columns(tmp_path):
    out = tmp_path / "run"
    result = harness("--backend", "numpy", "--epochs", "2", "--train-limit", "3000", "--seeds", "0", "1",
                     "--out", str(out))
    assert result.returncode == 0, result.stderr
    with open(out / "epochs.csv") as handle:
        epochs = list(csv.DictReader(handle))
    assert len(epochs) == 4
    assert {"backend", "impl", "mode", "variant", "seed", "epoch", "train_loss", "train_acc", "val_loss", "val_acc",
            "epoch_seconds", "dropout_1", "dropout_2", "lr"} <= set(epochs[0])
    with open(out / "summary.csv") as handle:
        summary = list(csv.DictReader(handle))
    assert {"status", "error", "final_val_acc", "first_epoch_seconds", "median_epoch_seconds", "samples_per_second",
            "peak_rss_mb", "framework_version"} <= set(summary[0])
    assert [row["status"] for row in summary] == ["ok", "ok"]
    meta = json.loads((out / "meta.json").read_text())
    assert meta["command"].startswith("harness.py --backend numpy")
    assert "numpy" in result.stdout and "val_acc" in result.stdout  # the side-by-side table


def test_d2l_run_with_numpy_reaches_the_sections_accuracy(tmp_path):
    """The section's recipe, 10 epochs on all of Fashion-MNIST: about 0.85, as the D2L section reports."""
    out = tmp_path / "run"
    # one thread: make test runs two test processes on two cores, and BLAS threads that outnumber the cores spin
    result = harness("--backend", "numpy", "--threads", "1", "--out", str(out))
    assert result.returncode == 0, result.stderr
    with open(out / "summary.csv") as handle:
        (row,) = list(csv.DictReader(handle))
    assert row["status"] == "ok" and float(row["final_val_acc"]) >= 0.83, row


@pytest.mark.skipif(backends.registry.gpu_visible(), reason="this machine has a GPU")
def test_gpu_training_without_a_gpu_is_one_line_before_any_worker(tmp_path):
    result = harness("--backend", "torch", "--device", "gpu", "--epochs", "1", "--out", str(tmp_path / "run"))
    assert_user_error(result, "--device gpu", "no NVIDIA GPU")
    assert not (tmp_path / "run").exists()


def test_the_run_and_its_report_name_the_settings_the_flags_gave(tmp_path):
    """The d2l entry's description is D2L's recipe; the settings line under it is what the jobs really ran with."""
    out = tmp_path / "run"
    result = harness("--backend", "numpy", "--hiddens", "64", "--dropout", "0.3", "--lr", "0.05", "--epochs", "1",
                     "--train-limit", "1000", "--threads", "1", "--out", str(out))
    assert result.returncode == 0, result.stderr
    settings = next(line for line in result.stderr.splitlines() if line.startswith("settings: "))
    assert settings.startswith("settings: 784-64-10 MLP, concise, dropout, p (0.3), init shared, SGD lr 0.05")
    assert "1 epoch, the first 1,000 training images" in settings
    report = (out / "report.md").read_text()
    assert "settings: dropouts 0.3; hidden widths 64; noise dropout; init shared; lr 0.05;" in report


def test_an_experiments_settings_say_what_its_variants_set():
    from experiments.catalog import build

    text = build("dropout-swap", backends=["numpy"], train_overrides={"epochs": 3}).settings_text()
    assert "dropouts per variant" in text and "3 epochs" in text and "784-256-256-10 MLP" in text
