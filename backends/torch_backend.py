"""PyTorch backend: D2L's dropout MLP with ``nn.Linear``/``nn.ReLU``/``nn.Dropout`` (concise) or the section's
``dropout_layer`` (scratch), trained by plain SGD.

Randomness. Every draw comes from one stream per backend: ``self.generator``, a ``torch.Generator`` on the model's
device seeded with ``contract.noise_seed(seed)``. The scratch ``dropout_layer`` and the other noise kinds draw from it
explicitly. ``nn.Dropout`` (and inductor's compiled dropout) cannot take a generator: they draw from the device's
default generator. Around every call that may run them, ``_native_rng`` swaps the backend's state into the default
generator and swaps the advanced state back out afterwards, restoring the caller's global state. So the concise path
is reproducible (same seed, same masks, whatever ``torch.manual_seed`` said before), isolated (a training step leaves
the global RNG as it found it) and still one stream (consecutive steps draw new masks). Reseeding the default
generator from ours at every step would also be reproducible, but would cost a draw per step and would still have to
restore the caller's state to be isolated; the swap is four small state copies per call (per epoch in train_epoch).

Modes. ``eager``: autograd (``torch.autograd.grad``) and a foreach SGD update under ``no_grad`` that does what
``torch.optim.SGD`` with parameter groups does (weight decay on kernels only, D2L's weight-decay recipe), without the
optimizer's per-step Python. ``compiled``: the whole training step (forward, backward through
``torch.func.grad_and_value``, SGD update) is one ``torch.compile`` graph, compiled per batch shape (the full batches
and the last partial one), and ``train_epoch`` runs the full batches two steps to a graph call (``STEPS_PER_CALL``), so
the first epoch carries the compile time of both graphs. On the CPU the graph's float32 products run on oneDNN's kernels
rather than MKL's (``onednn_mm``: MKL takes its generic code path on a CPU that is not Intel's). Dynamo cannot trace
``generator=`` arguments (graph break), so in compiled mode the backend's own draws (scratch dropout, dropconnect,
Gaussian noise) are made eagerly just before the compiled call, with the same calls in the same order as eager mode;
concise dropout is drawn inside the graph from the swapped-in default generator (on the CPU the graph is compiled with
nn.Dropout's ``bernoulli_`` lowered to an eager ``torch.rand`` compared with 1 - p, see ``_cpu_inductor``: about three
times cheaper than eager ``bernoulli_``; at a keep probability j / 2**b, D2L's 1/2 among them, to b random bits an
element, the same law from fewer words; on CUDA inductor draws its own Philox numbers from the same generator). So
compiled concise masks differ from eager ones while staying seeded, isolated and fresh per step; injected masks agree
exactly.
"""
from __future__ import annotations

import contextlib
import math
import types
from typing import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from backends import contract, registry
from backends.contract import EpochBatches, EpochMetrics, EvalMetrics, Params
from backends.contract import ModelSpec

NATIVE = "native"  # a hidden layer's noise entry: draw with the model's own dropout (nn.Dropout / dropout_layer)


# --------------------------------------------------------------------------------------------------- the section's code
def keep_mask(shape, dropout: float, *, generator: torch.Generator | None, device, dtype=torch.float32):
    """D2L's mask ``(rand(X.shape) > dropout).float()``, drawn ON ``device`` (D2L draws it on the CPU: bug B3)."""
    return (torch.rand(shape, generator=generator, device=device, dtype=dtype) > dropout).to(dtype)


def dropout_layer(X: torch.Tensor, dropout: float, *, generator: torch.Generator | None = None,
                  keep: torch.Tensor | None = None) -> torch.Tensor:
    """The section's ``dropout_layer``: keep where u > p, scale by 1/(1-p); p = 1 gives zeros and p = 0 is the exact
    identity (D2L's ``u > 0`` would drop with probability 2**-24). ``keep`` injects the 0/1 mask instead of drawing."""
    assert 0 <= dropout <= 1
    if dropout == 1:
        return torch.zeros_like(X)
    if dropout == 0:
        return X
    if keep is None:
        keep = keep_mask(X.shape, dropout, generator=generator, device=X.device, dtype=X.dtype)
    return keep * X / (1.0 - dropout)


