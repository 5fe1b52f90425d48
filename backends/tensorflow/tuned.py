"""TensorFlow backend, tuned tier: the stock ``Backend`` with this project's same-law speed paths. The model, its
noise streams, the shared init, the data stream and the training flag are the stock tier's; each path below says
what it replaces and why.

The SGD update is written on the layers' ``tf.Variable``s: ``W -= lr * (g + wd * W)`` for a kernel and
``b -= lr * g`` for a bias, replacing Keras' ``SGD.apply`` with its decoupled weight decay (the same law). It is one
update expression per variable, without the optimizer's bookkeeping inside the step (its iteration counter, its
distribution-strategy merge calls, its separate weight-decay pass over the variables).

The cross-entropy is ``tf.nn.sparse_softmax_cross_entropy_with_logits`` itself, replacing Keras'
``sparse_categorical_crossentropy``, which checks shapes, casts the labels and then calls that same fused op: eager
mode would run the wrapper's Python every step.

The training split stays on the TF side: one constant per ``id(batches.x)``, each batch gathered with ``tf.gather``
from the epoch's order, replacing a conversion of every NumPy batch; loss and accuracy are summed on the TF side and
read once per epoch. The split crosses from NumPy to TF once instead of once a batch.

In compiled mode the full batches of an epoch run as ONE ``tf.function`` (a ``tf.range`` loop, traced once with a
(steps, batch) order of unknown size) and the last partial batch through a second, one-step ``tf.function`` (batch
dimension None), replacing a ``tf.function`` call per step: Python dispatch and the call's argument handling leave
the step loop, and nothing retraces after the first epoch.

XLA (``jit_compile=True``) compiles every function of compiled mode when TF has more than one intra-op thread
(``use_xla``), replacing Keras' ``"auto"``, which never takes XLA on a CPU-only machine. With several threads TF's
plain graph hands each small op of a 256-wide layer to its thread pool, and those hand-offs cost more than the
second thread gains, while XLA's fused kernels split the work once per fused cluster; with one thread there is
nothing to split and the plain graph is kept. Under XLA the random bits are XLA's own, so a seed reproduces a run
within one setting (eager and the plain graph share one stream).

Under XLA on the CPU the concise model's Dropout is ``BitDropout``: Keras' Dropout with its keep mask at a keep
probability j / 2**b drawn from b Philox bits an element instead of a 32-bit uniform, from the layer's own
``SeedGenerator``: the same Bernoulli law. XLA:CPU emits the Philox generator element by element, so the mask's
cost follows the number of random words it draws, and one bit an element draws 1/32 of them at dropout 0.5.

XLA:CPU's fusion emitters are chosen for the process from its first model under XLA (``choose_fusion_emitters``),
replacing XLA's default: the newer emitters make the Philox fusion of a mask drawn a 32-bit uniform an element (the
scratch model's, the other noise kinds', Keras' Dropout at other rates) slower than the classic loop emitter, while
a model whose draws are all ``BitDropout``'s runs better with them. A user's own setting of the flag stands.

``evaluate`` runs a split in one call and keeps the converted arrays of the two splits seen last, replacing stock's
chunks converted on every call: the test split is evaluated every epoch, and converting it again each time is work
that repeats.
"""
from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # start-up noise off; errors are still shown

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from backends import contract  # noqa: E402
from backends.contract import EpochBatches, EpochMetrics, EvalMetrics  # noqa: E402
from backends.tensorflow import backend as stock  # noqa: E402


def use_xla() -> bool:
    """Whether compiled mode runs under XLA: TF has more than one intra-op thread."""
    threads = tf.config.threading.get_intra_op_parallelism_threads() or os.cpu_count() or 1
    return threads > 1


EMITTER_FLAG = "xla_cpu_use_fusion_emitters"
_emitters_chosen: bool | None = None  # this module's choice for the process, once made


def bit_draws_only(model) -> bool:
    """Whether the model's training draws under XLA on the CPU are all ``BitDropout``'s: the concise model's dropout
    at rates whose keep probability ``contract.dyadic_keep`` takes, or no draw at all (every rate 0)."""
    bit_dropout = model.impl == "concise" and model.noise == "dropout"
    return all(p == 0 or (bit_dropout and contract.dyadic_keep(1.0 - p) is not None) for p in model.dropouts)


