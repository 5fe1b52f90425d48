"""JAX + Flax (linen) + Optax backend: the D2L JAX tab, with its dropout randomness done right.

Model: ``flax.linen`` as the section uses it (not ``flax.nnx``), so that the parameters are a plain pytree that one
``jax.jit`` can take, donate and return. ``concise`` is the section's ``DropoutMLP`` (``nn.Dense`` + relu +
``nn.Dropout(p, deterministic=not training)`` fed by the ``'dropout'`` RNG stream); ``scratch`` is its
``DropoutMLPScratch`` with the section's ``dropout_layer(X, p, key)`` written with ``jax.random``. The three Dense
layers are named ``dense_0..2`` in both, so both impls get the same Flax default init (lecun_normal kernel, zero bias)
from ``jax.random.PRNGKey(seed)`` and the canonical layout needs no transpose (Flax kernels are (in, out) already).
On the CPU two things of the concise model are made cheaper with the same maths: its ``nn.Dropout`` is
``BitDropout`` (the same layer, its keep mask at dropout 0.5 from one threefry bit an element instead of a 32-bit
uniform: the same law), and every Dense takes ``cpu_dense_dot_general`` (the narrow last layer's kernel gradient as
YNNPACK's plain dot); the README's bench section has the measurements.

Randomness (D2L's bug B2 fixed): every draw of native noise uses the key ``fold_in(base_key, n)``, where ``base_key =
PRNGKey(noise_seed(seed))`` and ``n`` counts the native draws of this backend (training steps, ``loss_and_grads``,
``forward``/``activations`` with ``train=True``). So every step gets a fresh key, a rebuild with the same seed replays
the same noise, and the ``eager`` and ``compiled`` modes consume keys identically (step ``n`` uses the same key in
both). Inside one step Flax's ``make_rng('dropout')`` folds in the module path, so the two layers draw different masks;
``scratch`` takes its key from the same stream instead of D2L's default argument evaluated once.

Training: the whole step (forward, backward, weight decay on kernels, SGD) is one ``jax.jit`` with the parameters,
optimiser state and device-side metric accumulators donated. ``eager`` runs one jitted step per batch from Python;
``compiled`` runs the epoch's full batches as one ``jax.lax.scan`` and the last partial batch as one extra jitted step.
The training split is copied to the device once (cached per ``id(batches.x)``) and batches are gathered there from the
epoch's order; loss and accuracy are summed on the device and read back once per epoch.

Threads: XLA's CPU client sizes its thread pool from the CPUs the process may run on, and in jax 0.10 no XLA flag
bounds it (``--xla_cpu_multi_thread_eigen=false`` is accepted but measured here not to change the matmul threads;
``--intra_op_parallelism_threads`` is rejected as an unknown flag, and without ``--`` it is ignored). So when
``DROPBENCH_THREADS`` (set by the worker for each job process) asks for fewer threads than the process may use, this
module narrows the process's CPU affinity to that many CPUs at import, before the XLA client starts (threads created
later inherit it; measured: one CPU halves the matmul rate), and for one thread adds
``--xla_cpu_multi_thread_eigen=false`` to ``XLA_FLAGS`` when XLA_FLAGS has no thread setting of its own.
"""
from __future__ import annotations

import collections
import os
from typing import Mapping


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

import jax  # noqa: E402  (after the thread settings, which must precede the XLA client)
import jax.numpy as jnp  # noqa: E402
import flax.linen as nn  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from backends import contract, registry  # noqa: E402
from backends.contract import EpochBatches, EpochMetrics, EvalMetrics, Params  # noqa: E402

_EVAL_CHUNK = 10_000

