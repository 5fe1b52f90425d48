"""The PyTorch backend, tuned tier: the stock ``Backend`` with this project's same-law speed paths in its training step.

- eager: ``torch.autograd.grad`` and a foreach SGD update (``sgd_update``) instead of ``backward()`` and
  ``torch.optim.SGD``;
- compiled: the whole training step (forward, backward through ``torch.func.grad_and_value``, SGD update) as one
  ``torch.compile`` graph per configuration (``_own_code``), compiled per batch shape, ``STEPS_PER_CALL`` full batches
  to a graph call; on the CPU compiled by ``_cpu_inductor``: nn.Dropout's ``bernoulli_`` lowered to ``keep_mask_like``
  (random bits at a dyadic keep probability) and the float32 products on oneDNN (``dropbench::onednn_mm``/``addmm``).

The model, the noise stream (``_native_rng``, the eager pre-draws of compiled mode), parameters, evaluation and the
contract's other methods are the stock tier's. Concise compiled masks on the CPU are drawn from the same swapped-in
default generator with the same law as nn.Dropout's, but are other masks; injected masks agree exactly.
"""
from __future__ import annotations

import types

import numpy as np
import torch
import torch.nn.functional as F

from backends import contract
from backends.contract import EpochBatches, EpochMetrics
from backends.torch import backend as stock
from backends.torch.model import NATIVE


def sgd_update(params: list[torch.Tensor], grads: list[torch.Tensor], *, lr: float, weight_decay: float) -> None:
    """``torch.optim.SGD`` with weight decay on the kernels only (D2L's parameter-group recipe): kernel gradients gain
    wd * W, then p -= lr * g, in place. ``params`` alternate kernel, bias. Call it under no_grad.

    Replaces ``optimizer.step()``: two foreach calls over the step's tensors, without the optimizer's per-step Python
    (parameter groups, state, hooks) and without ``.grad`` bookkeeping, since the gradients come from
    ``autograd.grad``."""
    if weight_decay:
        grads[0::2] = torch._foreach_add(grads[0::2], params[0::2], alpha=float(weight_decay))
    torch._foreach_add_(params, grads, alpha=-float(lr))


