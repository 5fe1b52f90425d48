"""Probes: extra measurements an experiment asks the worker to take, written as rows of extra CSV tables.

A probe runs inside the worker, beside the backend, and talks to it only through the Backend contract, so it works
for every framework. It yields ``(table, row)`` pairs; the runner writes each table to ``<table>.csv`` in the run
folder, with the job's keys added to every row. Framework-free: NumPy only (the MXNet worker pins numpy 1.23).

Row keys must not repeat the job's columns (``backend, impl, mode, variant, seed`` and the variant's parameters such
as ``noise`` or ``epochs``), hence ``forward_mode`` rather than ``mode`` below. Values are plain Python numbers so that
they travel as JSON.

The probes of the exercises:

- ``train_eval`` (exercise 2): loss and accuracy, noise off, on a fixed subset of the *training* set (its first
  ``TRAIN_EVAL_EXAMPLES`` examples), at epoch 0 and after every epoch: ``train_eval.csv``. The trainer's own
  ``train_loss``/``train_acc`` are measured with the noise on while the weights move, so they are no fair side of a
  generalisation gap; this is.
- ``activation_variance`` (exercise 3): on a fixed probe batch (the first ``PROBE_BATCH`` test images), the variance of
  every hidden layer's activations before and after the noise, in training mode (one stochastic pass, with noise the
  probe draws and injects, so that training is not disturbed) and in eval mode, at epoch 0 and after every epoch:
  ``activations.csv``.
- ``test_time_noise`` (exercise 4): after the last epoch, on the whole test set: accuracy with the noise off, of
  single stochastic passes, and of Monte-Carlo averages of N stochastic passes (``MC_PASSES``), and how much the
  predictions move between passes: ``test_time.csv`` and ``test_time_spread.csv``.
"""
from __future__ import annotations

from typing import Any, Iterator

import numpy as np

from backends.contract.noise import draw_masks

Row = dict[str, Any]

TRAIN_EVAL_EXAMPLES = 10_000
PROBE_BATCH = 1024
MC_PASSES = (1, 2, 5, 10, 20, 50)


class Probe:
    """Base probe: measures nothing. Subclasses override one or both hooks."""

    def on_epoch(self, *, backend, data, epoch: int, job) -> Iterator[tuple[str, Row]]:
        """Called after every epoch's evaluation, and once with ``epoch=0`` before training."""
        return iter(())

    def on_end(self, *, backend, data, job) -> Iterator[tuple[str, Row]]:
        """Called once after the last epoch."""
        return iter(())


class TrainEval(Probe):
    """Exercise 2: the training subset evaluated like the test set (noise off, current weights)."""

    table = "train_eval"

    def on_epoch(self, *, backend, data, epoch, job):
        n = min(TRAIN_EVAL_EXAMPLES, len(data.train_y))
        metrics = backend.evaluate(x=data.train_x[:n], y=data.train_y[:n])
        yield self.table, {"epoch": int(epoch), "train_eval_loss": float(metrics.loss),
                           "train_eval_acc": float(metrics.acc), "train_eval_examples": int(n)}


def activation_stats(values: np.ndarray) -> dict[str, float]:
    """Statistics of one activation matrix (examples x units), in float64.

    ``var`` pools every element (examples and units), so that for inverted dropout with rate p the post-noise value
    is ``(var + mean**2) / (1 - p) - mean**2`` of the pre-noise one; ``unit_var`` is the variance of each unit over
    the examples, averaged over units."""
    a = np.asarray(values, dtype=np.float64)
    a = a.reshape(len(a), -1)
    return {"var": float(a.var()), "mean": float(a.mean()), "mean_sq": float(np.mean(a * a)),
            "unit_var": float(a.var(axis=0).mean()), "zero_fraction": float(np.mean(a == 0.0))}


