"""D2L's dropout MLP in Flax linen, as the section's JAX tab writes it (``flax.linen``, not ``flax.nnx``, so that the
parameters are a plain pytree that one ``jax.jit`` takes and returns).

- ``dropout_layer(X, dropout, key)``: the section's from-scratch dropout, its key passed in on every call;
- ``DropoutMLP`` (concise): ``nn.Dense``, relu, ``nn.Dropout(p, deterministic=not training)`` fed by the
  ``'dropout'`` RNG stream, per hidden layer, then the output ``nn.Dense``;
- ``DropoutMLPScratch``: three ``nn.Dense`` from ``setup`` and the section's ``dropout_layer``, its key from the same
  ``'dropout'`` stream (D2L's default-argument key is evaluated once, so its mask never changes: fixed here).

The Dense layers are named ``dense_0``, ``dense_1``, ... in both, so both impls get the same Flax default init
(lecun_normal kernel, zero bias) from one key, and the canonical layout needs no transpose (Flax kernels are
(in, out) already). Both return (logits, pre-noise activations, post-noise activations). What the harness adds: the
other noise kinds (``gaussian``/``additive`` noise on activations with ``jax.random.normal``, ``dropconnect`` on the
kernels that read the hidden layers, ``drop_connect``), injected draws (the contract's ``masks``, ``inject``), and
``apply``, the model's forward with its noise as the backend runs it.

Threads: XLA's CPU client sizes its thread pool from the CPUs the process may run on, and no XLA flag bounds it
(``--xla_cpu_multi_thread_eigen=false`` is accepted but does not bound the matmul threads;
``--intra_op_parallelism_threads`` is rejected as an unknown flag). So when ``DROPBENCH_THREADS`` (set by the worker
for each job process) asks for fewer threads than the process may use, this module narrows the process's CPU
affinity to that many CPUs at import, before jax is imported and its client started (threads created later inherit
it), and for one thread adds ``--xla_cpu_multi_thread_eigen=false`` to ``XLA_FLAGS`` when XLA_FLAGS has no thread
setting of its own. Every module of this package imports this one before jax.
"""
from __future__ import annotations

import os


def _limit_cpu_threads(threads: int | None) -> None:
    """Bound XLA's CPU thread pool; effective only before the XLA CPU client is created (see the module doc)."""
    if not threads or threads < 1:
        return
    flags = os.environ.get("XLA_FLAGS", "")
    if threads == 1 and "multi_thread_eigen" not in flags and "intra_op_parallelism" not in flags:
        os.environ["XLA_FLAGS"] = (flags + " --xla_cpu_multi_thread_eigen=false").strip()
    if hasattr(os, "sched_getaffinity"):
        allowed = sorted(os.sched_getaffinity(0))
        if threads < len(allowed):
            os.sched_setaffinity(0, allowed[:threads])


try:
    _limit_cpu_threads(int(os.environ.get("DROPBENCH_THREADS", "0") or 0))
except ValueError:
    pass

import flax.linen as nn  # noqa: E402  (after the thread settings, which must precede the XLA client)
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from backends.contract import additive_noise_scale, gaussian_noise_scale, keep_scale  # noqa: E402


def dropout_layer(X, dropout: float, key):
    """The section's from-scratch dropout, with the key passed in by the caller on every call. p = 0 is the exact
    identity (D2L's ``u > 0`` could drop an element with probability 2**-24); p = 1 gives zeros."""
    assert 0 <= dropout <= 1
    if dropout == 1:
        return jnp.zeros_like(X)
    if dropout == 0:
        return X
    mask = (jax.random.uniform(key, X.shape) > dropout).astype(jnp.float32)
    return mask * X / (1.0 - dropout)


def inject(H, draw, p: float, noise: str):
    """Apply an injected draw (a keep mask for dropout, N(0, 1) for the Gaussian kinds) exactly as the oracle does."""
    if noise == "dropout":
        return H * (draw * jnp.float32(keep_scale(p)))
    if noise == "gaussian":
        return H * (1.0 + jnp.float32(gaussian_noise_scale(p)) * draw)
    if noise == "additive":
        return H + jnp.float32(additive_noise_scale(p)) * draw
    raise ValueError(f"noise {noise!r} is not applied to activations")


