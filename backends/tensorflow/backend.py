"""TensorFlow 2.21 backend, stock tier: D2L's dropout MLP (``model``) trained with Keras 3's public API as its own
documentation and D2L teach it.

- The step is Keras' custom training loop: the logits under ``tf.GradientTape`` (``training=True`` always passed, so
  that dropout is on in training and off in evaluation: D2L's TF tab loses the flag, bug B1), Keras'
  ``sparse_categorical_crossentropy`` from logits, averaged, ``tape.gradient`` and ``optimizer.apply``.
- The optimizer is ``keras.optimizers.SGD(learning_rate=lr, weight_decay=wd)`` with the biases excluded
  (``exclude_from_weight_decay``). Keras' weight decay is decoupled: before the update it does
  ``W -= W * wd * lr``, then SGD does ``W -= g * lr``, where g was taken at the same W. For plain SGD (no momentum)
  that is ``W - lr * (g + wd * W)``: the law of ``TrainSpec`` (the gradient of each kernel gains ``wd * W``), in two
  float32 roundings instead of one.
- Noise: the concise model's ``keras.layers.Dropout``, the scratch model's ``dropout_layer`` on the model's
  ``tf.random.Generator``; the other noise kinds from the same generator (``model``).

Modes: ``eager`` is eager TF, batch by batch from the shared stream. ``compiled`` makes the training step (and the
gradient and evaluation calls) a ``tf.function`` whose batch dimension is None (the last partial batch does not
retrace), called once per batch as Keras' own ``fit`` does, with ``jit_compile`` set to what Keras 3 chooses for this
model: the model is compiled with ``Model.compile(jit_compile="auto")`` and its ``jit_compile`` read back. Keras'
``"auto"`` disables XLA on a machine whose TF sees only CPUs (``Trainer._resolve_auto_jit_compile``), and otherwise
takes XLA where every layer supports it (``model_supports_jit``: Dense and Dropout do) unless op determinism is on.
This backend runs on the CPU with ``tensorflow-cpu``, so its compiled mode is TF's plain graph, without XLA; no XLA
flag is set. Evaluation runs in chunks of ``contract.EVAL_CHUNK`` examples.
"""
from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # start-up noise off; errors are still shown

from typing import Mapping  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from backends import contract, registry  # noqa: E402
from backends.contract import EpochBatches, EpochMetrics, EvalMetrics, Params  # noqa: E402
from backends.tensorflow.model import DropoutMLP, DropoutMLPScratch  # noqa: E402


def configure_threads(threads: int | None) -> None:
    """Apply the thread count before any op runs; a later backend in the same process finds TF initialised and
    keeps the pools it has (TF cannot resize them)."""
    if threads is None:
        return
    try:
        tf.config.threading.set_intra_op_parallelism_threads(int(threads))
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:
        pass  # the runtime is already initialised in this process


