"""D2L's dropout MLP in Keras 3's stock layers on TensorFlow: the section's ``dropout_layer``, ``DropoutMLP`` (concise:
a ``keras.Sequential`` of ``keras.layers.Dense`` and the framework's ``keras.layers.Dropout``) and
``DropoutMLPScratch`` (three ``Dense`` layers and the section's ``dropout_layer``), and what the other noise kinds
(dropconnect, gaussian, additive) and injected masks need.

A model is a ``keras.Model`` called as ``net(X, training=..., masks=None)``; ``training`` is always passed explicitly
(D2L's TF tab loses it, so that its dropout is never on: bug B1). ``masks`` is None (the model draws its own noise)
or one tensor per hidden layer holding the draw (a 0/1 keep mask for dropout and dropconnect, the latter in the
(in, out) layout of the kernel that reads the layer; N(0, 1) for gaussian and additive). ``hidden_states`` runs the
same layers and also returns the hidden activations. Without masks the concise model in evaluation, and in training
with dropout noise, is its ``Sequential``, as the section writes it.

Each model owns the backend's noise stream: a ``tf.random.Generator`` seeded with the job's ``noise_seed`` (the
scratch ``dropout_layer`` and the other noise kinds draw from it), and its Keras Dropout layers each get their own
seed from the same number (a ``keras.random.SeedGenerator`` whose counter is a variable, so it advances on every
call, inside ``tf.function`` too).
"""
from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # start-up noise off; errors are still shown

from typing import Sequence  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from backends import contract  # noqa: E402
from backends.contract import ModelSpec  # noqa: E402


def dropout_layer(X, dropout: float, generator: tf.random.Generator):
    """The section's ``dropout_layer`` with TF ops, drawing from ``generator`` (the backend's seeded stream): keep
    where u > p (the contract's test; D2L's TF code keeps where u < 1 - p, the same law), scale by 1/(1-p); p = 1
    gives zeros and p = 0 is the exact identity (``u > 0`` would drop u == 0.0)."""
    assert 0 <= dropout <= 1
    if dropout == 1:
        return tf.zeros_like(X)
    if dropout == 0:
        return X
    mask = tf.cast(generator.uniform(tf.shape(X), minval=0, maxval=1) > dropout, tf.float32)
    return mask * X / (1.0 - dropout)


def apply_draw(kind: str, p: float, H, draw):
    """Activation noise of kind ``kind`` at rate p on ``H`` from an explicit draw (an injected mask or a generator's
    output): inverted dropout's keep mask, or N(0, 1) scaled as ``contract`` says for gaussian and additive noise."""
    if kind == "dropout":
        return H * (draw * np.float32(contract.keep_scale(p)))
    if kind == "gaussian":
        return H * (1.0 + np.float32(contract.gaussian_noise_scale(p)) * draw)
    return H + np.float32(contract.additive_noise_scale(p)) * draw  # additive


def dense_layer(width: int, *, hidden: bool, seed: int | None, name: str) -> keras.layers.Dense:
    """A Keras ``Dense`` with its defaults (Glorot-uniform kernel, zero bias), the kernel's initialiser seeded."""
    return keras.layers.Dense(width, activation="relu" if hidden else None,
                              kernel_initializer=keras.initializers.GlorotUniform(seed=seed),
                              bias_initializer="zeros", name=name)


def dropout_seed(noise_seed: int, i: int) -> int:
    """The seed of hidden layer i's Keras Dropout, from the job's noise seed."""
    return (noise_seed + 1 + i) % (2**31 - 1)


