"""Rung 5, the backends' own noise (statistics, p = 0 and p = 1, seeding, fresh draws), and rung 6, concise and
scratch are the same function. The statistical checks hold a measured statistic within four standard errors of its
expectation; their ``max_abs_err`` is the statistic's distance from it."""
from __future__ import annotations

import numpy as np

from backends import contract
from experiments.parity.checks import Check, close, differs, elementwise, holds, within
from experiments.parity.factory import oracle_for

IMPLS = ("concise", "scratch")


def dropout_stats(case, make, fashion) -> list[Check]:
    p = 0.5
    x = fashion.train_x[:2048]
    backend = make(case.backend, model=case.model(dropouts=(p, p)), train=case.train())
    evaluated = backend.activations(x=x, train=False)
    checks = [close(f"noise off in evaluation: hidden_{layer}", evaluated[f"hidden_{layer}/post_noise"],
                    evaluated[f"hidden_{layer}/pre_noise"], rtol=0) for layer in range(2)]
    first, second = backend.activations(x=x, train=True), backend.activations(x=x, train=True)
    pre, post = first["hidden_0/pre_noise"], first["hidden_0/post_noise"]
    alive = pre > 0
    dropped = post[alive] == 0
    n = int(alive.sum())
    checks.append(within("zero fraction of live units", dropped.mean(), p, 4 * np.sqrt(p * (1 - p) / n)))
    checks.append(elementwise("survivors scaled by 1/(1-p)", post[alive][~dropped], pre[alive][~dropped] / (1 - p),
                              rtol=1e-6))
    checks.append(within("dropout preserves the mean", post.mean(), pre.mean(), 4 * post.std() / np.sqrt(post.size)))
    same_input = first["hidden_0/pre_noise"] > 0
    changed = float(np.mean((first["hidden_0/post_noise"][same_input] == 0)
                            != (second["hidden_0/post_noise"][same_input] == 0)))
    checks.append(differs("consecutive calls draw new masks (fraction of units that changed)", changed, 1.0, 0.0))
    return checks


def p0_p1(case, make, fashion) -> list[Check]:
    x, y = fashion.train_x[:512], fashion.train_y[:512]
    keep_all = make(case.backend, model=case.model(dropouts=(0.0, 0.0)), train=case.train())
    activations = keep_all.activations(x=x, train=True)
    checks = [close(f"p = 0 is the identity: hidden_{layer}", activations[f"hidden_{layer}/post_noise"],
                    activations[f"hidden_{layer}/pre_noise"], rtol=0) for layer in range(2)]
    drop_all = make(case.backend, model=case.model(dropouts=(1.0, 1.0)), train=case.train())
    activations = drop_all.activations(x=x, train=True)
    for layer in range(2):
        post = activations[f"hidden_{layer}/post_noise"]
        checks.append(close(f"p = 1 gives zeros, not NaN: hidden_{layer}", post, np.zeros_like(post), rtol=0))
    checks.append(holds("p = 1: finite logits", bool(np.all(np.isfinite(drop_all.forward(x=x, train=True))))))
    loss, grads = drop_all.loss_and_grads(x=x, y=y)
    checks.append(holds("p = 1: finite loss and gradients",
                        bool(np.isfinite(loss) and all(np.all(np.isfinite(g)) for g in grads.values()))))
    checks.append(close("p = 1: nothing reaches layer 0 (its kernel gradient is 0)", grads["dense_0/kernel"],
                        np.zeros_like(grads["dense_0/kernel"]), rtol=0))
    return checks


def seeded_noise(case, make, fashion) -> list[Check]:
    model = case.model()
    x, y = fashion.train_x[:256], fashion.train_y[:256]

    def three_native_steps(seed):
        backend = make(case.backend, model=model, train=case.train(), seed=seed)
        losses = [backend.train_step(x=x, y=y) for _ in range(3)]
        return losses, backend.get_params()

    losses, params = three_native_steps(seed=1)
    losses_again, params_again = three_native_steps(seed=1)
    checks = [close("the same seed reproduces the losses", losses_again, losses, rtol=0)]
    checks += [close(f"the same seed reproduces {key}", params_again[key], params[key], rtol=0) for key in params]
    losses_other, _ = three_native_steps(seed=2)
    checks.append(differs("another seed draws other noise (losses)", float(np.abs(np.subtract(losses_other,
                                                                                                losses)).max()),
                          max(abs(v) for v in losses), 0.0))
    backend = make(case.backend, model=model, train=case.train(), seed=1)
    first, _ = backend.loss_and_grads(x=x, y=y)
    second, _ = backend.loss_and_grads(x=x, y=y)
    checks.append(differs("two consecutive draws on the same batch and weights differ", abs(first - second),
                          abs(first), 0.0))
    return checks