def _keep_scale(p: float) -> float:
    return 0.0 if p >= 1.0 else 1.0 / (1.0 - p)


class _NoisyMLP(nn.Module):
    """The forward pass both implementations share; ``_activation_noise`` is where they differ.

    ``noise`` is None (noise off) or one entry per hidden layer: ``NATIVE`` (draw with the model's own dropout) or a
    tensor holding the draw (a 0/1 keep mask for dropout and dropconnect, in torch's (out, in) layout for the latter;
    N(0, 1) for gaussian and additive). ``tape``, if given, collects the hidden activations."""

    def __init__(self, model: ModelSpec) -> None:
        super().__init__()
        self.kind = model.noise
        self.dropouts = tuple(model.dropouts)
        self.num_hidden = len(model.hiddens)

    def linears(self) -> list[nn.Linear]:
        raise NotImplementedError

    def _activation_noise(self, i: int, H: torch.Tensor, entry) -> torch.Tensor:
        raise NotImplementedError

    def _noisy_weight(self, i: int, W: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        return W * (keep * _keep_scale(self.dropouts[i]))

    def forward(self, X: torch.Tensor, noise=None, tape: dict | None = None) -> torch.Tensor:
        H = X.reshape(X.shape[0], -1)
        for i, linear in enumerate(self.linears()):
            if noise is not None and self.kind == "dropconnect" and i > 0:
                Z = F.linear(H, self._noisy_weight(i - 1, linear.weight, noise[i - 1]), linear.bias)
            else:
                Z = linear(H)
            if i == self.num_hidden:
                return Z
            H = self.relu(Z)
            if tape is not None:
                tape[f"hidden_{i}/pre_noise"] = H
            if noise is not None and self.kind != "dropconnect":
                H = self._activation_noise(i, H, noise[i])
            if tape is not None:
                tape[f"hidden_{i}/post_noise"] = H
        raise AssertionError("unreachable")

    def _other_noise(self, i: int, H: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        p = self.dropouts[i]
        if self.kind == "gaussian":
            return H * (1.0 + math.sqrt(p / (1.0 - p)) * z)
        return H + p * z  # additive


class DropoutMLP(_NoisyMLP):
    """D2L's concise model: ``nn.Sequential(Flatten, Linear, ReLU, Dropout, Linear, ReLU, Dropout, Linear)``."""

    def __init__(self, model: ModelSpec, device) -> None:
        super().__init__(model)
        sizes = model.layer_sizes
        layers: list[nn.Module] = [nn.Flatten()]
        for i, p in enumerate(model.dropouts):
            layers += [nn.Linear(sizes[i], sizes[i + 1], device=device), nn.ReLU(), nn.Dropout(p)]
        layers.append(nn.Linear(sizes[-2], sizes[-1], device=device))
        self.net = nn.Sequential(*layers)
        self.relu = self.net[2]
        self._linears = [m for m in self.net if isinstance(m, nn.Linear)]
        self._dropout_layers = [m for m in self.net if isinstance(m, nn.Dropout)]

    def linears(self) -> list[nn.Linear]:
        return self._linears

    def _activation_noise(self, i, H, entry):
        if self.kind == "dropout":
            if isinstance(entry, str):  # NATIVE: the framework's own layer (global RNG, see _native_rng)
                return self._dropout_layers[i](H)
            return H * (entry * _keep_scale(self.dropouts[i]))  # injected: bypass nn.Dropout
        return self._other_noise(i, H, entry)


class DropoutMLPScratch(_NoisyMLP):
    """D2L's scratch model: three ``nn.Linear`` and ``dropout_layer`` after each hidden ReLU."""

    def __init__(self, model: ModelSpec, device) -> None:
        super().__init__(model)
        sizes = model.layer_sizes
        self.lins = nn.ModuleList(nn.Linear(a, b, device=device) for a, b in zip(sizes[:-1], sizes[1:]))
        self.relu = nn.ReLU()
        self.generator: torch.Generator | None = None  # set by the backend: its noise stream

    def linears(self) -> list[nn.Linear]:
        return list(self.lins)

    def _activation_noise(self, i, H, entry):
        if self.kind == "dropout":
            if isinstance(entry, str):  # NATIVE: the section's dropout_layer, drawing from the backend's generator
                return dropout_layer(H, self.dropouts[i], generator=self.generator)
            return dropout_layer(H, self.dropouts[i], keep=entry)
        return self._other_noise(i, H, entry)

    def _noisy_weight(self, i, W, keep):  # dropconnect is the section's dropout_layer applied to the weights
        return dropout_layer(W, self.dropouts[i], keep=keep)


# ----------------------------------------------------------------------------------------------------------- training
def sgd_update(params: list[torch.Tensor], grads: list[torch.Tensor], *, lr: float, weight_decay: float) -> None:
    """``torch.optim.SGD`` with weight decay on the kernels only (D2L's parameter-group recipe): kernel gradients gain
    wd * W, then p -= lr * g, in place. ``params`` alternate kernel, bias. Call it under no_grad."""
    if weight_decay:
        grads[0::2] = torch._foreach_add(grads[0::2], params[0::2], alpha=float(weight_decay))
    torch._foreach_add_(params, grads, alpha=-float(lr))


# Compiled dropout on the CPU. nn.Dropout is aten.dropout, which on the CPU traces to ``empty_like(X).bernoulli_(q)``
# with q = 1 - p; inductor keeps that as a call to eager ``bernoulli_`` (about 0.9 ms per 256x256 mask here: 40% of a
# compiled step), and its own fused Philox numbers (``fallback_random=False`` with the decomposition CUDA gets) cost
# about 0.67 ms. So on the CPU the graph is compiled with ``bernoulli_(X, q)`` decomposed into
# ``X.copy_(rand_like(X) < q)`` and ``fallback_random`` on, which leaves ``rand`` a call to eager ``torch.rand`` (about
# 0.3 ms) and fuses the compare and the scaling into inductor's kernels. Only HOW the bits are made changes: keep with
# probability q = 1 - p as before, drawn from the same swapped-in default generator (so seeded by the backend's noise
# seed, reproducible, isolated and fresh every step); the masks differ from eager nn.Dropout's (which uses
# bernoulli_), as on CUDA. Cost: inductor's FX graph cache is bypassed for this backend (a cold compile per process).
#
# Where q is j / 2**b with j odd and b one of 1, 2, 4, 8 (D2L's dropout 0.5: q = 1/2, b = 1), ``rand < q`` needs only b
# bits of each element's word: torch.rand's float32 u is (24 bits of an mt19937 word) / 2**24, and u < q holds exactly
# when the top b of those 24 bits, read as an integer, are below j. So the graph takes b fresh bits an element from
# ``random_()`` int64 words (32 // b elements a word: 63 uniform bits each, of which the low 32 are used) instead of a
# word an element: the same law, exactly, from the same generator, at 1/32 of the words for dropout 0.5 (the README's
# bench section has the measurement). Other rates keep ``rand < q``.
def keep_mask_like(like: torch.Tensor, q: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """A bool keep mask shaped like ``like``, each element kept with probability q: b random bits an element where
    ``contract.dyadic_keep(q)`` gives b, else ``rand < q``. From the default generator with functional ops (inside a
    graph), or from ``generator`` (eager, the bench's probe)."""
    dyadic = contract.dyadic_keep(q)
    if dyadic is None:
        if generator is not None:
            return torch.rand(like.shape, generator=generator, device=like.device) < q
        return torch.rand_like(like, dtype=torch.float32) < q
    bits, below = dyadic
    count = like.numel()
    words = torch.empty(-(-count // (32 // bits)), dtype=torch.int64, device=like.device)
    words = words.random_(generator=generator) if generator is not None else torch.ops.aten.random.default(words)
    shifts = torch.arange(0, 32, bits, dtype=torch.int64, device=like.device)
    values = ((words.unsqueeze(1) >> shifts) & ((1 << bits) - 1)).flatten()[:count]
    return (values < below).reshape(like.shape)


def _bernoulli_via_rand(self, p=0.5, *, generator=None):
    if self.device.type != "cpu" or generator is not None or not isinstance(p, float):
        return NotImplemented
    return self.copy_(keep_mask_like(self, p))


def _bernoulli_p_via_rand(self, p=0.5, *, generator=None):
    if self.device.type != "cpu" or generator is not None:
        return NotImplemented
    return keep_mask_like(self, p).to(self.dtype)


# ----------------------------------------------------------------- the compiled CPU step's products through oneDNN
# PyTorch sends a float32 ``mm`` or ``addmm`` on the CPU to the BLAS it was built with (MKL in the pip wheels) and keeps
# oneDNN, which it bundles too, for its mkldnn operators. MKL takes its generic code path on a CPU that is not Intel's
# (``MKL_VERBOSE`` names "Intel(R) Architecture processors" on an AMD EPYC), while oneDNN picks its kernels from the
# CPU's instruction set; the README's bench section has the measurements. ``onednn_mm`` and ``onednn_addmm`` are
# oneDNN's inner product (``mkldnn._linear_pointwise``, the operator inductor itself emits for frozen linear layers) on
# the operands as they come, transposed views included: the same float32 products in another summation order. They are
# custom operators so that inductor calls them as opaque kernels on the tensors autograd hands it (no contiguous copies
# of the transposed operands); ``ONEDNN_DECOMPOSITIONS`` maps the compiled graph's ``aten.mm`` and ``aten.addmm`` to
# them for CPU float32 operands, and any other call keeps its ATen kernel.
ONEDNN_AVAILABLE = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
ONEDNN_LIBRARY = "oneDNN (mkldnn._linear_pointwise in the compiled graph)"


_ONEDNN_OPS = torch.library.Library("dropbench", "DEF")
_ONEDNN_OPS.define("onednn_mm(Tensor a, Tensor b) -> Tensor")
_ONEDNN_OPS.define("onednn_addmm(Tensor bias, Tensor a, Tensor b) -> Tensor")


def onednn_mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b``: oneDNN's inner product computes ``input @ weight^T``, so ``b`` goes in as its transposed view."""
    return torch.ops.mkldnn._linear_pointwise.default(a, b.t(), None, "none", [], "")


def onednn_addmm(bias: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``bias + a @ b`` with ``bias`` a vector over the columns (``nn.Linear``'s forward)."""
    return torch.ops.mkldnn._linear_pointwise.default(a, b.t(), bias, "none", [], "")


# A CPU kernel, not ``torch.library.custom_op``: its wrapper cost 6 us more a call, 8 calls a step. The operators
# only ever run after autograd (in the compiled graph, and in the bench's probe), so they need no gradient formula.
_ONEDNN_OPS.impl("onednn_mm", onednn_mm, "CPU")
_ONEDNN_OPS.impl("onednn_addmm", onednn_addmm, "CPU")


@torch.library.register_fake("dropbench::onednn_mm")
def _(a, b):
    return a.new_empty((a.shape[0], b.shape[1]))


@torch.library.register_fake("dropbench::onednn_addmm")
def _(bias, a, b):
    return a.new_empty((a.shape[0], b.shape[1]))


def _routed(*tensors) -> bool:
    return all(t.dtype == torch.float32 and t.device.type == "cpu" for t in tensors)


def _mm(a, b):
    if not (_routed(a, b) and a.dim() == 2 and b.dim() == 2):
        return NotImplemented
    return torch.ops.dropbench.onednn_mm(a, b)


def _addmm(bias, a, b, *, beta=1, alpha=1):
    if not (beta == 1 and alpha == 1 and bias.dim() == 1 and bias.shape[0] == b.shape[-1] and _routed(bias, a, b)
            and a.dim() == 2 and b.dim() == 2):
        return NotImplemented
    return torch.ops.dropbench.onednn_addmm(bias, a, b)


ONEDNN_DECOMPOSITIONS = ({torch.ops.aten.mm.default: _mm, torch.ops.aten.addmm.default: _addmm} if ONEDNN_AVAILABLE
                         else {})


def _cpu_inductor(gm, example_inputs):
    """torch.compile's inductor backend with the CPU dropout decomposition above, and the float32 products through
    oneDNN (``onednn_mm``, ``onednn_addmm``)."""
    from torch._inductor.compile_fx import compile_fx
    from torch._inductor.decomposition import decompositions

    table = {**decompositions, torch.ops.aten.bernoulli_.float: _bernoulli_via_rand,
             torch.ops.aten.bernoulli.p: _bernoulli_p_via_rand, **ONEDNN_DECOMPOSITIONS}
    return compile_fx(gm, example_inputs, decompositions=table, config_patches={"fallback_random": True})


_STEP_CODES: dict[tuple, types.CodeType] = {}
# Consecutive full batches that compiled mode's train_epoch runs in one graph call: two halve the per-call cost of a
# step; four gained little more for twice the compile time (measured in the README's bench section).
STEPS_PER_CALL = 2


def _own_code(function: types.FunctionType, key: tuple) -> types.FunctionType:
    """``function`` with a code object of its own per configuration ``key``. Dynamo caches graphs on the code object
    and falls back to eager after 8 recompiles of one code object; every backend built in one process (the parity
    ladder builds dozens) would share one. Backends with the same configuration still share their graphs."""
    key = (function.__name__, *key)
    code = _STEP_CODES.get(key)
    if code is None:
        code = _STEP_CODES[key] = function.__code__.replace(co_name=f"{function.__name__}_{len(_STEP_CODES)}")
    return types.FunctionType(code, function.__globals__, code.co_name, function.__defaults__, function.__closure__)


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
        self._compiled, self._compiled_steps = (self._make_compiled_steps() if self.train.mode == "compiled"
                                                else (None, None))

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
        """Run nn.Dropout / inductor's dropout (which draw from the default generator) on the backend's stream, and
        leave the caller's global RNG state as it was. Only native entries draw inside, so nothing else touches
        ``self.generator`` meanwhile."""
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
    def _eager_step(self, xb: torch.Tensor, yb: torch.Tensor, noise: tuple) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.net(xb, noise)
        loss = F.cross_entropy(logits, yb)
        # autograd.grad instead of backward() + optimizer.step(): no .grad bookkeeping (zero_grad, AccumulateGrad)
        # and no optimizer Python per step, about a tenth of an eager step on this CPU. allow_unused: at p = 1
        # dropout_layer returns zeros_like(X), cut off from the layers before it; their gradient is 0, and weight
        # decay must still reach their kernels (SGD would skip a parameter whose grad is None).
        grads = torch.autograd.grad(loss, self.params, allow_unused=True, materialize_grads=True)
        with torch.no_grad():
            sgd_update(self.params, list(grads), lr=self.train.lr, weight_decay=self.train.weight_decay)
        return loss.detach(), (logits.detach().argmax(dim=1) == yb).sum()

    def _make_compiled_steps(self):
        """(one training step, ``STEPS_PER_CALL`` consecutive steps) as ``torch.compile`` graphs, each run as
        ``f(xb, yb, noise)``; the second takes the steps' batches stacked (``STEPS_PER_CALL x B`` rows) and a noise
        tuple per step, and returns a (loss, correct) pair per step. The steps inside one graph are the same SGD
        steps one after another (the second sees the weights the first updated): one call per pair halves what a
        step pays per call (Dynamo's guards, the graph's wrapper, one gather instead of two)."""
        net, lr, weight_decay = self.net, float(self.train.lr), float(self.train.weight_decay)
        names = [name for name, _ in net.named_parameters()]
        assert all(a is b for (_, a), b in zip(net.named_parameters(), self.params)), "kernel, bias, kernel, ..."

        def sgd_step(params, xb, yb, noise):
            def loss_fn(values):
                logits = torch.func.functional_call(net, dict(zip(names, values)), (xb, noise))
                return F.cross_entropy(logits, yb), logits

            grads, (loss, logits) = torch.func.grad_and_value(loss_fn, has_aux=True)(params)
            sgd_update(params, list(grads), lr=lr, weight_decay=weight_decay)  # as eager; params alias the weights
            return loss, (logits.argmax(dim=1) == yb).sum()

        def torch_train_step(params, xb, yb, noise):
            return sgd_step(params, xb, yb, noise)

        def torch_train_steps(params, xb, yb, noises):
            size = xb.shape[0] // len(noises)
            return [sgd_step(params, xb[j * size:(j + 1) * size], yb[j * size:(j + 1) * size], noise)
                    for j, noise in enumerate(noises)]

        key = (self.model, self.train.lr, self.train.weight_decay, self.device.type)
        compiler = _cpu_inductor if self.device.type == "cpu" else "inductor"
        one, several = (torch.compile(_own_code(function, key), backend=compiler, dynamic=False)
                        for function in (torch_train_step, torch_train_steps))
        # grad_and_value differentiates w.r.t. its inputs: give it detached aliases (sharing storage) so the graph
        # holds no outer autograd state and the in-place update lands in the module's parameters.
        detached = [p.detach() for _, p in net.named_parameters()]

        def run_one(xb, yb, noise):
            with torch.no_grad():
                return one(detached, xb, yb, noise)

        def run_several(xb, yb, noises):
            with torch.no_grad():
                return several(detached, xb, yb, noises)

        return run_one, run_several

    def _step(self, xb, yb, noise):
        if self._compiled is not None:
            return self._compiled(xb, yb, noise)
        return self._eager_step(xb, yb, noise)

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

    def train_epoch(self, *, batches: EpochBatches) -> EpochMetrics:
        xt, yt = self._training_set(batches)
        order = torch.from_numpy(np.asarray(batches.order, dtype=np.int64)).to(self.device)
        n, size = len(order), batches.batch_size
        steps = len(batches)
        losses, hits = [], []  # stacked once at the end: a copy into a preallocated tensor costs ~10 us a step
        native = (NATIVE,) * len(self.model.hiddens) if self._uses_native() else None
        self.net.train(True)
        several, start = self._compiled_steps, 0
        with self._native_rng(native):
            while start < n:
                if several is not None and start + STEPS_PER_CALL * size <= n:  # full batches: one call a pair
                    idx = order[start:start + STEPS_PER_CALL * size]
                    noises = tuple(native if native is not None else self._draw(size) for _ in range(STEPS_PER_CALL))
                    for loss, correct_count in several(xt.index_select(0, idx), yt.index_select(0, idx), noises):
                        losses.append(loss)
                        hits.append(correct_count)
                    start += STEPS_PER_CALL * size
                    continue
                idx = order[start:start + size]
                noise = native if native is not None else self._draw(len(idx))
                loss, correct_count = self._step(xt.index_select(0, idx), yt.index_select(0, idx), noise)
                losses.append(loss)
                hits.append(correct_count)
                start += size
        losses, correct = torch.stack(losses), torch.stack(hits)
        counts = torch.full((steps,), float(size), dtype=torch.float64, device=self.device)
        counts[-1] = n - size * (steps - 1)
        loss_sum = float((losses.double() * counts).sum())  # the one host read: waits for the epoch's work
        return EpochMetrics(loss=loss_sum / n, acc=int(correct.sum()) / n)

    def evaluate(self, *, x, y) -> EvalMetrics:
        cache = self._eval_cache  # the split is the same arrays every epoch: convert (and move) it once
        if cache is None or cache[0] is not x or cache[1] is not y:
            cache = self._eval_cache = (x, y, self._x(x), self._y(y))
        xt, yt = cache[2], cache[3]
        self.net.eval()
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        hits = torch.zeros((), dtype=torch.int64, device=self.device)
        with torch.no_grad():
            for start in range(0, len(xt), 10_000):
                xb, yb = xt[start:start + 10_000], yt[start:start + 10_000]
                logits = self.net(xb)
                loss_sum += F.cross_entropy(logits.double(), yb, reduction="sum")
                hits += (logits.argmax(dim=1) == yb).sum()
        return EvalMetrics(loss=float(loss_sum) / len(xt), acc=int(hits) / len(xt))

    def _onednn_products(self) -> bool:
        """Whether this mode's step runs its products through ``onednn_mm`` (compiled, on the CPU)."""
        return self.train.mode == "compiled" and self.device.type == "cpu" and ONEDNN_AVAILABLE

    def gemm_library(self, *, m: int, k: int, n: int) -> str:
        """On the CPU ``aten::mm`` goes to the BLAS torch was built with (``BLAS_INFO``), and the compiled step's
        products to oneDNN; on CUDA, cuBLAS."""
        if self.device.type == "cuda":
            return "cuBLAS"
        if self._onednn_products():
            return ONEDNN_LIBRARY
        config = torch.__config__.show()
        blas = next((part.split("=", 1)[1] for part in config.replace(",", "\n").split() if
                     part.startswith("BLAS_INFO=")), "unknown")
        return f"{'MKL' if blas == 'mkl' else blas} (aten::mm; BLAS_INFO={blas})"

    def gemm_step_probe(self, *, products, rounds: int = 1):
        """``products`` as ``torch.mm(..., out=)`` calls (aten::mm; a transposed operand is a transposed view, which
        the BLAS reads with its transpose flag, as autograd's mm backward hands it), or, where the compiled step runs
        its products through oneDNN, as calls of that operator on the same views."""
        generator = torch.Generator(device=self.device)
        generator.manual_seed(0)
        operands = []
        for p in products:
            a, b = (torch.randn(shape, generator=generator, device=self.device)
                    for shape in contract.held_operand_shapes(p))
            operands.append((a.t() if p["ta"] else a, b.t() if p["tb"] else b,
                             torch.empty((p["m"], p["n"]), device=self.device)))

        if self._onednn_products():
            def run():
                outputs = []
                for _ in range(rounds):
                    outputs = [torch.ops.dropbench.onednn_mm(a, b) for a, b, _ in operands]
                return outputs
            return run

        def run():
            for _ in range(rounds):
                for a, b, c in operands:
                    torch.mm(a, b, out=c)
            self.synchronize()
            return [c for _, _, c in operands]
        return run

    def noise_probe(self, *, batch_size: int):
        """nn.Dropout as this mode's step makes it: eager ``bernoulli_``; compiled on the CPU the lowering of
        ``_cpu_inductor`` (``keep_mask_like``: random bits or ``torch.rand``, and a compare; inside the step the
        compare and the product are fused into its kernels, here they are eager ops); on CUDA inductor's own Philox,
        measured here as eager ``bernoulli_``."""
        generator = torch.Generator(device=self.device)
        generator.manual_seed(0)
        shapes = [((batch_size, w), p) for w, p in zip(self.model.hiddens, self.model.dropouts) if 0 < p < 1]
        ones = [torch.ones(shape, device=self.device) for shape, _ in shapes]
        lowered = self._compiled is not None and self.device.type == "cpu"

        def draw():
            for x, (shape, p) in zip(ones, shapes):
                if lowered:
                    keep = keep_mask_like(x, 1.0 - p, generator)
                else:
                    keep = torch.empty(shape, device=self.device).bernoulli_(1.0 - p, generator=generator)
                x * keep * (1.0 / (1.0 - p))
            self.synchronize()
        if lowered:
            how = contract.mask_draw_kinds([p for _, p in shapes], "mt19937", "torch.rand < 1-p (mt19937)")
        else:
            how = f"bernoulli_ ({self.device.type} generator)"
        return how, draw

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
