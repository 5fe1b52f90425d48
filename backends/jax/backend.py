"""The JAX backend's contract, stock tier: the section's Flax models (``model``) trained with Optax the way the
libraries' documentation and D2L teach it, and nothing else.

Training: ``optax.sgd(lr)``, chained after ``optax.masked(optax.add_decayed_weights(wd), kernels)`` when there is
weight decay (the contract's: each kernel's gradient gains wd * W, biases are not decayed). The step (forward,
``jax.value_and_grad`` of the mean ``optax.softmax_cross_entropy_with_integer_labels``, the optimiser's update) is one
``jax.jit``. ``eager`` calls it once per batch of the shared stream, as a textbook loop does; ``compiled`` runs that
same step under ``jax.lax.scan`` over the epoch's full batches, stacked on the host and handed over at once, and the
last partial batch (another shape) as one more call of the step. JAX's default configuration; no XLA flags beyond
the harness's thread bound (see ``model``).

Randomness (D2L's key reuse fixed): every draw of native noise uses the key ``fold_in(base_key, n)``, where
``base_key = PRNGKey(noise_seed(seed))`` and ``n`` counts the native draws of this backend (training steps,
``loss_and_grads``, ``forward``/``activations`` with ``train=True``). So every step gets a fresh key, a rebuild with the
same seed replays the same noise, and ``eager`` and ``compiled`` consume keys identically (step ``n`` uses the same
key in both). Inside one step Flax's ``make_rng('dropout')`` folds in the module path, so the layers draw different
masks.
"""
from __future__ import annotations

import collections
from typing import Mapping

from backends.jax import model as jax_model  # first: it bounds XLA's threads before jax is imported

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from backends import contract, registry  # noqa: E402
from backends.contract import EVAL_CHUNK, EpochBatches, EpochMetrics, EvalMetrics, Params  # noqa: E402


def _no_gpu_message() -> str:
    return (f"device gpu needs a JAX GPU device, none is visible here (jax {jax.__version__}, platform "
            f"{jax.default_backend()}); use --device cpu")


