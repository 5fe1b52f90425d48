"""The PyTorch backend, stock tier: D2L's dropout MLP (``model``) trained the way PyTorch's tutorials and D2L train it.

Training. ``torch.optim.SGD`` with two parameter groups, the kernels with ``weight_decay`` and the biases without
(D2L's weight-decay recipe), and per batch ``optimizer.zero_grad(); loss = F.cross_entropy(net(X), y);
loss.backward(); optimizer.step()``. Compiled mode is ``torch.compile(net)`` with its defaults (inductor, one
training step per call); the loss, the backward call and the optimizer stay eager, as in PyTorch's ``torch.compile``
tutorial. Evaluation, ``forward``, ``loss_and_grads`` and ``activations`` run the module itself in both modes.

Randomness. Every draw comes from one stream per backend: ``self.generator``, a ``torch.Generator`` on the model's
device seeded with ``contract.noise_seed(seed)``. The scratch ``dropout_layer`` and the other noise kinds draw from it
explicitly. ``nn.Dropout`` (and the compiled graph's dropout) cannot take a generator: they draw from the device's
default generator. Around every call that may run them, ``_native_rng`` swaps the backend's state into the default
generator and swaps the advanced state back out afterwards, restoring the caller's global state. So the concise path
is reproducible (same seed, same masks, whatever ``torch.manual_seed`` said before), isolated (a training step leaves
the global RNG as it found it) and still one stream (consecutive steps draw new masks). Dynamo cannot trace a
``generator=`` draw from the generator the scratch model holds (a graph break, which would split the compiled model
into pieces), so in compiled mode the backend's own draws (scratch dropout, dropconnect, Gaussian noise) are made
eagerly just before the compiled call, with the same calls in the same order as eager mode; concise dropout is drawn
inside the graph (by inductor's own random numbers, seeded from the swapped-in default generator). So compiled concise
masks differ from eager ones while staying seeded, isolated and fresh per step; injected masks agree exactly.
"""
from __future__ import annotations

import contextlib
import math
from typing import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from backends import contract, registry
from backends.contract import EpochBatches, EpochMetrics, EvalMetrics, Params
from backends.torch.model import NATIVE, DropoutMLP, DropoutMLPScratch, keep_mask


