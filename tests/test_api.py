"""The Python interface (``from experiments import run, load``): a real run on NumPy and PyTorch in worker processes,
its DataFrames against the CSVs on disk, ``load`` of a training and a bench folder, the learning-curves figure, the
user errors it raises (the command line's), and the package staying light for the workers."""
from __future__ import annotations

import io
import subprocess
import sys

import pandas as pd
import pytest

import backends
from experiments import api, load, run
from experiments.cli import USER_ERRORS
from experiments.options import UsageError
from experiments.running.plan import Job
from experiments.running.progress import Progress
from backends.contract.spec import ModelSpec, TrainSpec
from tests.conftest import require_backend

HARNESS = [sys.executable, str(backends.PROJECT_ROOT / "harness.py")]
EPOCHS = 2


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    require_backend("torch")
    out = tmp_path_factory.mktemp("api") / "run"
    return run("d2l", backends=["numpy", "torch"], modes="all", epochs=EPOCHS, train_limit=1000, seeds=[0, 1],
               threads=1, out=out, progress=False)


def test_run_returns_the_csvs_as_dataframes(result):
    assert result.folder.is_dir() and result.experiment == "d2l" and result.ok
    pd.testing.assert_frame_equal(result.summary, pd.read_csv(result.folder / "summary.csv"))
    pd.testing.assert_frame_equal(result.epochs, pd.read_csv(result.folder / "epochs.csv"))
    arms = set(zip(result.summary["backend"], result.summary["mode"]))
    assert arms == {("numpy", "eager"), ("torch", "eager"), ("torch", "compiled")}
    assert (result.summary["status"] == "ok").all() and len(result.summary) == 3 * 2
    assert len(result.epochs) == 3 * 2 * EPOCHS and set(result.epochs["train_limit"]) == {1000}
    assert result.meta["command"].startswith("experiments.run('d2l', backends=['numpy', 'torch']")
    assert result.bench is None and result.report == result.folder / "report.md"
    assert result.figure == result.folder / "learning_curves.png" and result.figure.stat().st_size > 5000


def test_load_gives_the_same_result_back(result):
    again = load(result.folder)
    assert (again.folder, again.experiment, again.meta) == (result.folder, result.experiment, result.meta)
    pd.testing.assert_frame_equal(again.summary, result.summary)
    pd.testing.assert_frame_equal(again.epochs, result.epochs)


def test_the_figure_has_one_line_per_backend_and_mode_in_each_panel(result, tmp_path):
    fig = result.plot(tmp_path / "curves.png")
    assert (tmp_path / "curves.png").stat().st_size > 5000
    assert [ax.get_title() for ax in fig.axes] == ["training loss (noise on)", "validation loss",
                                                    "validation accuracy (%)"]
    for ax, column, scale in zip(fig.axes, ("train_loss", "val_loss", "val_acc"), (1, 1, 100)):
        lines = {line.get_label(): line for line in ax.get_lines()}
        assert set(lines) == {"numpy · eager", "torch · eager", "torch · compiled"}
        assert lines["torch · eager"].get_color() == lines["torch · compiled"].get_color()
        assert lines["torch · eager"].get_color() != lines["numpy · eager"].get_color()
        assert lines["torch · eager"].get_linestyle() == lines["numpy · eager"].get_linestyle()
        assert lines["torch · eager"].get_linestyle() != lines["torch · compiled"].get_linestyle()
        for (backend, mode), group in result.epochs.groupby(["backend", "mode"]):
            x, y = lines[f"{backend} · {mode}"].get_data()
            mean = group.groupby("epoch")[column].mean() * scale
            assert list(x) == list(mean.index) and list(y) == pytest.approx(list(mean))


def test_the_report_has_the_d2l_sections(result):
    text = result.report.read_text()
    for heading in ("## Learning curves", "## Side by side", "## Agreement with the NumPy reference", "## Time"):
        assert heading in text
    assert "```" not in text and "![learning curves](learning_curves.png)" in text
    assert "| torch | compiled | 2 |" in text  # the agreement row: paired over both seeds


