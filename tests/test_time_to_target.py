"""Time to accuracy: the training seconds, first epoch included, until the validation accuracy first reaches the
target (``--target-acc``), in every summary row and in the report's side-by-side table; none where it never does."""
from __future__ import annotations

import json
import math

import pytest

from backends.contract.spec import ModelSpec, TrainSpec
from experiments import data
from experiments.options import TARGET_ACC
from experiments.running.plan import Job
from experiments.running.rundir import RunFolder, seconds_to_target, summary_row
from experiments.running.runner import _retargeted
from experiments.report.sections import side_by_side_rows
from experiments.version import __version__


def epochs(*pairs):
    """Epoch events from (val_acc, epoch_seconds) pairs, epoch 1 first."""
    return [{"epoch": i, "val_acc": acc, "epoch_seconds": seconds, "val_loss": 0.5, "train_loss": 0.6,
             "train_acc": 0.8, "eval_seconds": 0.1, "n_train": 1000} for i, (acc, seconds) in enumerate(pairs, 1)]


def test_counts_every_epoch_up_to_the_first_that_reaches_the_target_the_first_included():
    run = epochs((0.70, 5.0), (0.83, 1.0), (0.845, 1.5), (0.83, 1.0), (0.86, 1.0))
    assert seconds_to_target(run, 0.84) == pytest.approx(7.5)  # 5 + 1 + 1.5; the later dip changes nothing
    assert seconds_to_target(run, 0.70) == pytest.approx(5.0)  # reached in the first epoch: compile time included
    assert seconds_to_target(run, 0.845) == pytest.approx(7.5)  # reaching the target exactly counts


def test_never_reached_is_none_not_the_run_time():
    assert seconds_to_target(epochs((0.80, 1.0), (0.83, 1.0)), 0.84) is None
    assert seconds_to_target([], 0.84) is None
    assert seconds_to_target(epochs((math.nan, 1.0)), 0.84) is None  # a diverged epoch reaches nothing


def test_reads_csv_strings_in_epoch_order():
    rows = [{"epoch": "2", "val_acc": "0.85", "epoch_seconds": "1.25"},
            {"epoch": "1", "val_acc": "0.5", "epoch_seconds": "3.5"}]
    assert seconds_to_target(rows, 0.84) == pytest.approx(4.75)


def job(seed=0):
    return Job(experiment="d2l", variant="d2l", backend="numpy", model=ModelSpec(),
               train=TrainSpec(epochs=3, seed=seed))


def test_every_summary_row_carries_the_time_and_its_target():
    row = summary_row(job(), epochs((0.80, 2.0), (0.85, 1.0), (0.86, 1.0)), None, None, "ok", "", target_acc=0.84)
    assert row["seconds_to_target"] == pytest.approx(3.0) and row["target_acc"] == 0.84
    never = summary_row(job(), epochs((0.80, 2.0)), None, None, "ok", "", target_acc=0.84)
    assert never["seconds_to_target"] is None and never["target_acc"] == 0.84


def test_the_default_target_is_0_84():
    assert TARGET_ACC == 0.84


def summary(seconds, target=0.84):
    return [dict(variant="d2l", backend="numpy", tuning="stock", impl="concise", mode="eager", seed=seed,
                 status="ok", error="", final_val_acc=0.85, final_val_loss=0.4, first_epoch_seconds=1.0,
                 median_epoch_seconds=0.5, samples_per_second=1e5, seconds_to_target=s, target_acc=target)
            for seed, s in enumerate(seconds)]


def test_the_side_by_side_table_shows_the_median_none_and_partial_reach():
    assert side_by_side_rows(summary([3.0, 5.0, 4.0]))[0]["s to 0.84"] == "4.00"
    assert side_by_side_rows(summary([None, math.nan, None]))[0]["s to 0.84"] == "none"
    assert side_by_side_rows(summary([3.0, None, 5.0]))[0]["s to 0.84"] == "4.00 (2/3 seeds)"
    assert side_by_side_rows(summary([3.0], target=0.9))[0]["s to 0.9"] == "3.00"


def test_a_reused_job_gets_the_time_to_this_runs_target(tmp_path):
    folder = RunFolder(tmp_path)
    row = summary_row(job(), epochs((0.80, 2.0), (0.85, 1.0)), None, None, "ok", "", target_acc=0.84)
    for event in epochs((0.80, 2.0), (0.85, 1.0)):
        folder.append("epochs", {**row, **{k: str(v) for k, v in event.items()}})
    again = RunFolder(tmp_path, load=True)
    assert _retargeted(row, again, 0.75) == {"seconds_to_target": pytest.approx(2.0), "target_acc": 0.75}
    assert _retargeted(row, again, 0.9) == {"seconds_to_target": None, "target_acc": 0.9}
    assert _retargeted(dict(row, seed=7), again, 0.75) == {}  # no epoch rows of that job: left as it was


@pytest.fixture(scope="module")
def data_dir():
    try:
        return data.locate(download=False, progress=False)
    except data.DataError as exc:
        pytest.skip(f"Fashion-MNIST is not installed here: {exc}")


def test_a_real_run_writes_the_column_the_report_and_the_version(tmp_path, data_dir):
    from experiments import run

    result = run("d2l", backends=["numpy"], epochs=2, train_limit=2000, seeds=[0], data_dir=data_dir,
                 out=tmp_path / "low", progress=False, target_acc=0.05)
    row = result.summary.iloc[0]
    first = result.epochs.sort_values("epoch")["epoch_seconds"].iloc[0]
    assert row["target_acc"] == 0.05 and row["seconds_to_target"] == pytest.approx(first)
    assert "s to 0.05" in result.report.read_text()
    assert json.loads((result.folder / "meta.json").read_text())["dropbench_version"] == __version__

    never = run("d2l", backends=["numpy"], epochs=2, train_limit=2000, seeds=[0], data_dir=data_dir,
                out=tmp_path / "high", progress=False, target_acc=1.0)
    assert math.isnan(never.summary.iloc[0]["seconds_to_target"])
    report = never.report.read_text()
    assert "| none |" in report