class Backend(contract.Backend):
    name = "tensorflow"
    framework = "tensorflow"
    capabilities = registry.capabilities("tensorflow")

    def __init__(self, *, model, train, threads=None) -> None:
        super().__init__(model=model, train=train, threads=threads)
        configure_threads(threads)
        self.compiled = train.mode == "compiled"
        self.jit_compile = False  # whether this mode's tf.functions run under XLA; settled by build
        self.trace_count = 0  # Python side effect: how many times a compiled function body was traced

    def dropout_class(self) -> type:
        """The concise model's Dropout layer: Keras' own."""
        return keras.layers.Dropout

    # --- construction ----------------------------------------------------------------------------------------------
    def build(self, *, seed: int, params: Mapping[str, np.ndarray] | None = None) -> None:
        model = self.model
        self.num_layers = len(model.layer_sizes) - 1
        init_seeds = [int(s) for s in np.random.default_rng([seed, 0x6B65]).integers(0, 2**31 - 1,
                                                                                     size=self.num_layers)]
        noise_seed = contract.noise_seed(seed)
        if model.impl == "concise":
            self.net = DropoutMLP(model, noise_seed=noise_seed, init_seeds=init_seeds,
                                  dropout_class=self.dropout_class())
        else:
            self.net = DropoutMLPScratch(model, noise_seed=noise_seed, init_seeds=init_seeds)
        self.generator = self.net.generator
        self.names, self.variables = [], []
        for i, layer in enumerate(self.net.dense_layers()):
            self.names += [f"dense_{i}/kernel", f"dense_{i}/bias"]
            self.variables += self._layer_variables(layer)
        self.mask_shapes = [tuple(s) for s in contract.noise_shapes(model, 1)]
        if params is not None:
            self.set_params(params=params)
        self._compile()
        self._make_functions()

    @staticmethod
    def _layer_variables(layer) -> list:
        """The variables a step differentiates and updates: the layer's Keras variables."""
        return [layer.kernel, layer.bias]

    def _compile(self) -> None:
        """Keras' SGD with the kernels decayed, given to ``Model.compile`` with ``jit_compile="auto"``: Keras
        decides whether the compiled step runs under XLA."""
        decay = self.train.weight_decay
        optimizer = keras.optimizers.SGD(learning_rate=self.train.lr, weight_decay=decay if decay else None)
        optimizer.exclude_from_weight_decay(var_list=[layer.bias for layer in self.net.dense_layers()])
        self.net.compile(optimizer=optimizer, jit_compile="auto")
        optimizer.build(self.variables)
        self.optimizer = optimizer
        self.jit_compile = self.compiled and bool(self.net.jit_compile)

    def _functions(self) -> dict:
        """name -> (Python function, its input signature): what ``_make_functions`` turns into ``tf.function``s in
        compiled mode (in eager mode they run as they are)."""
        nin = self.model.num_inputs
        x_spec, y_spec = tf.TensorSpec([None, nin], tf.float32), tf.TensorSpec([None], tf.int32)
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
            logits = self.net(x, training=False)
            return (tf.reduce_sum(tf.cast(self._example_losses(y, logits), tf.float64)),
                    tf.reduce_sum(tf.cast(tf.equal(tf.argmax(logits, axis=1, output_type=tf.int32), y), tf.int32)))

        return {"step_native": (step_native, [x_spec, y_spec]),
                "step_masked": (step_masked, [x_spec, y_spec, mask_specs]),
                "grads_native": (grads_native, [x_spec, y_spec]),
                "grads_masked": (grads_masked, [x_spec, y_spec, mask_specs]),
                "evaluate": (evaluate, [x_spec, y_spec])}

    def _make_functions(self) -> None:
        for name, (function, signature) in self._functions().items():
            if self.compiled:
                function = tf.function(function, input_signature=signature, jit_compile=self.jit_compile)
            setattr(self, f"_{name}", function)

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

    # --- the step --------------------------------------------------------------------------------------------------
    @staticmethod
    def _example_losses(y, logits):
        """Per-example cross-entropy: Keras' ``sparse_categorical_crossentropy`` from logits."""
        return keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True)

    def _loss_grads(self, x, y, masks):
        with tf.GradientTape() as tape:
            logits = self.net(x, training=True, masks=masks)
            loss = tf.reduce_mean(self._example_losses(y, logits))
        grads = tape.gradient(loss, self.variables)
        # p = 1 cuts the earlier layers off the loss: the tape gives None for them, the contract zeros.
        grads = [tf.zeros(var.shape, tf.float32) if grad is None else grad for grad, var in zip(grads, self.variables)]
        correct = tf.reduce_sum(tf.cast(tf.equal(tf.argmax(logits, axis=1, output_type=tf.int32), y), tf.int32))
        return loss, correct, grads

    def _step(self, x, y, masks):
        """One SGD step with Keras' optimizer (weight decay on the kernels, see the module's docstring)."""
        loss, correct, grads = self._loss_grads(x, y, masks)
        self.optimizer.apply(grads, self.variables)
        return loss, correct

    # --- conversions -----------------------------------------------------------------------------------------------
    @staticmethod
    def _x(x) -> tf.Tensor:
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
        return self.net(self._x(x), training=bool(train), masks=tf_masks).numpy()

    def loss_and_grads(self, *, x, y, masks=None) -> tuple[float, Params]:
        if masks is None:
            loss, _, grads = self._grads_native(self._x(x), self._y(y))
        else:
            loss, _, grads = self._grads_masked(self._x(x), self._y(y), self._masks(masks))
        return float(loss), {name: np.asarray(grad.numpy(), dtype=np.float32) for name, grad in zip(self.names, grads)}

    def train_step(self, *, x, y, masks=None) -> float:
        if masks is None:
            loss, _ = self._step_native(self._x(x), self._y(y))
        else:
            loss, _ = self._step_masked(self._x(x), self._y(y), self._masks(masks))
        return float(loss)

    def train_epoch(self, *, batches: EpochBatches) -> EpochMetrics:
        """Batch by batch from the shared stream, a step (a ``tf.function`` call in compiled mode) each; the losses
        and correct counts stay tensors until one read at the end, which waits for the work."""
        losses, corrects, sizes = [], [], []
        for x, y in batches:
            loss, n_correct = self._step_native(self._x(x), self._y(y))
            losses.append(loss)
            corrects.append(n_correct)
            sizes.append(len(y))
        n = sum(sizes)
        loss_sum = float(np.dot(tf.stack(losses).numpy().astype(np.float64), np.asarray(sizes, dtype=np.float64)))
        return EpochMetrics(loss=loss_sum / n, acc=int(tf.add_n(corrects)) / n)

    def evaluate(self, *, x, y) -> EvalMetrics:
        loss_sum, correct = 0.0, 0
        for start in range(0, len(x), contract.EVAL_CHUNK):
            chunk = slice(start, start + contract.EVAL_CHUNK)
            chunk_loss, chunk_correct = self._evaluate(self._x(x[chunk]), self._y(y[chunk]))
            loss_sum, correct = loss_sum + float(chunk_loss), correct + int(chunk_correct)
        return EvalMetrics(loss=loss_sum / len(x), acc=correct / len(x))

    def activations(self, *, x, train, masks=None) -> dict[str, np.ndarray]:
        tf_masks = None if masks is None else self._masks(masks)
        states = self.net.hidden_states(self._x(x), training=bool(train), masks=tf_masks)
        return {key: value.numpy().astype(np.float32) for key, value in states.items()}
