"""The job loop inside the worker process, run here in-process with a recording backend: what a backend actually
receives from the worker, epoch by epoch."""
from __future__ import annotations

import numpy as np
import pytest

from backends import registry
from backends.numpy.backend import Backend as NumpyBackend
from experiments import data
from experiments.running import worker
from experiments.catalog import build

N_TRAIN = 1500


class RecordingBackend(NumpyBackend):
    """The NumPy backend, keeping a copy of every epoch's batches as the worker hands them over."""

    received: list[list[tuple[np.ndarray, np.ndarray]]] = []

    def train_epoch(self, *, batches):
        RecordingBackend.received.append([(x.copy(), y.copy()) for x, y in batches])
        return super().train_epoch(batches=batches)


@pytest.fixture
def recorded(monkeypatch):
    RecordingBackend.received = []
    monkeypatch.setattr(registry, "load_class", lambda name, tuning="stock": RecordingBackend)
    job = build("d2l", backends=["numpy"], train_overrides={"epochs": 3, "train_limit": N_TRAIN,
                                                            "batch_size": 100}).jobs()[0]
    events = []
    worker.run_job({"job": job.to_dict(), "data_dir": str(data.locate(download=False, progress=False)),
                    "threads": 1}, events.append)
    assert events[-1]["event"] == "done"
    return RecordingBackend.received, data.load(data.locate(download=False, progress=False), train_limit=N_TRAIN)


def rows_of(batches, dataset) -> np.ndarray:
    """Which training example each received row is (the rows of Fashion-MNIST's first 1,500 images are unique)."""
    index = {dataset.train_x[i].tobytes(): i for i in range(len(dataset.train_x))}
    return np.array([index[row.tobytes()] for x, _ in batches for row in x])


def test_the_batches_a_backend_receives_cover_the_training_set_once_and_reshuffle_every_epoch(recorded):
    epochs, dataset = recorded
    assert len(epochs) == 3
    orders = [rows_of(batches, dataset) for batches in epochs]
    for order, batches in zip(orders, epochs):
        assert sorted(order) == list(range(N_TRAIN))  # every example once, none twice
        assert [len(y) for _, y in batches] == [100] * 15
        labels = np.concatenate([y for _, y in batches])
        np.testing.assert_array_equal(labels, dataset.train_y[order])  # images and labels stay paired
    for earlier, later in zip(orders, orders[1:]):
        assert not np.array_equal(earlier, later)
        # a reshuffle of the examples, not a new order of the same batches
        assert {frozenset(b) for b in earlier.reshape(15, 100)} != {frozenset(b) for b in later.reshape(15, 100)}
