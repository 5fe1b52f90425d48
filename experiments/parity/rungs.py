"""The exact rungs: 1 static layout, 2 forward and evaluate, 3 loss and gradients with injected noise, 4 SGD steps
every step, and the whole-epoch rungs (``train_epoch``, the path the runner times, compiled modes included).

Each rung is ``(case, make, fashion) -> list[Check]``: it measures and never asserts, so that the tests and
``harness.py parity`` read the same numbers."""
from __future__ import annotations

import dataclasses

import numpy as np

from backends import contract
from backends.remote.client import RemoteError
from experiments.parity.checks import RTOL, Check, close, differs, holds, within
from experiments.parity.factory import ReluKinks, eval_reference, oracle_for

NUM_PARAMS = 269_322  # D2L's 784-256-256-10 MLP


# --- rung 1: static -----------------------------------------------------------------------------------------------
def layout(case, make, fashion) -> list[Check]:
    model = case.model()
    params = make(case.backend, model=model, train=case.train()).get_params()
    checks = [holds("canonical names and shapes", {k: v.shape for k, v in params.items()} == model.param_shapes()),
              holds(f"{NUM_PARAMS:,} parameters", sum(v.size for v in params.values()) == NUM_PARAMS
                    == model.num_params()),
              holds("float32", all(v.dtype == np.float32 for v in params.values()))]
    for key, value in contract.shared_init(model, 0).items():  # loads exactly what it was given, no transpose lost
        checks.append(close(f"shared init {key}", params.get(key, np.empty(0)), value, rtol=0))
    return checks


def set_params(case, make, fashion) -> list[Check]:
    model = case.model()
    backend = make(case.backend, model=model, train=case.train())
    other = contract.shared_init(model, 7)
    backend.set_params(params=other)
    checks = [close(f"round trip {key}", value, other[key], rtol=0) for key, value in backend.get_params().items()]
    wrong = dict(other, **{"dense_0/kernel": other["dense_0/kernel"].T.copy()})
    try:
        backend.set_params(params=wrong)
        refused = False
    except (ValueError, RemoteError) as exc:
        refused = "dense_0/kernel has shape" in str(exc)
    checks.append(holds("a transposed kernel is refused (dense_0/kernel has shape ...)", refused))
    return checks


def framework_init(case, make, fashion) -> list[Check]:
    model = case.model(init="framework")

    def params(seed):
        return make(case.backend, model=model, train=case.train(), seed=seed, shared_init=False).get_params()

    first, again, other = params(3), params(3), params(4)
    checks = [holds("canonical shapes", {k: v.shape for k, v in first.items()} == model.param_shapes())]
    checks += [close(f"same seed, same init: {key}", again[key], first[key], rtol=0) for key in first]
    change = float(np.abs(first["dense_0/kernel"] - other["dense_0/kernel"]).max())
    checks.append(differs("the seed reaches the init (dense_0/kernel, seeds 3 and 4)", change,
                          float(np.abs(first["dense_0/kernel"]).max()), 0.0))
    return checks


# --- rung 2: forward, noise off -----------------------------------------------------------------------------------
def forward_eval(case, make, fashion) -> list[Check]:
    model, train = case.model(), case.train()
    x = fashion.test_x[:512]
    expected = oracle_for(model, train).forward(x=x, train=False)
    backend = make(case.backend, model=model, train=train)
    logits = backend.forward(x=x, train=False)
    return [close("eval logits", logits, expected),
            close("eval is deterministic", backend.forward(x=x, train=False), logits, rtol=0)]


def evaluate_exact(case, make, fashion) -> list[Check]:
    """evaluate() (the path the runner reports) with dropout 0.5 in the spec: the oracle's noise-free numbers."""
    model, train = case.model(dropouts=(0.5, 0.5)), case.train()
    x, y = fashion.test_x[:2000], fashion.test_y[:2000]
    reference = oracle_for(model, train).evaluate(x=x, y=y)
    backend = make(case.backend, model=model, train=train)
    first, second = backend.evaluate(x=x, y=y), backend.evaluate(x=x, y=y)
    return [close("evaluate loss", first.loss, reference.loss),
            within("evaluate accuracy", first.acc, reference.acc, 1 / 2000, strict=False),
            close("evaluate is deterministic", [second.loss, second.acc], [first.loss, first.acc], rtol=0)]