def gaussian_additive_stats(case, make, fashion) -> list[Check]:
    x = fashion.train_x[:2048]
    p = 0.4
    gaussian = make(case.backend, model=case.model(noise="gaussian", dropouts=(p, p)),
                    train=case.train()).activations(x=x, train=True)
    pre, post = gaussian["hidden_0/pre_noise"], gaussian["hidden_0/post_noise"]
    alive = pre > 1e-3
    factor = post[alive] / pre[alive]
    n, variance = factor.size, p / (1 - p)
    checks = [within("gaussian: mean factor", factor.mean(), 1.0, 4 * np.sqrt(variance / n)),
              within("gaussian: variance / p/(1-p)", factor.var() / variance, 1.0, 4 * np.sqrt(2 / n))]
    additive = make(case.backend, model=case.model(noise="additive", dropouts=(p, p)),
                    train=case.train()).activations(x=x, train=True)
    z = (additive["hidden_0/post_noise"] - additive["hidden_0/pre_noise"]) / p
    n = z.size
    return checks + [within("additive: mean of the noise / p", z.mean(), 0.0, 4 / np.sqrt(n)),
                     within("additive: variance of the noise / p^2", z.var(), 1.0, 4 * np.sqrt(2 / n))]


def dropconnect_stats(case, make, fashion) -> list[Check]:
    p = 0.5
    x, y = fashion.train_x[:512], fashion.train_y[:512]
    backend = make(case.backend, model=case.model(noise="dropconnect", dropouts=(p, p)), train=case.train())
    activations = backend.activations(x=x, train=True)
    checks = [close("dropconnect leaves activations alone", activations["hidden_0/post_noise"],
                    activations["hidden_0/pre_noise"], rtol=0)]
    # The last kernel's gradient is h^T (softmax - onehot) * mask / (1 - p): softmax - onehot is never exactly 0, so
    # beyond the rows of dead units every exact zero is a masked weight. Eight draws pool 8 x 256 x 10 entries.
    # A unit of hidden layer 1 can be dead in one draw and alive in the next (its inputs are masked too), so dead
    # rows are dropped per draw.
    kernels = [backend.loss_and_grads(x=x, y=y)[1]["dense_2/kernel"] for _ in range(8)]
    masked = np.concatenate([(k[np.any(k != 0, axis=1)] == 0).ravel() for k in kernels])
    checks.append(within("fraction of masked weights", masked.mean(), p, 4 * np.sqrt(p * (1 - p) / masked.size)))
    changed = float(np.mean((kernels[0] == 0) != (kernels[1] == 0)))
    checks.append(differs("a new step draws a new weight mask (fraction changed)", changed, 1.0, 0.0))
    expected = oracle_for(backend.model, case.train()).forward(x=x, train=False)
    return checks + [close("evaluation ignores the masks", backend.forward(x=x, train=False), expected)]


def concise_scratch(case, make, fashion) -> list[Check]:
    """Rung 6: the framework's Dropout layer and D2L's dropout_layer, the same injected draws: the same numbers."""
    x, y = fashion.train_x[:256], fashion.train_y[:256]
    results = {}
    for impl in IMPLS:
        model = case.model(impl=impl)
        masks = contract.draw_masks(model, 256, np.random.default_rng(3))
        backend = make(case.backend, model=model, train=case.train())
        results[impl] = (backend.forward(x=x, train=False), *backend.loss_and_grads(x=x, y=y, masks=masks))
    checks = [close("eval logits", results["scratch"][0], results["concise"][0]),
              close("loss", results["scratch"][1], results["concise"][1])]
    return checks + [close(f"grad {key}", results["scratch"][2][key], grad) for key, grad in results["concise"][2].items()]