def gaussian_noise(H, p: float, noise: str, key):
    """Native multiplicative or additive Gaussian noise with ``jax.random.normal`` (Flax has no layer for these)."""
    if p == 0:
        return H
    return inject(H, jax.random.normal(key, H.shape, dtype=H.dtype), p, noise)


class DropoutMLP(nn.Module):
    """Concise: Dense, relu, nn.Dropout, ... as in the section; returns (logits, pre-noise, post-noise).

    ``dot_general`` is ``nn.Dense``'s own field (its product; ``lax.dot_general`` when None) and ``dropout_module``
    the dropout layer (``nn.Dropout``); the tuned tier hands other ones in."""

    num_hiddens: tuple
    num_outputs: int
    dropouts: tuple
    noise: str = "dropout"
    dot_general: object = None
    dropout_module: type = nn.Dropout

    @nn.compact
    def __call__(self, X, training: bool, draws=None):
        H = X.reshape((X.shape[0], -1))
        pre, post = [], []
        for i, (width, p) in enumerate(zip(self.num_hiddens, self.dropouts)):
            H = nn.relu(nn.Dense(width, name=f"dense_{i}", dot_general=self.dot_general)(H))
            pre.append(H)
            if self.noise != "dropconnect":  # dropconnect masks kernels, outside the module (``drop_connect``)
                if training and draws is not None:
                    H = inject(H, draws[i], p, self.noise)
                elif self.noise == "dropout":
                    H = self.dropout_module(p, deterministic=not training)(H)
                elif training:
                    H = gaussian_noise(H, p, self.noise, self.make_rng("dropout"))
            post.append(H)
        logits = nn.Dense(self.num_outputs, name=f"dense_{len(self.num_hiddens)}", dot_general=self.dot_general)(H)
        return logits, pre, post


class DropoutMLPScratch(nn.Module):
    """Scratch: the Dense layers from ``setup`` and the section's ``dropout_layer``, its key from the 'dropout'
    stream; returns (logits, pre-noise, post-noise)."""

    num_hiddens: tuple
    num_outputs: int
    dropouts: tuple
    noise: str = "dropout"
    dot_general: object = None

    def setup(self):  # named dense_0, dense_1, ...
        self.dense = [nn.Dense(w, dot_general=self.dot_general) for w in (*self.num_hiddens, self.num_outputs)]

    def __call__(self, X, training: bool, draws=None):
        H = X.reshape((X.shape[0], -1))
        pre, post = [], []
        for i, p in enumerate(self.dropouts):
            H = nn.relu(self.dense[i](H))
            pre.append(H)
            if training and self.noise != "dropconnect":
                if draws is not None:
                    H = inject(H, draws[i], p, self.noise)
                elif self.noise == "dropout":
                    H = dropout_layer(H, p, self.make_rng("dropout"))
                else:
                    H = gaussian_noise(H, p, self.noise, self.make_rng("dropout"))
            post.append(H)
        return self.dense[-1](H), pre, post


def drop_connect(params, dropouts, key, draws):
    """DropConnect: the kernel that reads hidden layer i (``dense_{i+1}``) through ``dropout_layer`` with its own
    key split from ``key``, or times the injected keep mask ``draws[i]`` scaled by ``keep_scale``."""
    params = dict(params)
    keys = jax.random.split(key, len(dropouts)) if draws is None else None
    for i, p in enumerate(dropouts):
        name = f"dense_{i + 1}"
        kernel = params[name]["kernel"]
        kernel = (kernel * (draws[i] * jnp.float32(keep_scale(p))) if draws is not None
                  else dropout_layer(kernel, p, keys[i]))
        params[name] = dict(params[name], kernel=kernel)
    return params


def apply(net: nn.Module, params, x, *, training: bool, key=None, draws=None):
    """(logits, pre, post) of ``net`` on ``x``: noise off (``training=False``), native noise from ``key`` (the
    ``'dropout'`` stream), or the injected ``draws``; dropconnect masks the kernels before the forward."""
    x = x.reshape((x.shape[0], -1))
    if not training:
        return net.apply({"params": params}, x, False)
    if net.noise == "dropconnect":
        return net.apply({"params": drop_connect(params, net.dropouts, key, draws)}, x, True)
    if draws is not None:
        return net.apply({"params": params}, x, True, draws=draws)
    return net.apply({"params": params}, x, True, rngs={"dropout": key})