# --- rung 3: loss and gradients with injected noise ----------------------------------------------------------------
def loss_grads(case, make, fashion) -> list[Check]:
    model, train = case.model(dropouts=(0.3, 0.5)), case.train()
    x, y = fashion.train_x[:256], fashion.train_y[:256]
    masks = contract.draw_masks(model, 256, np.random.default_rng(11))
    loss_ref, grads_ref = oracle_for(model, train).loss_and_grads(x=x, y=y, masks=masks)
    backend = make(case.backend, model=model, train=train)
    loss, grads = backend.loss_and_grads(x=x, y=y, masks=masks)
    checks = [close("loss", loss, loss_ref), holds("gradient names", set(grads) == set(grads_ref))]
    checks += [close(f"grad {key}", grads.get(key, np.empty(0)), grads_ref[key]) for key in grads_ref]
    logits = backend.forward(x=x, train=True, masks=masks)
    checks.append(close("train logits, injected", logits,
                        oracle_for(model, train).forward(x=x, train=True, masks=masks)))
    return checks


# --- rung 4: SGD steps, every step --------------------------------------------------------------------------------
def sgd_trajectory(case, make, fashion) -> list[Check]:
    """``case.steps`` SGD steps on consecutive real batches with injected noise; every step's loss and parameters.

    A failing check also names the steps so far at which a float32 forward puts one of the oracle's ReLUs on the
    other side of zero (``ReluKinks``): there every float32 framework may leave the oracle alike."""
    model, train = case.model(), case.train(weight_decay=case.weight_decay)
    oracle = oracle_for(model, train)
    kinks, kink_steps = ReluKinks(model, train), []
    backend = make(case.backend, model=model, train=train)
    rng = np.random.default_rng(5)
    checks = []
    for step in range(case.steps):
        x = fashion.train_x[step * 256:(step + 1) * 256]
        y = fashion.train_y[step * 256:(step + 1) * 256]
        masks = contract.draw_masks(model, 256, rng)
        flipped, smallest = kinks.count(oracle, x=x, masks=masks)
        if flipped:
            kink_steps.append(f"step {step}: {flipped} unit(s), the oracle's pre-activation {smallest:.2g}")
        loss_ref = oracle.train_step(x=x, y=y, masks=masks)
        step_checks = [close("loss", backend.train_step(x=x, y=y, masks=masks), loss_ref, step=step)]
        params, params_ref = backend.get_params(), oracle.get_params()
        step_checks += [close(key, params[key], params_ref[key], step=step) for key in params_ref]
        if kink_steps:
            note = f" (float32 puts a ReLU of the oracle on the other side of zero at {'; '.join(kink_steps)})"
            step_checks = [c if c.passed else dataclasses.replace(c, what=c.what + note) for c in step_checks]
        checks += step_checks
    return checks


# --- whole epochs -------------------------------------------------------------------------------------------------
def _batches(fashion, n: int, seed: int) -> contract.EpochBatches:
    order = np.random.default_rng(seed).permutation(n)
    return contract.EpochBatches(x=fashion.train_x[:n], y=fashion.train_y[:n], order=order, batch_size=256)