class Backend(contract.Backend):
    name = "torch"
    framework = "torch"
    capabilities = registry.capabilities("torch")

    def __init__(self, *, model, train, threads=None) -> None:
        super().__init__(model=model, train=train, threads=threads)
        if threads is not None:
            torch.set_num_threads(int(threads))
        if train.device == "gpu":
            if not torch.cuda.is_available():
                raise ValueError(f"device gpu needs CUDA, which torch {torch.__version__} cannot see here; "
                                 f"use --device cpu")
            self.device = torch.device("cuda", torch.cuda.current_device())
        else:
            self.device = torch.device("cpu")
        self._train_cache: tuple | None = None
        self._eval_cache: tuple | None = None

    # --- build / params ------------------------------------------------------------------------------------------
    def build(self, *, seed, params=None) -> None:
        model_class = DropoutMLP if self.model.impl == "concise" else DropoutMLPScratch
        with torch.device("meta"):  # no default init: it would draw from (and advance) the global RNG
            net = model_class(self.model, device="meta")
        self.net = net.to_empty(device=self.device)  # keeps the module objects, so the lists of layers stay valid
        self.linears = self.net.linears()
        self.kernels = [linear.weight for linear in self.linears]
        self.params = [p for linear in self.linears for p in (linear.weight, linear.bias)]
        if params is not None:
            self.set_params(params=params)
        else:
            self._framework_init(seed)
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(contract.noise_seed(seed))
        if isinstance(self.net, DropoutMLPScratch):
            self.net.generator = self.generator
        self._default_generator = (torch.cuda.default_generators[self.device.index] if self.device.type == "cuda"
                                   else torch.default_generator)
        self._prepare_training()

    def _prepare_training(self) -> None:
        """The optimizer (D2L's two parameter groups: weight decay on the kernels only) and, in compiled mode,
        ``torch.compile`` of the model with its defaults. Before compiling, ``torch.compiler.reset()`` puts Dynamo
        in the state of a fresh process (which a harness job is): every backend's model shares its class's
        ``forward`` code object, on which Dynamo keeps its graphs and past 8 recompiles falls back to eager, so the
        backends built before it in one process (the parity ladder builds dozens) could otherwise send this one's
        steps to eager without a word."""
        biases = [linear.bias for linear in self.linears]
        self.optimizer = torch.optim.SGD([{"params": self.kernels, "weight_decay": self.train.weight_decay},
                                          {"params": biases, "weight_decay": 0.0}], lr=self.train.lr)
        self._compiled = None
        if self.train.mode == "compiled":
            torch.compiler.reset()
            self._compiled = torch.compile(self.net)

    def _framework_init(self, seed: int) -> None:
        """``nn.Linear.reset_parameters`` (kaiming_uniform a=sqrt(5), bias U(+-1/sqrt(fan_in))), layer by layer, from
        a generator seeded with ``seed`` instead of the global RNG; drawn on the CPU so every device gets the same."""
        init_generator = torch.Generator().manual_seed(int(seed))
        with torch.no_grad():
            for linear in self.linears:
                weight = torch.empty(linear.weight.shape)
                nn.init.kaiming_uniform_(weight, a=math.sqrt(5), generator=init_generator)
                bias = torch.empty(linear.bias.shape)
                bound = 1.0 / math.sqrt(linear.in_features)
                nn.init.uniform_(bias, -bound, bound, generator=init_generator)
                linear.weight.copy_(weight)
                linear.bias.copy_(bias)

    def get_params(self) -> Params:
        out: Params = {}
        for i, linear in enumerate(self.linears):
            out[f"dense_{i}/kernel"] = linear.weight.detach().T.to("cpu", copy=True).contiguous().numpy()
            out[f"dense_{i}/bias"] = linear.bias.detach().to("cpu", copy=True).numpy()
        return out

    def set_params(self, *, params: Mapping[str, np.ndarray]) -> None:
        contract.check_params(self.model, params)
        with torch.no_grad():
            for i, linear in enumerate(self.linears):
                kernel = np.asarray(params[f"dense_{i}/kernel"], dtype=np.float32)
                linear.weight.copy_(torch.from_numpy(np.ascontiguousarray(kernel.T)))
                linear.bias.copy_(torch.from_numpy(np.asarray(params[f"dense_{i}/bias"], dtype=np.float32).copy()))

    # --- noise ---------------------------------------------------------------------------------------------------
    def _tensor(self, array, dtype=torch.float32) -> torch.Tensor:
        return torch.as_tensor(np.asarray(array)).to(device=self.device, dtype=dtype)

    def _injected(self, masks: Sequence[np.ndarray]) -> tuple:
        entries = [self._tensor(m) for m in masks]
        if self.model.noise == "dropconnect":  # canonical (in, out) -> torch weight layout (out, in)
            entries = [e.T for e in entries]
        return tuple(entries)

    def _uses_native(self) -> bool:
        """Whether the native path draws inside the model (else the backend pre-draws every entry)."""
        return self.model.noise == "dropout" and (self.model.impl == "concise" or self._compiled is None)

    def _draw(self, batch_size: int) -> tuple:
        """The backend's own draws for one step, made before the forward pass from ``self.generator``."""
        entries = []
        shapes = contract.noise_shapes(self.model, batch_size)
        for shape, p in zip(shapes, self.model.dropouts):
            if self.model.noise in ("dropout", "dropconnect"):
                if p in (0.0, 1.0):  # nothing to draw (dropout_layer's early returns); the scale does the rest
                    entry = torch.full(shape, 1.0 if p == 0 else 0.0, device=self.device)
                else:
                    entry = keep_mask(shape, p, generator=self.generator, device=self.device)
                entries.append(entry.T if self.model.noise == "dropconnect" else entry)
            else:
                entries.append(torch.randn(shape, generator=self.generator, device=self.device))
        return tuple(entries)

    def _noise_for(self, batch_size: int, masks) -> tuple:
        if masks is not None:
            return self._injected(masks)
        if self._uses_native():
            return (NATIVE,) * len(self.model.hiddens)
        return self._draw(batch_size)

    @contextlib.contextmanager
    def _native_rng(self, noise):
        """Run nn.Dropout / the compiled graph's dropout (which draw from the default generator) on the backend's
        stream, and leave the caller's global RNG state as it was. Only native entries draw inside, so nothing else
        touches ``self.generator`` meanwhile."""
        if noise is None or not any(isinstance(entry, str) for entry in noise) or self.model.impl != "concise":
            yield
            return
        default = self._default_generator
        outside = default.get_state()
        default.set_state(self.generator.get_state())
        try:
            yield
        finally:
            self.generator.set_state(default.get_state())
            default.set_state(outside)

    # --- forward / gradients -------------------------------------------------------------------------------------
    def _x(self, x) -> torch.Tensor:
        return self._tensor(np.asarray(x, dtype=np.float32).reshape(len(x), -1))

    def _y(self, y) -> torch.Tensor:
        return self._tensor(y, dtype=torch.int64)

    def forward(self, *, x, train, masks=None) -> np.ndarray:
        noise = self._noise_for(len(x), masks) if train else None
        self.net.train(train)
        with torch.no_grad(), self._native_rng(noise):
            logits = self.net(self._x(x), noise)
        return logits.cpu().numpy()

    def loss_and_grads(self, *, x, y, masks=None) -> tuple[float, Params]:
        noise = self._noise_for(len(x), masks)
        self.net.train(True)
        with self._native_rng(noise):
            loss = F.cross_entropy(self.net(self._x(x), noise), self._y(y))
        # allow_unused: at p = 1 dropout_layer returns zeros_like(X), cut off from the layers before it (gradient 0)
        grads = torch.autograd.grad(loss, self.params, allow_unused=True, materialize_grads=True)
        out: Params = {}
        for i in range(len(self.linears)):
            out[f"dense_{i}/kernel"] = grads[2 * i].T.cpu().contiguous().numpy()
            out[f"dense_{i}/bias"] = grads[2 * i + 1].cpu().numpy()
        return float(loss.detach()), out

    def activations(self, *, x, train, masks=None) -> dict[str, np.ndarray]:
        noise = self._noise_for(len(x), masks) if train else None
        tape: dict[str, torch.Tensor] = {}
        self.net.train(train)
        with torch.no_grad(), self._native_rng(noise):
            self.net(self._x(x), noise, tape)
        return {k: v.cpu().numpy().astype(np.float32, copy=True) for k, v in tape.items()}

    # --- training ------------------------------------------------------------------------------------------------
    def _step(self, xb: torch.Tensor, yb: torch.Tensor, noise: tuple) -> tuple[torch.Tensor, torch.Tensor]:
        """One SGD step as the tutorials write it; returns (the batch's mean loss, its correct count) as tensors."""
        net = self._compiled if self._compiled is not None else self.net
        self.optimizer.zero_grad()
        logits = net(xb, noise)
        loss = F.cross_entropy(logits, yb)
        loss.backward()
        for param in self.params:
            if param.grad is None:  # at p = 1 dropout_layer's zeros_like(X) cuts the layers before it off; their
                param.grad = torch.zeros_like(param)  # gradient is 0, and SGD skips a None grad (no weight decay)
        self.optimizer.step()
        return loss.detach(), (logits.detach().argmax(dim=1) == yb).sum()

    def train_step(self, *, x, y, masks=None) -> float:
        noise = self._noise_for(len(x), masks)
        self.net.train(True)
        with self._native_rng(noise):
            loss, _ = self._step(self._x(x), self._y(y), noise)
        return float(loss)

    def _training_set(self, batches: EpochBatches) -> tuple[torch.Tensor, torch.Tensor]:
        """The whole training split as tensors, made once per array (``from_numpy``: no copy on the CPU)."""
        cache = self._train_cache
        if cache is None or cache[0] is not batches.x or cache[1] is not batches.y:
            x = batches.x
            if not (x.dtype == np.float32 and x.flags.c_contiguous):
                x = np.ascontiguousarray(x, dtype=np.float32)
            xt = torch.from_numpy(x.reshape(len(x), -1)).to(self.device)
            yt = torch.from_numpy(np.asarray(batches.y).astype(np.int64)).to(self.device)  # cross_entropy wants int64
            cache = self._train_cache = (batches.x, batches.y, xt, yt)
        return cache[2], cache[3]

    def _epoch_metrics(self, losses: list, hits: list, batches: EpochBatches) -> EpochMetrics:
        """The epoch's example-weighted mean loss and accuracy from the steps' tensors: the one host read."""
        n, size, steps = len(batches.order), batches.batch_size, len(batches)
        losses_t, correct = torch.stack(losses), torch.stack(hits)
        counts = torch.full((steps,), float(size), dtype=torch.float64, device=self.device)
        counts[-1] = n - size * (steps - 1)
        loss_sum = float((losses_t.double() * counts).sum())  # waits for the epoch's work
        return EpochMetrics(loss=loss_sum / n, acc=int(correct.sum()) / n)

    def train_epoch(self, *, batches: EpochBatches) -> EpochMetrics:
        xt, yt = self._training_set(batches)
        order = torch.from_numpy(np.asarray(batches.order, dtype=np.int64)).to(self.device)
        losses, hits = [], []
        native = (NATIVE,) * len(self.model.hiddens) if self._uses_native() else None
        self.net.train(True)
        with self._native_rng(native):
            for start in range(0, len(order), batches.batch_size):
                idx = order[start:start + batches.batch_size]
                noise = native if native is not None else self._draw(len(idx))
                loss, correct_count = self._step(xt.index_select(0, idx), yt.index_select(0, idx), noise)
                losses.append(loss)
                hits.append(correct_count)
        return self._epoch_metrics(losses, hits, batches)

    def evaluate(self, *, x, y) -> EvalMetrics:
        cache = self._eval_cache  # the split is the same arrays every epoch: convert (and move) it once
        if cache is None or cache[0] is not x or cache[1] is not y:
            cache = self._eval_cache = (x, y, self._x(x), self._y(y))
        xt, yt = cache[2], cache[3]
        self.net.eval()
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        hits = torch.zeros((), dtype=torch.int64, device=self.device)
        with torch.no_grad():
            for start in range(0, len(xt), contract.EVAL_CHUNK):
                xb, yb = xt[start:start + contract.EVAL_CHUNK], yt[start:start + contract.EVAL_CHUNK]
                logits = self.net(xb)
                loss_sum += F.cross_entropy(logits.double(), yb, reduction="sum")
                hits += (logits.argmax(dim=1) == yb).sum()
        return EvalMetrics(loss=float(loss_sum) / len(xt), acc=int(hits) / len(xt))

    def set_matmul_precision(self, *, allow_tf32: bool) -> None:
        # Process-wide switches: CUDA matmuls and cuDNN in TF32 or full float32 (the CPU ignores them).
        torch.backends.cuda.matmul.allow_tf32 = bool(allow_tf32)
        torch.backends.cudnn.allow_tf32 = bool(allow_tf32)

    def matmul_precision(self) -> str:
        return (f"cuda.matmul.allow_tf32={torch.backends.cuda.matmul.allow_tf32} "
                f"cudnn.allow_tf32={torch.backends.cudnn.allow_tf32} "
                f"float32_matmul_precision={torch.get_float32_matmul_precision()}")

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
