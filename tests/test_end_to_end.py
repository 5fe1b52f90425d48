"""Rung 6 of the ladder: every backend trains the section's model on all of Fashion-MNIST to the section's accuracy.

D2L's recipe gives about 0.85 after 10 epochs, as the section reports. 0.83 is the bar: a wrong gradient, dropout
left on in evaluation or a broken data stream misses it by far. Each backend runs through the real CLI and worker, in its compiled mode where it has
one (the eager paths are checked step by step by the parity ladder); NumPy's own run is in test_cli.py.
"""
import csv
import subprocess
import sys

import pytest

import backends
from tests.conftest import backends_under_test, require_backend

FRAMEWORKS = [name for name in backends_under_test() if name != "numpy"]


@pytest.mark.parametrize("name", FRAMEWORKS)
def test_ten_epochs_reach_the_sections_accuracy(name, tmp_path):
    require_backend(name)
    mode = "compiled" if "compiled" in backends.resolve(name).modes else "eager"
    # the tuned tier: the stock tier's every step is held to the oracle by the ladder, and its compiled PyTorch epoch
    # (torch.compile of the model, the optimizer eager) would cost most of this file's time. One thread: make test
    # runs two test processes on two cores, and BLAS threads that outnumber the cores spin.
    result = subprocess.run([sys.executable, "harness.py", "--backend", name, "--mode", mode, "--tuning", "tuned",
                             "--threads", "1", "--out", str(tmp_path)],
                            capture_output=True, text=True, cwd=backends.PROJECT_ROOT, timeout=900)
    assert result.returncode == 0, result.stderr[-2000:]
    with open(tmp_path / "summary.csv") as handle:
        (row,) = list(csv.DictReader(handle))
    assert row["status"] == "ok", row["error"]
    assert int(row["epochs_completed"]) == 10
    assert float(row["final_val_acc"]) >= 0.83, row