def keep_mask_like(like: torch.Tensor, q: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """A bool keep mask shaped like ``like``, each element kept with probability q: b random bits an element where
    ``contract.dyadic_keep(q)`` gives b, else ``rand < q``. From the default generator with functional ops (inside a
    graph), or from ``generator`` (eager, the bench's probe).

    Replaces the draw of the compiled CPU step's dropout masks (nn.Dropout decomposes to ``bernoulli_(q)``, which
    inductor by default makes from its own random numbers, a float per element in its kernel, and with
    ``fallback_random`` alone leaves as a call to the eager kernel). Where q is j / 2**b with j odd and b one of 1, 2,
    4, 8 (D2L's dropout 0.5: q = 1/2, b = 1), ``rand < q`` needs only b bits of each element's word: torch.rand's
    float32 u is (24 bits of an mt19937 word) / 2**24, and u < q holds exactly when the top b of those 24 bits, read as
    an integer, are below j. So the mask takes b fresh bits an element from ``random_()`` int64 words (32 // b elements
    a word: 63 uniform bits each, of which the low 32 are used) instead of a word an element: the same law, exactly,
    from the same generator, from 1/32 of the words at dropout 0.5. Other rates keep ``rand < q``, whose compare
    inductor fuses into its kernels."""
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


ONEDNN_AVAILABLE = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
ONEDNN_LIBRARY = "oneDNN (mkldnn._linear_pointwise in the compiled graph)"

_ONEDNN_OPS = torch.library.Library("dropbench", "DEF")
_ONEDNN_OPS.define("onednn_mm(Tensor a, Tensor b) -> Tensor")
_ONEDNN_OPS.define("onednn_addmm(Tensor bias, Tensor a, Tensor b) -> Tensor")


def onednn_mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b``: oneDNN's inner product computes ``input @ weight^T``, so ``b`` goes in as its transposed view.

    Replaces the compiled CPU graph's ``aten.mm`` (and, as ``onednn_addmm``, ``aten.addmm``), which PyTorch sends to
    the BLAS it was built with (MKL in the pip wheels). MKL takes its generic code path on a CPU that is not Intel's
    (``MKL_VERBOSE`` names "Intel(R) Architecture processors" on an AMD EPYC), while oneDNN, which PyTorch bundles
    too, picks its kernels from the CPU's instruction set. This is oneDNN's inner product
    (``mkldnn._linear_pointwise``, the operator inductor itself emits for frozen linear layers) on the operands as
    they come, transposed views included: the same float32 products in another summation order. The two are custom
    operators with a plain CPU kernel, so that inductor calls them as opaque kernels on the tensors autograd hands it
    (no contiguous copies of the transposed operands) without ``torch.library.custom_op``'s per-call wrapper; they
    only ever run after autograd (in the compiled graph, and in the bench's probe), so they need no gradient
    formula. ``ONEDNN_DECOMPOSITIONS`` maps the graph's ``aten.mm`` and ``aten.addmm`` to them for CPU float32
    operands; any other call keeps its ATen kernel."""
    return torch.ops.mkldnn._linear_pointwise.default(a, b.t(), None, "none", [], "")


def onednn_addmm(bias: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``bias + a @ b`` with ``bias`` a vector over the columns (``nn.Linear``'s forward)."""
    return torch.ops.mkldnn._linear_pointwise.default(a, b.t(), bias, "none", [], "")


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
    """torch.compile's inductor backend with the CPU dropout lowering (``keep_mask_like``) and the float32 products
    through oneDNN (``onednn_mm``, ``onednn_addmm``).

    Replaces the default inductor backend on the CPU. ``bernoulli_(X, q)`` is decomposed into
    ``X.copy_(keep_mask_like(X, q))`` with ``fallback_random`` on, which leaves ``random_`` (or ``rand``) a call to the
    eager kernel on the default generator and fuses the compare and the scaling into inductor's kernels, instead of
    inductor's own random float per element (its default) or a call to eager ``bernoulli_``. Only HOW the bits are made
    changes: keep with probability q = 1 - p as before, drawn from the same swapped-in default generator (so seeded by
    the backend's noise seed, reproducible, isolated and fresh every step); the masks differ from eager nn.Dropout's, as
    on CUDA. Inductor's FX graph cache is bypassed for a custom backend (a cold compile per process)."""
    from torch._inductor.compile_fx import compile_fx
    from torch._inductor.decomposition import decompositions

    table = {**decompositions, torch.ops.aten.bernoulli_.float: _bernoulli_via_rand,
             torch.ops.aten.bernoulli.p: _bernoulli_p_via_rand, **ONEDNN_DECOMPOSITIONS}
    return compile_fx(gm, example_inputs, decompositions=table, config_patches={"fallback_random": True})


_STEP_CODES: dict[tuple, types.CodeType] = {}
# Consecutive full batches that compiled mode's train_epoch runs in one graph call (see ``_make_compiled_steps``);
# each one more lengthens the graph and its compile.
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


class Backend(stock.Backend):
    """The stock backend with the tuned training step (eager and compiled) and the compiled epoch's step pairs."""

    def _prepare_training(self) -> None:
        self.optimizer = None  # the update is ``sgd_update``
        self._compiled, self._compiled_steps = (self._make_compiled_steps() if self.train.mode == "compiled"
                                                else (None, None))

    def _eager_step(self, xb: torch.Tensor, yb: torch.Tensor, noise: tuple) -> tuple[torch.Tensor, torch.Tensor]:
        """One eager step: ``torch.autograd.grad`` and ``sgd_update`` under no_grad.

        Replaces the stock ``zero_grad(); backward(); optimizer.step()``: no ``.grad`` bookkeeping (zero_grad,
        AccumulateGrad) and no optimizer Python per step. allow_unused: at p = 1 dropout_layer returns zeros_like(X),
        cut off from the layers before it; their gradient is 0, and weight decay must still reach their kernels."""
        logits = self.net(xb, noise)
        loss = F.cross_entropy(logits, yb)
        grads = torch.autograd.grad(loss, self.params, allow_unused=True, materialize_grads=True)
        with torch.no_grad():
            sgd_update(self.params, list(grads), lr=self.train.lr, weight_decay=self.train.weight_decay)
        return loss.detach(), (logits.detach().argmax(dim=1) == yb).sum()

    def _make_compiled_steps(self):
        """(one training step, ``STEPS_PER_CALL`` consecutive steps) as ``torch.compile`` graphs, each run as
        ``f(xb, yb, noise)``; the second takes the steps' batches stacked (``STEPS_PER_CALL x B`` rows) and a noise
        tuple per step, and returns a (loss, correct) pair per step.

        Replaces the stock ``torch.compile(model)`` with an eager loss, backward and optimizer: here forward, backward
        (``torch.func.grad_and_value``) and the SGD update are one graph, compiled for one batch shape each
        (``dynamic=False``) with ``_cpu_inductor`` on the CPU. The steps inside one graph are the same SGD steps one
        after another (the second sees the weights the first updated): one call per pair halves what a step pays per
        call (Dynamo's guards, the graph's wrapper, one gather instead of two)."""
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

    def train_epoch(self, *, batches: EpochBatches) -> EpochMetrics:
        """The stock epoch, but in compiled mode the full batches go ``STEPS_PER_CALL`` to a graph call."""
        xt, yt = self._training_set(batches)
        order = torch.from_numpy(np.asarray(batches.order, dtype=np.int64)).to(self.device)
        n, size = len(order), batches.batch_size
        losses, hits = [], []  # stacked once at the end (``_epoch_metrics``)
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
        return self._epoch_metrics(losses, hits, batches)