def test_load_reads_a_bench_folder(tmp_path):
    out = tmp_path / "bench"
    done = subprocess.run([*HARNESS, "bench", "--backend", "numpy", "--repeats", "1", "--rounds", "1",
                           "--no-noise-off", "--train-limit", "1000", "--threads", "1", "--out", str(out)],
                          capture_output=True, text=True, timeout=600, cwd=backends.PROJECT_ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    bench = load(out)
    pd.testing.assert_frame_equal(bench.bench, pd.read_csv(out / "bench.csv"))
    assert sorted(zip(bench.bench["backend"], bench.bench["tuning"])) == [("numpy", "stock"), ("numpy", "tuned")]
    assert bench.report == out / "bench.md"
    assert len(bench.plot().axes) == 3


def test_user_errors_raise_the_command_lines_exceptions_and_messages(tmp_path):
    with pytest.raises(USER_ERRORS) as caught:
        run("d2l", backends=["nosuch"], out=tmp_path / "x")
    cli = subprocess.run([*HARNESS, "--backend", "nosuch"], capture_output=True, text=True, timeout=120,
                         cwd=backends.PROJECT_ROOT)
    assert cli.returncode == 2 and cli.stderr.strip() == f"error: {' '.join(str(caught.value).split())}"
    with pytest.raises(UsageError, match="backend numpy has no compiled mode"):
        run("d2l", backends=["numpy"], modes="compiled", out=tmp_path / "x")
    with pytest.raises(UsageError, match="unknown setting epoch"):
        run("d2l", backends=["numpy"], epoch=3, out=tmp_path / "x")
    with pytest.raises(USER_ERRORS, match="lr"):
        run("d2l", backends=["numpy"], lr=-1.0, out=tmp_path / "x")
    with pytest.raises(UsageError, match="threads"):
        run("d2l", backends=["numpy"], threads=0, out=tmp_path / "x")
    with pytest.raises(UsageError, match="holds no run"):
        load(tmp_path)
    assert not (tmp_path / "x").exists()  # refused before any worker or folder


def test_a_run_refused_before_any_job_leaves_no_folder_and_a_started_one_keeps_its_own(tmp_path, monkeypatch):
    def refuse(planned, options, argv):
        raise UsageError("refused by the executor")

    monkeypatch.setattr(api, "run_experiment", refuse)
    with pytest.raises(UsageError, match="refused by the executor"):
        run("d2l", backends=["numpy"], out=tmp_path / "runs" / "x", progress=False)
    assert not (tmp_path / "runs").exists()

    def fail_after_a_file(planned, options, argv):
        (options.out_dir / "epochs.csv").write_text("")
        raise RuntimeError("a failure mid-run")

    monkeypatch.setattr(api, "run_experiment", fail_after_a_file)
    with pytest.raises(RuntimeError):
        run("d2l", backends=["numpy"], out=tmp_path / "runs" / "x", progress=False)
    assert (tmp_path / "runs" / "x" / "epochs.csv").exists()  # what a started run wrote stays


def test_runner_options_pass_through_by_name():
    assert {"threads", "job_timeout", "progress", "bench_timing"} <= set(api.RUN_FIELDS)
    model, train, options = api.split_overrides({"epochs": 3, "dropouts": [0.2, 0.5], "bench_timing": True})
    assert (model, train, options) == ({"dropouts": (0.2, 0.5)}, {"epochs": 3}, {"bench_timing": True})


def test_the_package_stays_light_until_run_or_load_is_used():
    code = ("import sys, experiments; light = 'pandas' not in sys.modules and 'experiments.api' not in sys.modules; "
            "f = experiments.run; print(light, callable(f), 'pandas' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=backends.PROJECT_ROOT)
    assert done.stdout.split() == ["True", "True", "True"], done.stderr
    with pytest.raises(AttributeError):
        import experiments

        experiments.nosuch  # noqa: B018


# ----------------------------------------------------------------------------------------------------------- progress
def _job(seed=0, epochs=2):
    return Job(backend="numpy", variant="d2l", model=ModelSpec(), train=TrainSpec(epochs=epochs, seed=seed))


def _drive(progress, jobs):
    for index, job in enumerate(jobs, start=1):
        progress.update(index, job, "starting")
        for epoch in range(1, job.train.epochs + 1):
            progress.epoch(index, job, {"epoch": epoch, "val_acc": 0.5 + epoch / 100, "epoch_seconds": 0.25})
        progress.update(index, job, "done", final=True)


def test_progress_is_one_line_per_job_when_stderr_is_not_a_terminal(monkeypatch):
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    _drive(Progress(True, 2), [_job(0), _job(1)])
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2 and "\r" not in stream.getvalue()
    assert lines[0].startswith("[1/2] numpy") and lines[0].endswith("epoch 2/2 val_acc 0.5200 0.25 s/epoch  done")
    assert "seed 1" in lines[1]


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_draws_a_tqdm_bar_per_job_on_a_terminal(monkeypatch):
    stream = Terminal()
    monkeypatch.setattr(sys, "stderr", stream)
    _drive(Progress(True, 2), [_job(0, epochs=3), _job(1, epochs=3)])
    text = stream.getvalue()
    finals = [part for part in text.split("\n") if part.strip()]
    assert len(finals) == 2, text  # each bar ends its line when its job ends
    assert all("3/3 epochs" in part.split("\r")[-1] and "done" in part for part in finals)
    silent = io.StringIO()
    monkeypatch.setattr(sys, "stderr", silent)
    _drive(Progress(False, 1), [_job()])
    assert silent.getvalue() == ""