def kernels_mask(num_layers: int) -> dict:
    """The parameter tree's kernels (True) and biases (False): what weight decay reaches."""
    return {f"dense_{i}": {"kernel": True, "bias": False} for i in range(num_layers)}


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
        self.num_layers = len(model.layer_sizes) - 1
        self.net = self.make_net()
        self.tx = self.make_optimizer()
        self.trace_counts: collections.Counter = collections.Counter()  # debugging: traces per jitted function
        self._step_losses: list = []
        # Jitted callables live as long as the backend, so that epochs after the first reuse their compilations.
        self._jit_forward = jax.jit(self._forward_fn, static_argnames=("train",))
        self._jit_activations = jax.jit(self._activations_fn, static_argnames=("train",))
        self._jit_loss_grads = jax.jit(self._loss_grads_fn)
        self._jit_step = jax.jit(self._step_fn)
        self._jit_scan_epoch = jax.jit(self._scan_epoch_fn)
        self._jit_evaluate = jax.jit(self._evaluate_fn)

    def make_net(self, **options):
        """The section's model for the spec's impl: ``DropoutMLP`` (concise) or ``DropoutMLPScratch``."""
        module = jax_model.DropoutMLP if self.model.impl == "concise" else jax_model.DropoutMLPScratch
        return module(num_hiddens=tuple(self.model.hiddens), num_outputs=self.model.num_outputs,
                      dropouts=tuple(self.model.dropouts), noise=self.model.noise, **options)

    def make_optimizer(self) -> optax.GradientTransformation:
        """Plain SGD, after weight decay on the kernels only when there is some."""
        decay = float(self.train.weight_decay)
        sgd = optax.sgd(self.train.lr)
        if not decay:
            return sgd
        return optax.chain(optax.masked(optax.add_decayed_weights(decay), kernels_mask(self.num_layers)), sgd)

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

    # --- traced functions ----------------------------------------------------------------------------------------
    def _run(self, params, x, train: bool, key, draws):
        """(logits, pre, post). Native noise draws from ``key``; ``draws`` injects; dropconnect masks the kernels."""
        return jax_model.apply(self.net, params, x, training=train, key=key, draws=draws)

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

    def _step_fn(self, params, opt_state, x, y, base_key, n, draws):
        """The training step: (params, opt_state, loss, correct) after one SGD step on the batch (x, y)."""
        self.trace_counts["step"] += 1
        key = self._step_key(base_key, n) if draws is None else None
        return self._update(params, opt_state, x, y, key, draws)

    def _scan_epoch_fn(self, params, opt_state, xs, ys, base_key, n0):
        """The step under ``lax.scan`` over stacked batches (steps, batch, ...): step t draws with key n0 + t."""
        self.trace_counts["scan_epoch"] += 1

        def body(carry, inputs):
            t, x, y = inputs
            params, opt_state, loss, correct = self._update(*carry, x, y, self._step_key(base_key, n0 + t), None)
            return (params, opt_state), (loss, correct)

        steps = jnp.arange(xs.shape[0], dtype=jnp.int32)
        (params, opt_state), (losses, correct) = jax.lax.scan(body, (params, opt_state), (steps, xs, ys))
        return params, opt_state, losses, correct

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
        self.params, self.opt_state, loss, _ = self._jit_step(self.params, self.opt_state, self._put(x, np.float32),
                                                              self._put(y, np.int32), self.base_key, n, draws)
        return float(loss)

    def train_epoch(self, *, batches: EpochBatches) -> EpochMetrics:
        """Every batch of the stream in order: ``eager`` one jitted step a batch; ``compiled`` the full batches under
        one ``lax.scan`` and the partial one as one step. The step losses and counts are read once, at the end."""
        n0, size = self.draws, batches.batch_size
        full = len(batches.order) // size
        results = []  # (per-step losses, per-step correct counts, batch size), on the device until the end
        if self.train.mode == "compiled":
            if full:
                idx = batches.order[:full * size]
                xs = self._put(batches.x[idx].reshape(full, size, *batches.x.shape[1:]), np.float32)
                ys = self._put(batches.y[idx].reshape(full, size), np.int32)
                self.params, self.opt_state, losses, correct = self._jit_scan_epoch(
                    self.params, self.opt_state, xs, ys, self.base_key, n0)
                results.append((losses, correct, size))
            tail = batches.order[full * size:]
            steps = enumerate([(batches.x[tail], batches.y[tail])] if len(tail) else [], start=full)
        else:
            steps = enumerate(batches)
        for t, (x, y) in steps:
            self.params, self.opt_state, loss, correct = self._jit_step(
                self.params, self.opt_state, self._put(x, np.float32), self._put(y, np.int32), self.base_key,
                n0 + t, None)
            results.append((loss, correct, len(x)))
        self.draws = n0 + len(batches)
        self._step_losses = [loss for loss, _, _ in results]
        host = jax.device_get([(loss, correct) for loss, correct, _ in results])  # waits for the last step
        loss_sum = sum(float(np.sum(np.asarray(loss, np.float64))) * n for (loss, _), (_, _, n) in zip(host, results))
        correct = sum(int(np.sum(count)) for _, count in host)
        return EpochMetrics(loss=loss_sum / len(batches.order), acc=correct / len(batches.order))

    @property
    def last_epoch_step_losses(self) -> np.ndarray:
        """Debugging (tests only): the last train_epoch's per-step batch losses, in step order. They stay on the
        device during training; reading this property copies them to the host."""
        return np.concatenate([np.atleast_1d(np.asarray(v)) for v in self._step_losses]) if self._step_losses \
            else np.zeros(0, np.float32)

    def evaluate(self, *, x, y) -> EvalMetrics:
        loss_sum, correct = 0.0, 0
        for start in range(0, len(x), EVAL_CHUNK):
            chunk_loss, chunk_correct = self._jit_evaluate(self.params, self._put(x[start:start + EVAL_CHUNK],
                                                                                  np.float32),
                                                           self._put(y[start:start + EVAL_CHUNK], np.int32))
            loss_sum += float(chunk_loss)
            correct += int(chunk_correct)
        return EvalMetrics(loss=loss_sum / len(x), acc=correct / len(x))

    def set_matmul_precision(self, *, allow_tf32: bool) -> None:
        # Process-wide and read when a function is traced (part of jit's cache key): set before the first call.
        jax.config.update("jax_default_matmul_precision", "tensorfloat32" if allow_tf32 else "highest")

    def matmul_precision(self) -> str:
        return f"jax_default_matmul_precision={jax.config.jax_default_matmul_precision or 'default'}"

    def synchronize(self) -> None:
        jax.block_until_ready(self.params)