def epoch_no_noise(case, make, fashion) -> list[Check]:
    """train_epoch at p = 0 with the last partial batch kept (3 batches of 256 and one of 232), with and without
    weight decay (a backend may update differently without it, as MXNet's compiled epoch does)."""
    model, train = case.model(dropouts=(0.0, 0.0)), case.train(weight_decay=case.weight_decay)
    batches = _batches(fashion, 1000, 2)
    oracle = oracle_for(model, train)
    expected = oracle.train_epoch(batches=batches)
    backend = make(case.backend, model=model, train=train)
    metrics = backend.train_epoch(batches=batches)
    checks = [close("epoch mean loss", metrics.loss, expected.loss),
              within("epoch accuracy", metrics.acc, expected.acc, 1 / 1000, strict=False)]
    params = backend.get_params()
    checks += [close(f"after one epoch: {key}", params[key], value) for key, value in oracle.get_params().items()]
    evaluation = backend.evaluate(x=fashion.test_x, y=fashion.test_y)
    reference = oracle.evaluate(x=fashion.test_x, y=fashion.test_y)
    return checks + [close("exact test loss", evaluation.loss, reference.loss),
                     within("exact test accuracy", evaluation.acc, reference.acc, 2 / 10_000, strict=False)]


def epoch_noise_on(case, make, fashion) -> list[Check]:
    """At p = 0 a path that forgot the training flag (Gluon's Dropout in predict mode, Keras' ``training`` lost, as
    in D2L's bug B1) would still pass. At p = 0.5 the same epoch must leave the noise-free trajectory by far more than
    the ladder's tolerance, and the model must still learn."""
    model, train = case.model(dropouts=(0.5, 0.5)), case.train()
    batches = _batches(fashion, 1000, 2)
    noise_free = oracle_for(dataclasses.replace(model, dropouts=(0.0, 0.0)), train)
    noise_free.train_epoch(batches=batches)
    backend = make(case.backend, model=model, train=train)
    x, y = fashion.test_x[:2000], fashion.test_y[:2000]
    start = backend.evaluate(x=x, y=y)
    backend.train_epoch(batches=batches)
    params = backend.get_params()
    checks = [differs(f"{key} left the noise-free trajectory", float(np.abs(params[key] - value).max()),
                      float(np.abs(value).max()), 100 * RTOL)
              for key, value in noise_free.get_params().items() if key.endswith("/kernel")]
    after = backend.evaluate(x=x, y=y)
    return checks + [Check("the test loss fell (learning)", after.loss, after.loss / start.loss, start.loss,
                           after.loss < start.loss, "abs < tol")]


def epoch_new_noise(case, make, fashion) -> list[Check]:
    """Two epochs from the same weights on the same batches: the second must draw new noise (a key or seed reset per
    epoch, or one compiled in as a constant, would repeat the first epoch's trajectory exactly)."""
    model, train = case.model(dropouts=(0.5, 0.5)), case.train()
    batches = _batches(fashion, 768, 5)
    backend = make(case.backend, model=model, train=train)
    start = backend.get_params()
    first = backend.train_epoch(batches=batches)
    after_first = backend.get_params()
    backend.set_params(params=start)
    second = backend.train_epoch(batches=batches)
    after_second = backend.get_params()
    moved = max(float(np.abs(after_second[k] - after_first[k]).max()) / float(np.abs(after_first[k]).max())
                for k in after_first if k.endswith("/kernel"))
    return [differs("epoch 2's kernels differ from epoch 1's (relative)", moved, 1.0, 100 * RTOL),
            holds("the two epochs' losses differ", first.loss != second.loss)]


def evaluate_chunks(case, make, fashion) -> list[Check]:
    """The backends evaluate in chunks of 10,000 examples: 23,457 examples make three, the last of 3,457. The
    reference is computed in one piece, from the oracle's logits over all of them."""
    model, train = case.model(dropouts=(0.5, 0.5)), case.train()
    x, y = fashion.train_x[:23_457], fashion.train_y[:23_457]
    loss, acc = eval_reference(oracle_for(model, train).forward(x=x, train=False), y)
    evaluation = make(case.backend, model=model, train=train).evaluate(x=x, y=y)
    return [close("loss over 23,457 examples", evaluation.loss, loss),
            within("accuracy over 23,457 examples", evaluation.acc, acc, 2 / len(y), strict=False)]