class ActivationVariance(Probe):
    """Exercise 3: hidden activations of a fixed probe batch, before and after the noise, in both modes.

    The training-mode pass injects noise drawn from the probe's own generator (seeded by the job's seed and the
    epoch, in the form the contract's ``masks`` take, the same draw the parity ladder checks every backend against),
    so the probe leaves the backend's noise stream alone: a probed run trains exactly like an unprobed run with the
    same seed. A backend without mask injection gets its own noise instead (and its stream advances)."""

    table = "activations"

    def on_epoch(self, *, backend, data, epoch, job):
        batch = data.test_x[:PROBE_BATCH]
        rng = np.random.default_rng([int(job.train.seed), int(epoch), 0xAC7])
        inject = getattr(getattr(backend, "capabilities", None), "supports_masks", False)
        for forward_mode, train in (("eval", False), ("train", True)):
            masks = draw_masks(job.model, len(batch), rng) if train and inject else None
            activations = backend.activations(x=batch, train=train, masks=masks)
            for i in range(len(job.model.hiddens)):
                for stage in ("pre_noise", "post_noise"):
                    row = {"epoch": int(epoch), "layer": i + 1, "forward_mode": forward_mode, "stage": stage,
                           "probe_examples": int(len(batch))}
                    row.update(activation_stats(activations[f"hidden_{i}/{stage}"]))
                    yield self.table, row


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _nll(probs: np.ndarray, y: np.ndarray) -> float:
    return float(-np.mean(np.log(np.clip(probs[np.arange(len(y)), y], 1e-12, None))))


def test_time_rows(eval_logits: np.ndarray, pass_logits: list[np.ndarray], y: np.ndarray,
                   passes: tuple[int, ...] = MC_PASSES) -> Iterator[tuple[str, Row]]:
    """The rows of exercise 4 from the logits of the noise-off pass and of K stochastic passes (K = max(passes)).

    ``test_time``: method ``noise off`` (n_passes 0), ``single pass`` (the mean over the K passes of each pass's own
    accuracy, with its sd), and ``mc average`` for every N in ``passes`` (softmax probabilities of the first N passes
    averaged, then the arg max). ``test_time_spread``: how much the prediction moves from pass to pass."""
    y = np.asarray(y)
    eval_probs = softmax(eval_logits)
    eval_pred = eval_probs.argmax(axis=1)
    yield "test_time", {"method": "noise off", "n_passes": 0, "acc": float(np.mean(eval_pred == y)),
                        "loss": _nll(eval_probs, y), "acc_sd": 0.0}
    probs = np.stack([softmax(logits) for logits in pass_logits])  # (K, n, classes)
    preds = probs.argmax(axis=2)  # (K, n)
    single_acc = np.mean(preds == y[None, :], axis=1)
    single_loss = [_nll(p, y) for p in probs]
    yield "test_time", {"method": "single pass", "n_passes": 1, "acc": float(single_acc.mean()),
                        "loss": float(np.mean(single_loss)),
                        "acc_sd": float(single_acc.std(ddof=1)) if len(single_acc) > 1 else 0.0}
    cumulative = np.cumsum(probs, axis=0)
    for n in passes:
        averaged = cumulative[n - 1] / n
        yield "test_time", {"method": "mc average", "n_passes": int(n),
                            "acc": float(np.mean(averaged.argmax(axis=1) == y)), "loss": _nll(averaged, y),
                            "acc_sd": 0.0}
    mc_pred = (cumulative[-1] / len(probs)).argmax(axis=1)
    changes = preds != preds[0][None, :]
    rows = np.arange(preds.shape[1])
    yield "test_time_spread", {
        "n_passes": int(len(probs)),
        # a pass against the next one: the fraction of images whose predicted class differs
        "flip_rate": float(np.mean(preds[1:] != preds[:-1])) if len(probs) > 1 else 0.0,
        # images whose predicted class is not the same in all K passes
        "unstable_fraction": float(np.mean(changes.any(axis=0))),
        # std over the passes of the probability given to the class the MC average predicts, averaged over images
        "mean_prob_std": float(np.mean(probs[:, rows, mc_pred].std(axis=0))),
        # a single pass against the noise-off prediction, and the K-pass average against it
        "single_vs_noise_off": float(np.mean(preds != eval_pred[None, :])),
        "mc_vs_noise_off": float(np.mean(mc_pred != eval_pred)),
    }


class TestTimeNoise(Probe):
    """Exercise 4: after training, the test set with the noise off, on for one pass, and averaged over N passes."""

    __test__ = False  # not a pytest class

    def on_end(self, *, backend, data, job):
        x, y = data.test_x, data.test_y
        eval_logits = np.asarray(backend.forward(x=x, train=False))
        pass_logits = [np.asarray(backend.forward(x=x, train=True)) for _ in range(max(MC_PASSES))]
        yield from test_time_rows(eval_logits, pass_logits, y)


PROBES: dict[str, type[Probe]] = {
    "train_eval": TrainEval,
    "activation_variance": ActivationVariance,
    "test_time_noise": TestTimeNoise,
}
