"""TensorFlow 2.21 backend: D2L's dropout MLP with Keras 3 layers, trained by a hand-written GradientTape + SGD step.

D2L's TF tab never switches dropout on (bug B1 in d2l-dropout.md: the trainer calls ``model(X)`` without
``training=``). Here every Keras call passes ``training`` explicitly, so dropout is active in training and off in
evaluation.

- ``concise``: ``tf.keras.layers.Dense`` + ``tf.keras.layers.Dropout(p, seed=...)`` (Keras 3 draws its masks with
  ``stateless_dropout`` from a ``keras.random.SeedGenerator`` whose counter is a variable, so it advances on every
  call, inside ``tf.function`` too). p = 1 is handled as zeros before the layer is reached. Under XLA on the CPU
  the layer is ``BitDropout``, Keras' Dropout with its keep mask at dropout 0.5 drawn from one Philox bit an
  element instead of a 32-bit uniform: the same law, from the same SeedGenerator.
- ``scratch``: the same Dense layers and the section's ``dropout_layer`` written with ``tf.random.Generator``
  (keep where u > p as the contract says; D2L's TF code keeps where u < 1 - p, which has the same law).
- dropconnect / gaussian / additive have no Keras layer in D2L's sense: both impls draw from the
  ``tf.random.Generator`` seeded with ``contract.noise_seed(seed)``.

Modes: ``eager`` is a plain Python step (no ``tf.function``); ``compiled`` runs the full batches of an epoch as ONE
``tf.function`` (a ``tf.range`` loop, traced once with a (steps, batch) order of unknown size) and the last partial
batch through a second one-step ``tf.function`` (batch dimension None), so nothing retraces after the first epoch.
XLA (``jit_compile=True``) is used when TF has more than one intra-op thread (see ``_use_xla``). The same seed gives
the same run in eager and in plain-graph compiled mode (same RNG streams, same maths); under XLA the RNG bits differ
(XLA's own random kernels), so a seed reproduces a run within one setting.

Training data stay on the TF side: the training split is one constant per ``id(batches.x)``, batches are gathered
with ``tf.gather`` from the epoch order, and loss/accuracy are summed on the TF side and read once per epoch.
"""
from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # start-up noise off; errors are still shown

from typing import Mapping  # noqa: E402

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from backends import contract, registry  # noqa: E402
from backends.contract import EpochBatches, EpochMetrics, EvalMetrics, Params  # noqa: E402

layers = tf.keras.layers

# Compiled mode: XLA on or off, and the whole epoch in one tf.function or one tf.function call per step. The whole
# epoch in one tf.function was as fast or faster than a call per step in every measurement. Whether XLA pays depends on
# the thread count (quiet 2-core machine, steady epoch of 60,000 examples, whole-epoch loop): with 1 intra-op thread
# the plain graph takes 0.74 s and XLA 1.02 s; with 2 threads the plain graph gets SLOWER (0.94 s: TF's per-op
# thread-pool hand-offs cost more than two threads gain on 256x256 tensors) while XLA, whose fused kernels split the
# work once per cluster, takes 0.59 s. So XLA is on exactly when TF has more than one intra-op thread.
_WHOLE_EPOCH = True


def _use_xla() -> bool:
    threads = tf.config.threading.get_intra_op_parallelism_threads() or os.cpu_count() or 1
    return threads > 1


def _configure_threads(threads: int | None) -> None:
    """Apply the thread count before any op runs; a later backend in the same process finds TF initialised and
    keeps the pools it has (TF cannot resize them)."""
    if threads is None:
        return
    try:
        tf.config.threading.set_intra_op_parallelism_threads(int(threads))
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:
        pass  # the runtime is already initialised in this process


def _scale(p: float) -> float:
    return 0.0 if p >= 1.0 else 1.0 / (1.0 - p)


EMITTER_FLAG = "xla_cpu_use_fusion_emitters"
_emitters_chosen: bool | None = None  # this module's choice for the process, once made