# Threefry's "partitionable" layout (jax's default since 0.5) hashes one counter pair for every 32-bit output, so that
# an array's bits do not depend on how it is sharded; the older layout hashes one pair for two outputs. Same law, and
# on one device nothing is sharded: compiled epoch 0.51 -> 0.47 s here (2 threads, medians of 6 epochs, 3 runs each).
# A user's JAX_THREEFRY_PARTITIONABLE stands.
if "JAX_THREEFRY_PARTITIONABLE" not in os.environ:
    jax.config.update("jax_threefry_partitionable", False)


# --- noise ------------------------------------------------------------------------------------------------------------
def dropout_layer(X, dropout: float, key):
    """The section's from-scratch dropout, with the key passed in by the caller on every call (D2L's default-argument
    key is evaluated once, so its mask never changes: bug B2). p = 0 is the exact identity (D2L's ``u > 0`` could
    drop an element with probability 2**-24); p = 1 gives zeros."""
    assert 0 <= dropout <= 1
    if dropout == 1:
        return jnp.zeros_like(X)
    if dropout == 0:
        return X
    mask = (jax.random.uniform(key, X.shape) > dropout).astype(jnp.float32)
    return mask * X / (1.0 - dropout)


def keep_mask(key, q: float, shape) -> jax.Array:
    """A bool keep mask of ``shape``, each element kept with probability q, from ``key``: b threefry bits an element
    compared with j where ``contract.dyadic_keep(q)`` gives (b, j) (D2L's dropout 0.5: one bit), else Flax's own
    ``random.bernoulli`` (a float32 uniform below q). Both have exactly the law of ``uniform < q``."""
    dyadic = contract.dyadic_keep(q)
    if dyadic is None:
        return jax.random.bernoulli(key, q, shape)
    bits, below = dyadic
    count = int(np.prod(shape))
    words = jax.random.bits(key, (-(-count // (32 // bits)),), jnp.uint32)
    fields = (words[:, None] >> jnp.arange(0, 32, bits, dtype=jnp.uint32)) & jnp.uint32((1 << bits) - 1)
    return (fields.reshape(-1)[:count] < below).reshape(shape)


class BitDropout(nn.Dropout):
    """Flax's ``nn.Dropout`` with its keep mask from ``keep_mask``: at a keep probability j / 2**b, b threefry bits
    an element instead of a 32-bit uniform (1/32 of the random words at dropout 0.5), the same Bernoulli law
    exactly, from the same key (``make_rng`` of the layer's collection); the scaling, the p = 0 and p = 1 cases and
    every other rate are Flax's own. The masks differ from stock Flax's, the law does not."""

    def __call__(self, inputs, deterministic: bool | None = None, rng=None):
        keep = 1.0 - self.rate
        if (nn.merge_param("deterministic", self.deterministic, deterministic) or self.broadcast_dims
                or contract.dyadic_keep(keep) is None):
            return super().__call__(inputs, deterministic, rng)
        mask = keep_mask(self.make_rng(self.rng_collection) if rng is None else rng, keep, inputs.shape)
        return jax.lax.select(mask, inputs / keep, jnp.zeros_like(inputs))


def _scale(p: float) -> float:
    return 0.0 if p >= 1.0 else 1.0 / (1.0 - p)


def _inject(H, draw, p: float, noise: str):
    """Apply an injected draw (keep mask for dropout, N(0, 1) for the Gaussian kinds) exactly as the oracle does."""
    if noise == "dropout":
        return H * (draw * jnp.float32(_scale(p)))
    if noise == "gaussian":
        return H * (1.0 + jnp.float32(np.sqrt(p / (1.0 - p))) * draw)
    if noise == "additive":
        return H + jnp.float32(p) * draw
    raise ValueError(f"noise {noise!r} is not applied to activations")


def _gaussian_kind(H, p: float, noise: str, key):
    """Native multiplicative or additive Gaussian noise with jax.random (no framework layer exists for these)."""
    if p == 0:
        return H
    return _inject(H, jax.random.normal(key, H.shape, dtype=H.dtype), p, noise)


# --- the Dense product on the CPU -------------------------------------------------------------------------------------
_NARROW_GRADIENT = 64  # the widest layer output whose kernel gradient goes the transposed way (measured: see README)


def _kernel_gradient(x, dz):
    """X^T dZ, a Dense layer's kernel gradient (in x out). XLA:CPU gives this dot, which contracts the batch
    dimension of both operands, to its Eigen kernel (YNNPACK takes no transposed left operand), which is slow when
    the layer's output is narrow. For an output of at most 64 columns the same product is taken as (dZ^T X)^T, with
    dZ^T and the (out x in) product materialised by optimisation barriers (both small there), so that the product
    is YNNPACK's plain dot; wider layers keep the one Eigen dot, which is faster for them."""
    if dz.shape[-1] > _NARROW_GRADIENT:
        return x.T @ dz
    barrier = jax.lax.optimization_barrier
    return barrier(barrier(dz.T) @ x).T


@jax.custom_vjp
def _dense_product(x, kernel):
    return x @ kernel


def _dense_product_forward(x, kernel):
    return x @ kernel, (x, kernel)


def _dense_product_backward(residuals, dz):
    x, kernel = residuals
    return dz @ kernel.T, _kernel_gradient(x, dz)  # an input gradient nothing reads (the images') is dead code to XLA


_dense_product.defvjp(_dense_product_forward, _dense_product_backward)


def cpu_dense_dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None):
    """Flax Dense's ``dot_general`` on the CPU: its (batch, in) @ (in, out) product with ``_kernel_gradient`` as
    the kernel's gradient; any other product as ``lax.dot_general``."""
    if (lhs.ndim == 2 and tuple(map(tuple, dimension_numbers[0])) == ((1,), (0,)) and dimension_numbers[1] == ((), ())
            and precision is None and preferred_element_type is None):
        return _dense_product(lhs, rhs)
    return jax.lax.dot_general(lhs, rhs, dimension_numbers, precision=precision,
                               preferred_element_type=preferred_element_type)


# --- the section's two models ----------------------------------------------------------------------------------------
class DropoutMLP(nn.Module):
    """Concise: Dense, relu, nn.Dropout, ... as in the section. Returns (logits, pre-noise, post-noise)."""

    num_hiddens: tuple
    num_outputs: int
    dropouts: tuple
    noise: str = "dropout"
    dot_general: object = None  # Flax Dense's own (lax.dot_general) when None
    dropout_module: type = nn.Dropout  # D2L's; the backend gives BitDropout on the CPU

    @nn.compact
    def __call__(self, X, training: bool, draws=None):
        H = X.reshape((X.shape[0], -1))
        pre, post = [], []
        for i, (width, p) in enumerate(zip(self.num_hiddens, self.dropouts)):
            H = nn.relu(nn.Dense(width, name=f"dense_{i}", dot_general=self.dot_general)(H))
            pre.append(H)
            if self.noise != "dropconnect":  # dropconnect masks kernels, outside the module
                if training and draws is not None:
                    H = _inject(H, draws[i], p, self.noise)
                elif self.noise == "dropout":
                    H = self.dropout_module(p, deterministic=not training)(H)
                elif training:
                    H = _gaussian_kind(H, p, self.noise, self.make_rng("dropout"))
            post.append(H)
        return nn.Dense(self.num_outputs, name=f"dense_{len(self.num_hiddens)}", dot_general=self.dot_general)(H), \
            pre, post


class DropoutMLPScratch(nn.Module):
    """Scratch: three Dense layers from setup and the section's dropout_layer, its key from the 'dropout' stream."""

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
                    H = _inject(H, draws[i], p, self.noise)
                elif self.noise == "dropout":
                    H = dropout_layer(H, p, self.make_rng("dropout"))
                else:
                    H = _gaussian_kind(H, p, self.noise, self.make_rng("dropout"))
            post.append(H)
        return self.dense[-1](H), pre, post


def _no_gpu_message() -> str:
    return (f"device gpu needs a JAX GPU device, none is visible here (jax {jax.__version__}, platform "
            f"{jax.default_backend()}); use --device cpu")


class Backend(contract.Backend):
    name = "jax"
    framework = "jax"
    capabilities = registry.capabilities("jax")

    def __init__(self, *, model, train, threads=None) -> None:
        super().__init__(model=model, train=train, threads=threads)
        # ``threads`` was applied at import time from DROPBENCH_THREADS (the worker sets both to the same number):
        # XLA's pool cannot be resized once the client is up, and narrowing the affinity of a process that other
        # backends share (a test session) from here would be a surprising side effect.
        if train.device == "gpu":
            try:
                gpus = jax.devices("gpu")
            except RuntimeError:
                gpus = []
            if not gpus:
                raise ValueError(_no_gpu_message())
            self.device = gpus[0]
        else:
            self.device = jax.devices("cpu")[0]
        module = DropoutMLP if model.impl == "concise" else DropoutMLPScratch
        options = {}
        if self.device.platform == "cpu":  # what was measured faster on the CPU; a GPU runs stock Flax
            options["dot_general"] = cpu_dense_dot_general
            if module is DropoutMLP:
                options["dropout_module"] = BitDropout
        self.net = module(num_hiddens=tuple(model.hiddens), num_outputs=model.num_outputs,
                          dropouts=tuple(model.dropouts), noise=model.noise, **options)
        self.num_layers = len(model.layer_sizes) - 1
        kernels = {f"dense_{i}": {"kernel": True, "bias": False} for i in range(self.num_layers)}
        decay = float(train.weight_decay)
        # The contract's weight decay: each kernel's gradient gains wd * W before plain SGD; biases are not decayed.
        self.tx = (optax.chain(optax.add_decayed_weights(decay, mask=kernels), optax.sgd(train.lr)) if decay
                   else optax.sgd(train.lr))
        self.trace_counts: collections.Counter = collections.Counter()  # debugging: traces per jitted function
        self._cache: dict[int, tuple[np.ndarray, jax.Array]] = {}
        self._step_losses: list = []
        # Jitted callables live as long as the backend, so that epochs after the first reuse their compilations.
        self._jit_forward = jax.jit(self._forward_fn, static_argnames=("train",))
        self._jit_activations = jax.jit(self._activations_fn, static_argnames=("train",))
        self._jit_loss_grads = jax.jit(self._loss_grads_fn)
        self._jit_step = jax.jit(self._api_step_fn, donate_argnums=(0, 1))
        self._jit_eager_step = jax.jit(self._eager_step_fn, donate_argnums=(0, 1, 2))
        self._jit_tail_step = jax.jit(self._tail_step_fn, donate_argnums=(0, 1, 2))
        self._jit_scan_epoch = jax.jit(self._scan_epoch_fn, donate_argnums=(0, 1, 2))
        self._jit_evaluate = jax.jit(self._evaluate_fn)

    # --- building and parameters ---------------------------------------------------------------------------------
    def build(self, *, seed: int, params: Mapping[str, np.ndarray] | None = None) -> None:
        if params is not None:
            self.set_params(params=params)
        else:
            dummy = jnp.zeros((1, self.model.num_inputs), jnp.float32)
            variables = self.net.init({"params": jax.random.PRNGKey(seed)}, dummy, False)  # Flax Dense defaults
            self.params = jax.device_put(jax.tree.map(jnp.asarray, dict(variables["params"])), self.device)
            self.opt_state = jax.device_put(self.tx.init(self.params), self.device)
        self.base_key = jax.device_put(jax.random.PRNGKey(contract.noise_seed(seed)), self.device)
        self.draws = 0  # native draws so far; draw n uses fold_in(base_key, n)

    def get_params(self) -> Params:
        return {f"{layer}/{leaf}": np.array(value, dtype=np.float32, copy=True)
                for layer, leaves in self.params.items() for leaf, value in leaves.items()}

    def set_params(self, *, params: Mapping[str, np.ndarray]) -> None:
        contract.check_params(self.model, params)
        tree = {f"dense_{i}": {leaf: jax.device_put(np.array(params[f"dense_{i}/{leaf}"], dtype=np.float32,
                                                             copy=True), self.device)
                               for leaf in ("kernel", "bias")} for i in range(self.num_layers)}
        self.params = tree
        self.opt_state = jax.device_put(self.tx.init(self.params), self.device)

    def _next_draw(self) -> int:
        n = self.draws
        self.draws += 1
        return n

    def _put(self, array, dtype) -> jax.Array:
        return jax.device_put(np.asarray(array, dtype=dtype), self.device)

    def _draws_arg(self, masks):
        return None if masks is None else tuple(self._put(m, np.float32) for m in masks)

    def _on_device(self, array: np.ndarray, *, cache: bool = True) -> jax.Array:
        """A device copy of an array the caller passes again and again (the training split, the test split), cached
        per ``id(array)`` (at most four, oldest out first); ``cache=False`` just copies."""
        if not cache or not isinstance(array, np.ndarray):
            return self._put(array, np.asarray(array).dtype)
        hit = self._cache.get(id(array))
        if hit is not None and hit[0] is array:
            return hit[1]
        if len(self._cache) >= 4:
            self._cache.pop(next(iter(self._cache)))
        copy = self._put(array, array.dtype)
        self._cache[id(array)] = (array, copy)  # holding the array keeps its id from being reused
        return copy

    # --- traced functions ----------------------------------------------------------------------------------------
    def _run(self, params, x, train: bool, key, draws):
        """(logits, pre, post). Native noise draws from ``key``; ``draws`` injects; dropconnect masks the kernels."""
        x = x.reshape((x.shape[0], -1))
        if not train:
            return self.net.apply({"params": params}, x, False)
        if self.model.noise == "dropconnect":
            params = dict(params)
            keys = jax.random.split(key, len(self.model.hiddens)) if draws is None else None
            for i, p in enumerate(self.model.dropouts):
                name = f"dense_{i + 1}"  # the kernel that reads hidden layer i
                kernel = params[name]["kernel"]
                kernel = (kernel * (draws[i] * jnp.float32(_scale(p))) if draws is not None
                          else dropout_layer(kernel, p, keys[i]))
                params[name] = dict(params[name], kernel=kernel)
            return self.net.apply({"params": params}, x, True)
        if draws is not None:
            return self.net.apply({"params": params}, x, True, draws=draws)
        return self.net.apply({"params": params}, x, True, rngs={"dropout": key})

    def _loss_fn(self, params, x, y, key, draws):
        logits = self._run(params, x, True, key, draws)[0]
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        correct = jnp.sum(jnp.argmax(logits, axis=-1) == y)
        return loss, correct

    def _update(self, params, opt_state, x, y, key, draws):
        (loss, correct), grads = jax.value_and_grad(self._loss_fn, has_aux=True)(params, x, y, key, draws)
        updates, opt_state = self.tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss, correct

    @staticmethod
    def _step_key(base_key, n):
        return jax.random.fold_in(base_key, n)

    def _forward_fn(self, params, x, base_key, n, draws, *, train):
        self.trace_counts["forward"] += 1
        key = self._step_key(base_key, n) if train and draws is None else None
        return self._run(params, x, train, key, draws)[0]

    def _activations_fn(self, params, x, base_key, n, draws, *, train):
        self.trace_counts["activations"] += 1
        key = self._step_key(base_key, n) if train and draws is None else None
        _, pre, post = self._run(params, x, train, key, draws)
        return pre, post

    def _loss_grads_fn(self, params, x, y, base_key, n, draws):
        self.trace_counts["loss_and_grads"] += 1
        key = self._step_key(base_key, n) if draws is None else None
        (loss, _), grads = jax.value_and_grad(self._loss_fn, has_aux=True)(params, x, y, key, draws)
        return loss, grads

    def _api_step_fn(self, params, opt_state, x, y, base_key, n, draws):
        self.trace_counts["train_step"] += 1
        key = self._step_key(base_key, n) if draws is None else None
        params, opt_state, loss, _ = self._update(params, opt_state, x, y, key, draws)
        return params, opt_state, loss

    def _gather_step(self, params, opt_state, totals, x_all, y_all, idx, base_key, n):
        """One native-noise training step on the batch x_all[idx]; totals += (loss sum, correct)."""
        xb = jnp.take(x_all, idx, axis=0, mode="clip")
        yb = jnp.take(y_all, idx, axis=0, mode="clip")
        params, opt_state, loss, correct = self._update(params, opt_state, xb, yb, self._step_key(base_key, n), None)
        totals = totals + jnp.stack([loss * idx.shape[0], correct.astype(jnp.float32)])
        return params, opt_state, totals, loss

    def _eager_step_fn(self, params, opt_state, totals, x_all, y_all, idx_matrix, t, base_key, n0):
        self.trace_counts["eager_step"] += 1
        return self._gather_step(params, opt_state, totals, x_all, y_all, idx_matrix[t], base_key, n0 + t)

    def _tail_step_fn(self, params, opt_state, totals, x_all, y_all, idx, base_key, n):
        self.trace_counts["tail_step"] += 1
        return self._gather_step(params, opt_state, totals, x_all, y_all, idx, base_key, n)

    def _scan_epoch_fn(self, params, opt_state, totals, x_all, y_all, idx_matrix, base_key, n0):
        self.trace_counts["scan_epoch"] += 1

        def body(carry, inputs):
            t, idx = inputs
            params, opt_state, totals = carry
            params, opt_state, totals, loss = self._gather_step(params, opt_state, totals, x_all, y_all, idx,
                                                                base_key, n0 + t)
            return (params, opt_state, totals), loss

        steps = jnp.arange(idx_matrix.shape[0], dtype=jnp.int32)
        (params, opt_state, totals), losses = jax.lax.scan(body, (params, opt_state, totals), (steps, idx_matrix))
        return params, opt_state, totals, losses

    def _evaluate_fn(self, params, x, y):
        self.trace_counts["evaluate"] += 1
        logits = self._run(params, x, False, None, None)[0]
        loss_sum = optax.softmax_cross_entropy_with_integer_labels(logits, y).sum()
        return loss_sum, jnp.sum(jnp.argmax(logits, axis=-1) == y)

    # --- the contract ---------------------------------------------------------------------------------------------
    def _noise_args(self, train: bool, masks):
        """(n, draws): a native draw takes the next draw number; injected masks or noise off take none."""
        draws = self._draws_arg(masks) if train else None
        n = self._next_draw() if (train and masks is None) else 0
        return n, draws

    def forward(self, *, x, train, masks=None) -> np.ndarray:
        n, draws = self._noise_args(train, masks)
        logits = self._jit_forward(self.params, self._put(x, np.float32), self.base_key, n, draws, train=bool(train))
        return np.asarray(logits, dtype=np.float32)

    def activations(self, *, x, train, masks=None) -> dict[str, np.ndarray]:
        n, draws = self._noise_args(train, masks)
        pre, post = self._jit_activations(self.params, self._put(x, np.float32), self.base_key, n, draws,
                                          train=bool(train))
        out = {}
        for i in range(len(self.model.hiddens)):
            out[f"hidden_{i}/pre_noise"] = np.array(pre[i], dtype=np.float32)
            out[f"hidden_{i}/post_noise"] = np.array(post[i], dtype=np.float32)
        return out

    def loss_and_grads(self, *, x, y, masks=None) -> tuple[float, Params]:
        n, draws = self._noise_args(True, masks)
        loss, grads = self._jit_loss_grads(self.params, self._put(x, np.float32), self._put(y, np.int32),
                                           self.base_key, n, draws)
        return float(loss), {f"{layer}/{leaf}": np.array(value, dtype=np.float32)
                             for layer, leaves in grads.items() for leaf, value in leaves.items()}

    def train_step(self, *, x, y, masks=None) -> float:
        n, draws = self._noise_args(True, masks)
        self.params, self.opt_state, loss = self._jit_step(self.params, self.opt_state, self._put(x, np.float32),
                                                           self._put(y, np.int32), self.base_key, n, draws)
        return float(loss)

    def train_epoch(self, *, batches: EpochBatches) -> EpochMetrics:
        x_all, y_all = self._on_device(batches.x), self._on_device(batches.y)
        order = np.asarray(batches.order, dtype=np.int32)
        size = batches.batch_size
        full = len(order) // size
        totals = jax.device_put(np.zeros(2, np.float32), self.device)
        n0 = self.draws
        self._step_losses = []
        if full:
            idx_matrix = self._put(order[:full * size].reshape(full, size), np.int32)
            if self.train.mode == "compiled":
                self.params, self.opt_state, totals, losses = self._jit_scan_epoch(
                    self.params, self.opt_state, totals, x_all, y_all, idx_matrix, self.base_key, n0)
                self._step_losses.append(losses)
            else:
                for t in range(full):
                    self.params, self.opt_state, totals, loss = self._jit_eager_step(
                        self.params, self.opt_state, totals, x_all, y_all, idx_matrix, t, self.base_key, n0)
                    self._step_losses.append(loss)
        if len(order) > full * size:  # the last, partial batch: another shape, so its own jitted step
            self.params, self.opt_state, totals, loss = self._jit_tail_step(
                self.params, self.opt_state, totals, x_all, y_all, self._put(order[full * size:], np.int32),
                self.base_key, n0 + full)
            self._step_losses.append(loss)
        self.draws = n0 + len(batches)
        loss_sum, correct = np.asarray(totals, dtype=np.float64)  # the one host read of the epoch
        return EpochMetrics(loss=float(loss_sum) / len(order), acc=float(correct) / len(order))

    @property
    def last_epoch_step_losses(self) -> np.ndarray:
        """Debugging (tests only): the last train_epoch's per-step batch losses, in step order. They stay on the
        device during training; reading this property copies them to the host."""
        return np.concatenate([np.atleast_1d(np.asarray(v)) for v in self._step_losses]) if self._step_losses \
            else np.zeros(0, np.float32)

    def evaluate(self, *, x, y) -> EvalMetrics:
        # The worker evaluates the same test split every epoch: cache arrays that own their memory, but not views such
        # as a probe's ``train_x[:n]``, which are new objects at every call (caching them would only pile up copies).
        x_dev = self._on_device(x, cache=isinstance(x, np.ndarray) and x.base is None)
        y_dev = self._on_device(y, cache=isinstance(y, np.ndarray) and y.base is None)
        loss_sum, correct = 0.0, 0
        for start in range(0, len(x), _EVAL_CHUNK):
            whole = start == 0 and len(x) <= _EVAL_CHUNK  # the usual case: no slicing op at all
            chunk_loss, chunk_correct = self._jit_evaluate(
                self.params, x_dev if whole else x_dev[start:start + _EVAL_CHUNK],
                y_dev if whole else y_dev[start:start + _EVAL_CHUNK])
            loss_sum += float(chunk_loss)
            correct += int(chunk_correct)
        return EvalMetrics(loss=loss_sum / len(x), acc=correct / len(x))

    def gemm_library(self, *, m: int, k: int, n: int) -> str:
        """XLA:CPU names its library in the compiled HLO of an m x k @ k x n dot: a ``__ynn_fusion``/``__xnn_fusion``
        (YNNPACK/XNNPACK), a oneDNN custom call, or neither (its own Eigen dot)."""
        a, b = self._put(np.ones((m, k)), np.float32), self._put(np.ones((k, n)), np.float32)
        return contract.xla_gemm_library(jax.jit(jnp.dot).lower(a, b).compile().as_text())

    def gemm_step_probe(self, *, products, rounds: int = 1):
        """``products`` in one jitted ``fori_loop`` of ``rounds`` iterations (XLA folds each transpose into its
        dot's dimension numbers, as in the training step; on the CPU a kernel gradient goes through
        ``_kernel_gradient``, as the step's). Each product's operands pass an ``optimization_barrier``
        together with the product before it: the dots run one after another, as the step's chain does, instead of
        side by side on the pool's threads, and none is loop-invariant, so none is hoisted out of the loop. The
        results stay in the loop's carry, so no round allocates its outputs."""
        rng = np.random.default_rng(0)
        flags = [(bool(p["ta"]), bool(p["tb"])) for p in products]
        operands = [tuple(self._put(rng.standard_normal(shape), np.float32)
                          for shape in contract.held_operand_shapes(p)) for p in products]
        zeros = [self._put(np.zeros((p["m"], p["n"])), np.float32) for p in products]
        cpu = self.device.platform == "cpu"

        def product(a, b, ta, tb):
            if cpu and ta and not tb:  # X^T dZ, a kernel gradient: as the CPU step's custom gradient takes it
                return _kernel_gradient(a, b)
            return (a.T if ta else a) @ (b.T if tb else b)

        def one_round(_, carry):
            pairs, results = carry
            previous, kept, fresh = results[-1], [], []
            for (a, b), (ta, tb) in zip(pairs, flags):
                previous, a, b = jax.lax.optimization_barrier((previous, a, b))
                previous = product(a, b, ta, tb)
                kept.append((a, b))
                fresh.append(previous)
            return kept, fresh

        @jax.jit
        def gemms(pairs, results):
            return jax.lax.fori_loop(0, rounds, one_round, (pairs, results))[1]
        return lambda: jax.block_until_ready(gemms(operands, zeros))

    def noise_probe(self, *, batch_size: int):
        """The concise model's dropout layer (Flax's nn.Dropout, or BitDropout on the CPU) on every hidden layer's
        (batch, width) array, jitted alone (threefry bits, a compare, a select). Inside the training step XLA fuses
        the same work into the step's other kernels, where it can cost less than alone."""
        rates = [p for p in self.model.dropouts if 0 < p < 1]
        ones = [self._put(np.ones((batch_size, w)), np.float32) for w, p in zip(self.model.hiddens,
                                                                               self.model.dropouts) if 0 < p < 1]
        layer = getattr(self.net, "dropout_module", nn.Dropout)

        @jax.jit
        def dropouts(key, arrays):
            keys = jax.random.split(key, len(arrays))
            return [layer(p, deterministic=False).apply({}, x, rngs={"dropout": k})
                    for p, x, k in zip(rates, arrays, keys)]
        counter = iter(range(1 << 62))
        base = jax.random.PRNGKey(0)
        if layer is BitDropout:
            how = f"nn.Dropout, {contract.mask_draw_kinds(rates, 'threefry', 'threefry uniform < 1-p')}"
        else:
            how = "nn.Dropout (threefry)"
        return (f"{how}, jitted alone",
                lambda: jax.block_until_ready(dropouts(jax.random.fold_in(base, next(counter)), ones)))

    def set_matmul_precision(self, *, allow_tf32: bool) -> None:
        # Process-wide and read when a function is traced (part of jit's cache key): set before the first call.
        jax.config.update("jax_default_matmul_precision", "tensorfloat32" if allow_tf32 else "highest")

    def matmul_precision(self) -> str:
        return f"jax_default_matmul_precision={jax.config.jax_default_matmul_precision or 'default'}"

    def synchronize(self) -> None:
        jax.block_until_ready(self.params)