class _NoisyMLP(keras.Model):
    """The layer walk both implementations share for injected noise, the other noise kinds and the activations;
    ``activation_noise`` is where they differ."""

    def __init__(self, model: ModelSpec, *, noise_seed: int, name: str) -> None:
        super().__init__(name=name)
        self.kind = model.noise
        self.rates = tuple(float(p) for p in model.dropouts)
        self.sizes = tuple(model.layer_sizes)
        self.generator = tf.random.Generator.from_seed(noise_seed)

    def dense_layers(self) -> list:
        raise NotImplementedError

    def activation_noise(self, i: int, H):
        """Hidden layer i's own draw of the model's noise kind, in training."""
        raise NotImplementedError

    def build(self, input_shape) -> None:
        for layer, fan_in in zip(self.dense_layers(), self.sizes):
            if not layer.built:
                layer.build((None, fan_in))

    def kernel_multiplier(self, i: int, mask):
        """Dropconnect: the multiplier of the kernel that reads hidden layer i (injected or drawn from the
        generator), or None for the plain kernel (p = 0)."""
        p = self.rates[i]
        if mask is not None:
            return mask * np.float32(contract.keep_scale(p))
        if p == 0.0:
            return None
        shape = (self.sizes[i + 1], self.sizes[i + 2])
        if p >= 1.0:
            return tf.zeros(shape, tf.float32)
        keep = self.generator.uniform(shape, minval=0, maxval=1) > p
        return tf.cast(keep, tf.float32) * np.float32(contract.keep_scale(p))

    def walk(self, X, *, training: bool, masks: Sequence | None, tape: dict | None = None):
        """The forward pass layer by layer; ``tape`` (a dict) collects ``hidden_i/pre_noise`` and
        ``hidden_i/post_noise``."""
        dropconnect = self.kind == "dropconnect"
        layers = self.dense_layers()
        H = X
        for j, layer in enumerate(layers):
            multiplier = None
            if training and dropconnect and j > 0:
                multiplier = self.kernel_multiplier(j - 1, None if masks is None else masks[j - 1])
            if multiplier is None:
                H = layer(H, training=training)
            else:  # the same Dense maths on the masked kernel
                H = tf.matmul(H, layer.kernel * multiplier) + layer.bias
                if layer.activation is not None:
                    H = layer.activation(H)
            if j == len(layers) - 1:
                return H
            pre = H
            if training and not dropconnect:
                if masks is not None:
                    H = apply_draw(self.kind, self.rates[j], H, masks[j])
                elif self.kind == "dropout":
                    H = self.activation_noise(j, H)
                else:
                    H = apply_draw(self.kind, self.rates[j], H, self.generator.normal(tf.shape(H)))
            if tape is not None:
                tape[f"hidden_{j}/pre_noise"] = pre
                tape[f"hidden_{j}/post_noise"] = H
        raise AssertionError("unreachable")

    def call(self, X, training=False, masks=None):
        return self.walk(X, training=training, masks=masks)

    def hidden_states(self, X, *, training: bool, masks: Sequence | None = None) -> dict:
        """The hidden activations of ``X`` (``hidden_i/pre_noise``, after the ReLU; ``hidden_i/post_noise``, what
        the next layer reads)."""
        tape: dict = {}
        self.walk(X, training=training, masks=masks, tape=tape)
        return tape


class DropoutMLP(_NoisyMLP):
    """Concise: D2L's ``Sequential`` of ``Flatten``, ``Dense(relu)``, ``Dropout`` per hidden layer and the output
    ``Dense``; ``dropout_class`` is the Dropout layer (Keras' own by default)."""

    def __init__(self, model: ModelSpec, *, noise_seed: int, init_seeds: Sequence[int | None],
                 dropout_class: type = keras.layers.Dropout) -> None:
        super().__init__(model, noise_seed=noise_seed, name="dropout_mlp")
        stack: list = [keras.Input(shape=(model.num_inputs,)), keras.layers.Flatten()]
        for i, (width, p) in enumerate(zip(model.hiddens, model.dropouts)):
            stack.append(dense_layer(width, hidden=True, seed=init_seeds[i], name=f"dense_{i}"))
            stack.append(dropout_class(p, seed=dropout_seed(noise_seed, i), name=f"dropout_{i}"))
        stack.append(dense_layer(model.num_outputs, hidden=False, seed=init_seeds[-1],
                                 name=f"dense_{len(model.hiddens)}"))
        self.net = keras.Sequential(stack, name="net")
        self.build((None, model.num_inputs))

    def dense_layers(self) -> list:
        return [layer for layer in self.net.layers if isinstance(layer, keras.layers.Dense)]

    def dropout_layers(self) -> list:
        return [layer for layer in self.net.layers if isinstance(layer, keras.layers.Dropout)]

    def activation_noise(self, i: int, H):
        return self.dropout_layers()[i](H, training=True)

    def call(self, X, training=False, masks=None):
        if masks is None and (self.kind == "dropout" or not training):
            return self.net(X, training=training)
        return self.walk(X, training=training, masks=masks)


class DropoutMLPScratch(_NoisyMLP):
    """Scratch: D2L's three ``Dense`` layers (``lin1``, ``lin2``, ``lin3`` for the default two hidden layers) with
    the section's ``dropout_layer`` after each hidden one, in training."""

    def __init__(self, model: ModelSpec, *, noise_seed: int, init_seeds: Sequence[int | None]) -> None:
        super().__init__(model, noise_seed=noise_seed, name="dropout_mlp_scratch")
        widths = (*model.hiddens, model.num_outputs)
        self.lins = [dense_layer(width, hidden=i < len(model.hiddens), seed=init_seeds[i], name=f"dense_{i}")
                     for i, width in enumerate(widths)]
        self.build((None, model.num_inputs))

    def dense_layers(self) -> list:
        return list(self.lins)

    def activation_noise(self, i: int, H):
        return dropout_layer(H, self.rates[i], self.generator)