def bit_draws_only(model) -> bool:
    """Whether the model's training draws under XLA on the CPU are all ``BitDropout``'s: the concise model's dropout
    at rates whose keep probability ``contract.dyadic_keep`` takes, or no draw at all (every rate 0)."""
    bit_dropout = model.impl == "concise" and model.noise == "dropout"
    return all(p == 0 or (bit_dropout and contract.dyadic_keep(1.0 - p) is not None) for p in model.dropouts)


def choose_fusion_emitters(model) -> None:
    """Set XLA:CPU's fusion emitters for this process from its first XLA model, before its first XLA compilation
    (TF reads ``XLA_FLAGS`` then, once; the choice changes speed only, the results are the same to the bit).

    The newer emitters make the Philox ``rng-bit-generator`` fusion of a mask drawn a 32-bit uniform an element (the
    scratch model's, the other noise kinds', Keras' Dropout at other rates) about 2.4x slower than the classic loop
    emitter; a model whose draws are all ``BitDropout``'s, at 1/32 of the words, runs 5-9 % faster with them (the
    README's bench section). A user's own setting of the flag stands."""
    global _emitters_chosen
    if _emitters_chosen is not None or EMITTER_FLAG in os.environ.get("XLA_FLAGS", ""):
        return
    _emitters_chosen = bit_draws_only(model)
    if not _emitters_chosen:
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + f" --{EMITTER_FLAG}=false").strip()