def choose_fusion_emitters(model) -> None:
    """Set XLA:CPU's fusion emitters for this process from its first XLA model, before its first XLA compilation
    (TF reads ``XLA_FLAGS`` then, once; the choice changes speed only, the results are the same to the bit): on for
    a model whose draws are all ``BitDropout``'s (XLA's default), off otherwise. A user's own setting stands."""
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


class BitDropout(keras.layers.Dropout):
    """Keras' ``Dropout`` with its keep mask from ``keep_mask``: at a keep probability j / 2**b, b Philox bits an
    element instead of a 32-bit uniform (1/32 of the random words at dropout 0.5), the same Bernoulli law exactly,
    from the layer's own ``SeedGenerator`` (which advances as Keras' does); the scaling, rates 0 and 1, other rates,
    noise shapes and evaluation are Keras' own. The masks differ from stock Keras', the law does not."""

    def call(self, inputs, training=False):
        keep = 1.0 - self.rate
        if not training or self.noise_shape is not None or contract.dyadic_keep(keep) is None:
            return super().call(inputs, training=training)
        mask = keep_mask(stateless_seed(self.seed_generator), keep, tf.shape(inputs))
        return inputs * np.float32(1.0 / keep) * tf.cast(mask, inputs.dtype)


class Backend(stock.Backend):
    """The tuned tier (see the module's docstring for each path)."""

    def __init__(self, *, model, train, threads=None) -> None:
        super().__init__(model=model, train=train, threads=threads)
        if self._cpu_xla():
            choose_fusion_emitters(model)

    def build(self, *, seed, params=None) -> None:
        self._train_cache, self._eval_cache = None, []
        super().build(seed=seed, params=params)

    def _cpu_xla(self) -> bool:
        return self.compiled and use_xla() and not tf.config.list_physical_devices("GPU")

    def dropout_class(self) -> type:
        """BitDropout where the mode runs under XLA on the CPU (it keeps eager and the plain graph on one stream);
        Keras' Dropout elsewhere."""
        return BitDropout if self._cpu_xla() else keras.layers.Dropout

    @staticmethod
    def _layer_variables(layer) -> list:
        """The layer's underlying ``tf.Variable``s, which the written update assigns."""
        return [layer.kernel.value, layer.bias.value]

    def _compile(self) -> None:
        """No optimizer: the update is written in ``_step``; XLA per ``use_xla``."""
        self.decays = [name.endswith("kernel") for name in self.names]
        self.jit_compile = self.compiled and use_xla()

    @staticmethod
    def _example_losses(y, logits):
        return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits)

    def _step(self, x, y, masks):
        """One SGD step; weight decay adds wd * W to each kernel's gradient (biases are not decayed)."""
        loss, correct, grads = self._loss_grads(x, y, masks)
        lr, decay = np.float32(self.train.lr), np.float32(self.train.weight_decay)
        for var, grad, decays in zip(self.variables, grads, self.decays):
            if decay and decays:
                grad = grad + decay * var
            var.assign_sub(lr * grad)
        return loss, correct

    def _functions(self) -> dict:
        nin = self.model.num_inputs
        all_spec = [tf.TensorSpec([None, nin], tf.float32), tf.TensorSpec([None], tf.int32)]

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
            """One step on the batch x_all[idx] (the last partial batch)."""
            self.trace_count += 1 if self._tracing() else 0
            loss, n_correct = self._step(tf.gather(x_all, idx), tf.gather(y_all, idx), None)
            return tf.cast(loss, tf.float64) * tf.cast(tf.shape(idx)[0], tf.float64), n_correct

        # Batch dimensions are None, so neither a new epoch nor a new data size retraces; under XLA each concrete
        # shape (full batches, the last partial one) is compiled once from the same trace.
        return {**super()._functions(),
                "epoch_full": (epoch_full, all_spec + [tf.TensorSpec([None, None], tf.int32)]),
                "batch_at": (batch_at, all_spec + [tf.TensorSpec([None], tf.int32)])}

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
        if self.compiled:
            full = n // size
            loss_sum, correct = self._epoch_full(x_all, y_all, tf.constant(order[:full * size].reshape(full, size)))
            if n > full * size:
                rest_loss, rest_correct = self._batch_at(x_all, y_all, tf.constant(order[full * size:]))
                loss_sum, correct = loss_sum + rest_loss, correct + rest_correct
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
