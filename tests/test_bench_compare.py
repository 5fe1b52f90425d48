"""``compare`` of two bench folders whose jobs ran in rounds: a job's samples are its rounds' steady times (one per
round, as ``rounds.csv`` has them), never its epochs pooled over the rounds, warm-ups and all."""
from __future__ import annotations

import json
import shutil

import pandas as pd

from experiments import cli
from experiments.bench.rows import COLUMNS as BENCH_COLUMNS
from experiments.running.rundir import EPOCH_COLUMNS, SUMMARY_COLUMNS
from tests.helpers import read_csv

TIERS = ("stock", "tuned")


def write_bench(folder, rounds: dict[str, list[float]]):
    """A bench folder of numpy eager in both tiers: ``rounds[tier]``, one steady time per round; each round's job
    has a 2 s warm-up epoch and two steady epochs 1 % either side of its round's time."""
    folder.mkdir(parents=True)
    epochs, summary, bench = [], [], []
    for tuning in TIERS:
        key = {"backend": "numpy", "tuning": tuning, "impl": "concise", "mode": "eager", "variant": "d2l", "seed": 0}
        for number, steady in enumerate(rounds[tuning], start=1):
            for epoch, seconds in enumerate((2.0, steady * 0.99, steady * 1.01), start=1):
                epochs.append({"round": number, **key, "epoch": epoch, "train_loss": 0.5, "train_acc": 0.8,
                               "val_loss": 0.5, "val_acc": 0.8, "epoch_seconds": seconds, "eval_seconds": 0.1,
                               "n_train": 2000, "device": "cpu"})
            summary.append({"round": number, **key, "status": "ok", "error": "", "final_val_acc": 0.8,
                            "median_epoch_seconds": steady})
        median = sorted(rounds[tuning])[len(rounds[tuning]) // 2]
        bench.append({"backend": "numpy", "mode": "eager", "tuning": tuning, "device": "cpu", "status": "ok",
                      "steady_median_seconds": median, "floor_seconds": 0.25, "ratio_to_floor": median / 0.25})
    pd.DataFrame(epochs, columns=["round"] + EPOCH_COLUMNS + ["n_train", "device"]).to_csv(folder / "epochs.csv",
                                                                                           index=False)
    pd.DataFrame(summary, columns=["round"] + SUMMARY_COLUMNS).to_csv(folder / "summary.csv", index=False)
    pd.DataFrame(bench, columns=BENCH_COLUMNS).to_csv(folder / "bench.csv", index=False)
    (folder / "meta.json").write_text(json.dumps({"python": "3.11.7", "cpu": "AMD EPYC", "threads": 2,
                                                  "device": "cpu", "started": "2026-12-01T10:00:00+0000"}))
    return folder


def compare(a, b, tmp_path):
    out = tmp_path / "cmp"
    shutil.rmtree(out, ignore_errors=True)
    status = cli.main(["compare", str(a), str(b), "--out", str(out)])
    return status, {r["tuning"]: r for r in read_csv(out / "compare.csv")}


def test_a_bench_is_compared_on_its_rounds_steady_times(tmp_path):
    a = write_bench(tmp_path / "a", {"stock": [1.0, 1.05, 1.1], "tuned": [0.5, 0.52, 0.54]})
    b = write_bench(tmp_path / "b", {"stock": [1.5, 1.575, 1.65], "tuned": [0.52, 0.5, 0.54]})
    status, rows = compare(a, b, tmp_path)
    assert status == 0
    stock, tuned = rows["stock"], rows["tuned"]
    # one sample per round: three a side, the median of the rounds' steady times (no warm-up among them)
    assert (stock["steady_epochs_a"], stock["steady_epochs_b"]) == ("3", "3")
    assert float(stock["steady_seconds_a"]) == 1.05 and float(stock["steady_seconds_b"]) == 1.575
    assert stock["time"] == "slower" and float(stock["time_ratio"]) == 1.5
    # the same rounds in another order: the same job
    assert tuned["time"] == "within the noise" and float(tuned["time_ratio"]) == 1.0
    assert float(tuned["ratio_to_floor_a"]) == 0.52 / 0.25