def keep_mask(seed, q: float, shape) -> tf.Tensor:
    """A bool keep mask of ``shape`` (a shape or shape tensor), each element kept with probability q, from a
    stateless int32 seed pair: where ``contract.dyadic_keep(q)`` gives (b, j), b Philox bits an element compared with
    j, from full-range uint32 words; else a float32 uniform >= 1 - q, Keras' own test. Both have exactly the law of
    Keras' Dropout, whose uniform's 23 random bits are >= (1 - q) * 2**23 with probability q for such a q."""
    shape = tf.convert_to_tensor(shape, tf.int32)
    dyadic = contract.dyadic_keep(q)
    if dyadic is None:
        return tf.random.stateless_uniform(shape, seed=seed) >= np.float32(1.0 - q)
    bits, below = dyadic
    count, per_word = tf.reduce_prod(shape), 32 // bits
    words = tf.random.stateless_uniform([(count + per_word - 1) // per_word], seed=seed, minval=None, maxval=None,
                                        dtype=tf.uint32)
    fields = tf.bitwise.bitwise_and(tf.bitwise.right_shift(words[:, None], np.arange(0, 32, bits, dtype=np.uint32)),
                                    np.uint32((1 << bits) - 1))
    return tf.reshape(tf.reshape(fields, [-1])[:count] < below, shape)


def stateless_seed(seed_generator) -> tf.Tensor:
    """The next int32 seed pair of a Keras ``SeedGenerator``, as Keras' TF dropout takes it (its state is int64;
    TF's stateless ops under XLA want int32, so Keras folds it by floormod)."""
    seed = seed_generator.next()
    return seed if seed.dtype == tf.int32 else tf.cast(tf.math.floormod(seed, tf.int32.max - 1), tf.int32)


class BitDropout(layers.Dropout):
    """Keras' ``Dropout`` with its keep mask from ``keep_mask``: at a keep probability j / 2**b, b Philox bits an
    element instead of a 32-bit uniform (1/32 of the random words at dropout 0.5), the same Bernoulli law exactly,
    from the layer's own ``SeedGenerator`` (which advances as Keras' does); the scaling, rates 0 and 1, other rates,
    noise shapes and evaluation are Keras' own. The masks differ from stock Keras', the law does not. Used under
    XLA on the CPU, where each Keras mask's Philox is emitted element by element (see the README)."""

    def call(self, inputs, training=False):
        keep = 1.0 - self.rate
        if not training or self.noise_shape is not None or contract.dyadic_keep(keep) is None:
            return super().call(inputs, training=training)
        mask = keep_mask(stateless_seed(self.seed_generator), keep, tf.shape(inputs))
        return inputs * np.float32(1.0 / keep) * tf.cast(mask, inputs.dtype)


class Backend(contract.Backend):
    name = "tensorflow"
    framework = "tensorflow"
    capabilities = registry.capabilities("tensorflow")

    def __init__(self, *, model, train, threads=None) -> None:
        super().__init__(model=model, train=train, threads=threads)
        _configure_threads(threads)
        self.compiled = train.mode == "compiled"
        if self._cpu_xla():
            choose_fusion_emitters(model)
        self.trace_count = 0  # Python side effect: how many times a compiled function body was traced

    # --- construction ----------------------------------------------------------------------------------------------
    def build(self, *, seed: int, params: Mapping[str, np.ndarray] | None = None) -> None:
        model = self.model
        sizes = model.layer_sizes
        self.num_layers = len(sizes) - 1
        init_seeds = np.random.default_rng([seed, 0x6B65]).integers(0, 2**31 - 1, size=self.num_layers)
        self.dense = []
        for i, width in enumerate(sizes[1:]):
            hidden = i < self.num_layers - 1
            layer = layers.Dense(width, activation="relu" if hidden else None,
                                 kernel_initializer=tf.keras.initializers.GlorotUniform(seed=int(init_seeds[i])),
                                 bias_initializer="zeros", name=f"dense_{i}")
            layer.build((None, sizes[i]))
            self.dense.append(layer)
        # The underlying tf.Variables, canonical order; the Keras layers read the same variables.
        self.variables = []
        self.names = []
        for i, layer in enumerate(self.dense):
            self.variables += [layer.kernel.value, layer.bias.value]
            self.names += [f"dense_{i}/kernel", f"dense_{i}/bias"]
        self.decays = [name.endswith("kernel") for name in self.names]
        if params is not None:
            self.set_params(params=params)

        noise_seed = contract.noise_seed(seed)
        self.generator = tf.random.Generator.from_seed(noise_seed)
        # Keras' Dropout, one per hidden layer, each with its own seed (its SeedGenerator state is [seed, counter]).
        self.dropout_layers = [
            self._dropout_class()(p, seed=(noise_seed + 1 + i) % (2**31 - 1), name=f"dropout_{i}") if p < 1.0 else None
            for i, p in enumerate(model.dropouts)]
        self.mask_shapes = [tuple(s) for s in contract.noise_shapes(model, 1)]
        self._train_cache = None
        self._eval_cache = []
        self._make_functions()

    def _dropout_class(self) -> type:
        """BitDropout where the mode runs under XLA on the CPU (it keeps eager and the plain graph on one stream);
        Keras' Dropout elsewhere."""
        return BitDropout if self._cpu_xla() else layers.Dropout

    def _cpu_xla(self) -> bool:
        return self.compiled and _use_xla() and not tf.config.list_physical_devices("GPU")

    def _make_functions(self) -> None:
        nin = self.model.num_inputs
        x_spec = tf.TensorSpec([None, nin], tf.float32)
        y_spec = tf.TensorSpec([None], tf.int32)
        if self.model.noise == "dropconnect":
            mask_specs = tuple(tf.TensorSpec(list(s), tf.float32) for s in self.mask_shapes)
        else:
            mask_specs = tuple(tf.TensorSpec([None, s[1]], tf.float32) for s in self.mask_shapes)

        def step_native(x, y):
            self.trace_count += 1 if self._tracing() else 0
            return self._step(x, y, None)

        def step_masked(x, y, masks):
            self.trace_count += 1 if self._tracing() else 0
            return self._step(x, y, masks)

        def grads_native(x, y):
            return self._loss_grads(x, y, None)

        def grads_masked(x, y, masks):
            return self._loss_grads(x, y, masks)

        def evaluate(x, y):
            self.trace_count += 1 if self._tracing() else 0
            logits = self._logits(x, training=False, masks=None)
            per_example = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits)
            return (tf.reduce_sum(tf.cast(per_example, tf.float64)),
                    tf.reduce_sum(tf.cast(tf.equal(tf.argmax(logits, axis=1, output_type=tf.int32), y), tf.int32)))

        def epoch_full(x_all, y_all, order_full):
            """All full batches of an epoch (order_full: (steps, B)) as one graph loop."""
            self.trace_count += 1 if self._tracing() else 0
            loss_sum = tf.constant(0.0, tf.float64)
            correct = tf.constant(0, tf.int32)
            for i in tf.range(tf.shape(order_full)[0]):
                idx = order_full[i]
                loss, n_correct = self._step(tf.gather(x_all, idx), tf.gather(y_all, idx), None)
                loss_sum += tf.cast(loss, tf.float64) * tf.cast(tf.shape(idx)[0], tf.float64)
                correct += n_correct
            return loss_sum, correct

        def batch_at(x_all, y_all, idx):
            """One step on the batch x_all[idx] (the per-step strategy, and the last partial batch)."""
            self.trace_count += 1 if self._tracing() else 0
            loss, n_correct = self._step(tf.gather(x_all, idx), tf.gather(y_all, idx), None)
            return tf.cast(loss, tf.float64) * tf.cast(tf.shape(idx)[0], tf.float64), n_correct

        if not self.compiled:
            self._step_native, self._step_masked = step_native, step_masked
            self._grads_native, self._grads_masked = grads_native, grads_masked
            self._evaluate, self._epoch_full, self._batch_at = evaluate, epoch_full, batch_at
            return
        jit = _use_xla()
        all_spec = [tf.TensorSpec([None, nin], tf.float32), tf.TensorSpec([None], tf.int32)]
        self._step_native = tf.function(step_native, input_signature=[x_spec, y_spec], jit_compile=jit)
        self._step_masked = tf.function(step_masked, input_signature=[x_spec, y_spec, mask_specs], jit_compile=jit)
        self._grads_native = tf.function(grads_native, input_signature=[x_spec, y_spec], jit_compile=jit)
        self._grads_masked = tf.function(grads_masked, input_signature=[x_spec, y_spec, mask_specs],
                                         jit_compile=jit)
        self._evaluate = tf.function(evaluate, input_signature=[x_spec, y_spec], jit_compile=jit)
        # Batch dimensions are None, so neither a new epoch nor a new data size retraces; under XLA each concrete
        # shape (full batches, the last partial one) is compiled once from the same trace.
        self._epoch_full = tf.function(
            epoch_full, input_signature=all_spec + [tf.TensorSpec([None, None], tf.int32)], jit_compile=jit)
        self._batch_at = tf.function(batch_at, input_signature=all_spec + [tf.TensorSpec([None], tf.int32)],
                                     jit_compile=jit)

    def gemm_library(self, *, m: int, k: int, n: int) -> str:
        """Under XLA (compiled mode, more than one thread) the dot is XLA:CPU's own, whose optimised HLO names its
        library (none: Eigen); otherwise TF's MatMul kernel: oneDNN when TF was built with it and
        ``TF_ENABLE_ONEDNN_OPTS`` is not 0, else Eigen."""
        from tensorflow.python.util import _pywrap_util_port

        if self.compiled and _use_xla():
            a, b = tf.ones((m, k)), tf.ones((k, n))
            product = tf.function(lambda a, b: tf.linalg.matmul(a, b), jit_compile=True)
            text = product.experimental_get_compiler_ir(a, b)(stage="optimized_hlo")
            return contract.xla_gemm_library(text)
        onednn = _pywrap_util_port.IsMklEnabled() and os.environ.get("TF_ENABLE_ONEDNN_OPTS", "1") != "0"
        return "oneDNN (TF MatMul)" if onednn else "Eigen (TF MatMul)"

    def gemm_step_probe(self, *, products, rounds: int = 1):
        """``products`` as ``tf.linalg.matmul`` calls with ``transpose_a``/``transpose_b``, as this mode runs them.
        Under XLA (compiled mode, more than one thread): one program, a ``tf.while_loop`` of ``rounds`` iterations
        in which each product's operands pass XLA's optimisation barrier together with the product before it, so
        that the dots run one after another and none is hoisted out of the loop as invariant. Otherwise TF's MatMul
        kernel: one ``tf.function`` graph a round in compiled mode, op by op in eager mode."""
        rng = np.random.default_rng(0)
        flags = [(bool(p["ta"]), bool(p["tb"])) for p in products]
        operands = [tuple(tf.constant(rng.standard_normal(shape), tf.float32)
                          for shape in contract.held_operand_shapes(p)) for p in products]

        def one_round(pairs):
            return [tf.linalg.matmul(a, b, transpose_a=ta, transpose_b=tb) for (a, b), (ta, tb) in zip(pairs, flags)]
        if not (self.compiled and _use_xla()):
            run = tf.function(one_round) if self.compiled else one_round

            def rounds_of_ops():
                for _ in range(rounds):
                    results = run(operands)
                return results
            return rounds_of_ops

        from tensorflow.compiler.tf2xla.python import xla as tf2xla

        def serial_round(i, pairs, results):
            previous, kept, fresh = results[-1], [], []
            for (a, b), (ta, tb) in zip(pairs, flags):
                previous, a, b = tf2xla.optimization_barrier(previous, a, b)
                previous = tf.linalg.matmul(a, b, transpose_a=ta, transpose_b=tb)
                kept.append((a, b))
                fresh.append(previous)
            return i + 1, kept, fresh

        @tf.function(jit_compile=True)
        def program():
            zeros = [tf.zeros((p["m"], p["n"])) for p in products]
            return tf.while_loop(lambda i, *_: i < rounds, serial_round, (tf.constant(0), operands, zeros))[2]
        return program

    def noise_probe(self, *, batch_size: int):
        """The concise model's dropout layer (``_dropout_class``) on every hidden layer's (batch, width) array, as this
        mode runs it: under XLA in compiled mode (more than one thread), else TF's own kernels. Fresh layers: the
        backend's seed counters do not move."""
        dropout = self._dropout_class()
        rates = [(w, p) for w, p in zip(self.model.hiddens, self.model.dropouts) if 0 < p < 1]
        pairs = [(dropout(p, seed=i + 1), tf.ones((batch_size, w))) for i, (w, p) in enumerate(rates)]

        def dropouts():
            return [layer(x, training=True) for layer, x in pairs]
        xla = self.compiled and _use_xla()
        run = tf.function(dropouts, jit_compile=True) if xla else (tf.function(dropouts) if self.compiled
                                                                       else dropouts)
        if dropout is BitDropout:
            how = f"Keras Dropout, {contract.mask_draw_kinds([p for _, p in rates], 'Philox', 'Philox uniform >= p')}"
        else:
            how = "Keras Dropout (stateless Philox)"
        return f"{how}{' under XLA' if xla else ''}", lambda: [t.numpy() for t in run()]

    @staticmethod
    def _tracing() -> bool:
        return not tf.executing_eagerly()

    # --- parameters ----------------------------------------------------------------------------------------------
    def get_params(self) -> Params:
        return {name: np.array(var.numpy(), dtype=np.float32, copy=True)
                for name, var in zip(self.names, self.variables)}

    def set_params(self, *, params: Mapping[str, np.ndarray]) -> None:
        contract.check_params(self.model, params)
        for name, var in zip(self.names, self.variables):
            var.assign(np.asarray(params[name], dtype=np.float32))

    # --- the model -------------------------------------------------------------------------------------------------
    def _dropout_layer(self, X, dropout: float):
        """The section's from-scratch dropout (keep where u > p, as the contract says), on tf.random.Generator."""
        assert 0 <= dropout <= 1
        if dropout == 1:
            return tf.zeros_like(X)
        if dropout == 0:
            return X  # exact identity (u > 0 would drop u == 0.0)
        mask = tf.cast(self.generator.uniform(tf.shape(X), minval=0, maxval=1) > dropout, tf.float32)
        return mask * X / (1.0 - dropout)

    def _apply_draw(self, i: int, h, draw):
        """Activation noise of hidden layer i from an explicit draw (injected mask or generator output)."""
        p = self.model.dropouts[i]
        if self.model.noise == "dropout":
            return h * (draw * np.float32(_scale(p)))
        if self.model.noise == "gaussian":
            return h * (1.0 + np.float32(np.sqrt(p / (1.0 - p))) * draw)
        return h + np.float32(p) * draw  # additive

    def _activation_noise(self, i: int, h, mask):
        noise, p = self.model.noise, self.model.dropouts[i]
        if mask is not None:
            return self._apply_draw(i, h, mask)
        if noise == "dropout":
            if self.model.impl == "scratch":
                return self._dropout_layer(h, p)
            if p >= 1.0:  # Keras' Dropout: D2L's TF 2.12 refused rate 1; zeros, as the contract says
                return tf.zeros_like(h)
            return self.dropout_layers[i](h, training=True)
        return self._apply_draw(i, h, self.generator.normal(tf.shape(h)))

    def _kernel_multiplier(self, i: int, mask):
        """Dropconnect: the multiplier of the kernel that reads hidden layer i, or None for the plain kernel."""
        p = self.model.dropouts[i]
        if mask is not None:
            return mask * np.float32(_scale(p))
        if p == 0.0:
            return None
        if p >= 1.0:
            return tf.zeros(self.mask_shapes[i], tf.float32)
        keep = self.generator.uniform(self.mask_shapes[i], minval=0, maxval=1) > p
        return tf.cast(keep, tf.float32) * np.float32(_scale(p))

    def _logits(self, x, *, training: bool, masks, collect: dict | None = None):
        dropconnect = self.model.noise == "dropconnect"
        h = x
        for j, layer in enumerate(self.dense):
            multiplier = None
            if training and dropconnect and j > 0:
                multiplier = self._kernel_multiplier(j - 1, None if masks is None else masks[j - 1])
            if multiplier is None:
                h = layer(h, training=training)
            else:  # the same Dense maths on the masked kernel
                h = tf.matmul(h, layer.kernel * multiplier) + layer.bias
                if layer.activation is not None:
                    h = layer.activation(h)
            if j == self.num_layers - 1:
                return h
            pre = h
            if training and not dropconnect:
                h = self._activation_noise(j, h, None if masks is None else masks[j])
            if collect is not None:
                collect[f"hidden_{j}/pre_noise"] = pre
                collect[f"hidden_{j}/post_noise"] = h
        raise AssertionError("unreachable")

    def _loss_grads(self, x, y, masks):
        with tf.GradientTape() as tape:
            logits = self._logits(x, training=True, masks=masks)
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits))
        grads = tape.gradient(loss, self.variables, unconnected_gradients=tf.UnconnectedGradients.ZERO)
        correct = tf.reduce_sum(tf.cast(tf.equal(tf.argmax(logits, axis=1, output_type=tf.int32), y), tf.int32))
        return loss, correct, grads

    def _step(self, x, y, masks):
        """One SGD step; weight decay adds wd * W to each kernel's gradient (biases are not decayed)."""
        loss, correct, grads = self._loss_grads(x, y, masks)
        lr, decay = np.float32(self.train.lr), np.float32(self.train.weight_decay)
        for var, grad, decays in zip(self.variables, grads, self.decays):
            if decay and decays:
                grad = grad + decay * var
            var.assign_sub(lr * grad)
        return loss, correct

    # --- conversions -----------------------------------------------------------------------------------------------
    def _x(self, x) -> tf.Tensor:
        x = np.asarray(x, dtype=np.float32)
        return tf.constant(x.reshape(len(x), -1))

    @staticmethod
    def _y(y) -> tf.Tensor:
        return tf.constant(np.asarray(y, dtype=np.int32))

    @staticmethod
    def _masks(masks) -> tuple:
        return tuple(tf.constant(np.asarray(m, dtype=np.float32)) for m in masks)

    # --- the contract ----------------------------------------------------------------------------------------------
    def forward(self, *, x, train, masks=None) -> np.ndarray:
        tf_masks = None if masks is None else self._masks(masks)
        return self._logits(self._x(x), training=bool(train), masks=tf_masks).numpy()

    def loss_and_grads(self, *, x, y, masks=None) -> tuple[float, Params]:
        if masks is None:
            loss, _, grads = self._grads_native(self._x(x), self._y(y))
        else:
            loss, _, grads = self._grads_masked(self._x(x), self._y(y), self._masks(masks))
        return float(loss), {name: grad.numpy().astype(np.float32) for name, grad in zip(self.names, grads)}

    def train_step(self, *, x, y, masks=None) -> float:
        if masks is None:
            loss, _ = self._step_native(self._x(x), self._y(y))
        else:
            loss, _ = self._step_masked(self._x(x), self._y(y), self._masks(masks))
        return float(loss)

    def _train_tensors(self, batches: EpochBatches) -> tuple[tf.Tensor, tf.Tensor]:
        cache = self._train_cache
        if cache is None or cache[0] != id(batches.x) or cache[1] is not batches.x or cache[2] is not batches.y:
            x_all = tf.constant(np.asarray(batches.x, dtype=np.float32).reshape(len(batches.x), -1))
            cache = self._train_cache = (id(batches.x), batches.x, batches.y, x_all, self._y(batches.y))
        return cache[3], cache[4]

    def train_epoch(self, *, batches: EpochBatches) -> EpochMetrics:
        x_all, y_all = self._train_tensors(batches)
        order = np.asarray(batches.order, dtype=np.int32)
        n, size = len(order), batches.batch_size
        if self.compiled and _WHOLE_EPOCH:
            full = n // size
            loss_sum, correct = self._epoch_full(x_all, y_all, tf.constant(order[:full * size].reshape(full, size)))
            if n > full * size:
                rest_loss, rest_correct = self._batch_at(x_all, y_all, tf.constant(order[full * size:]))
                loss_sum, correct = loss_sum + rest_loss, correct + rest_correct
        elif self.compiled:  # one tf.function call per step (measured slower than the whole-epoch function)
            loss_sum, correct = tf.constant(0.0, tf.float64), tf.constant(0, tf.int32)
            for start in range(0, n, size):
                batch_loss, batch_correct = self._batch_at(x_all, y_all, tf.constant(order[start:start + size]))
                loss_sum, correct = loss_sum + batch_loss, correct + batch_correct
        else:  # eager: a plain Python loop; the per-step results stay tensors until one read at the end
            losses, corrects = [], []
            for start in range(0, n, size):
                idx = tf.constant(order[start:start + size])
                loss, n_correct = self._step(tf.gather(x_all, idx), tf.gather(y_all, idx), None)
                losses.append(loss)
                corrects.append(n_correct)
            sizes = np.minimum(size, n - np.arange(0, n, size)).astype(np.float64)
            loss_sum = float(np.dot(tf.stack(losses).numpy().astype(np.float64), sizes))
            correct = tf.add_n(corrects)
        return EpochMetrics(loss=float(loss_sum) / n, acc=int(correct) / n)  # the host read waits for the work

    def evaluate(self, *, x, y) -> EvalMetrics:
        # Converted splits are kept for the arrays seen last (the test split, and e.g. a probe's training slice).
        cache = next((c for c in self._eval_cache if c[0] is x and c[1] is y), None)
        if cache is None:
            cache = (x, y, self._x(x), self._y(y))
            self._eval_cache = [cache] + self._eval_cache[:1]
        loss_sum, correct = self._evaluate(cache[2], cache[3])
        return EvalMetrics(loss=float(loss_sum) / len(x), acc=int(correct) / len(x))

    def activations(self, *, x, train, masks=None) -> dict[str, np.ndarray]:
        collect: dict = {}
        tf_masks = None if masks is None else self._masks(masks)
        self._logits(self._x(x), training=bool(train), masks=tf_masks, collect=collect)
        return {key: value.numpy().astype(np.float32) for key, value in collect.items()}
