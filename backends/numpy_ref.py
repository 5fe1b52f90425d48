"""NumPy reference backend with hand-written backpropagation: the oracle every framework is checked against.

``Backend`` trains in float32 like the frameworks; ``Oracle`` is the same code in float64, used by the parity tests.
``concise`` and ``scratch`` are the same here: the section's ``dropout_layer`` is the only dropout NumPy has, its keep
mask ``contract.draw_keep``'s (``uniform > p``, from one random bit an element at D2L's p = 0.5).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from backends import contract, numpy_fused, registry
from backends.contract import EpochBatches, EpochMetrics, EvalMetrics, Params


def _noise_scale(p: float) -> float:
    """Inverted-dropout scale 1/(1-p); p = 1 keeps nothing, so the scale is 0 (D2L's zeros branch)."""
    return 0.0 if p >= 1.0 else 1.0 / (1.0 - p)


class Backend(contract.Backend):
    name = "numpy"
    framework = "numpy"
    capabilities = registry.capabilities("numpy")
    dtype = np.float32
    fused = True  # train with ``numpy_fused.step``; dropconnect (noise on the kernels) and the oracle do not

    def build(self, *, seed: int, params: Mapping[str, np.ndarray] | None = None) -> None:
        self.params = {k: v.astype(self.dtype) for k, v in (params or contract.shared_init(self.model, seed)).items()}
        contract.check_params(self.model, self.params)
        self.rng = np.random.default_rng(contract.noise_seed(seed))
        self.num_layers = len(self.model.layer_sizes) - 1
        self._workspaces: dict[int, numpy_fused.Workspace] = {}
        self._byte_split: tuple | None = None  # (training split, its bytes or None): see _byte_images

    def get_params(self) -> Params:
        return {k: v.astype(np.float32, copy=True) for k, v in self.params.items()}

    def set_params(self, *, params: Mapping[str, np.ndarray]) -> None:
        contract.check_params(self.model, params)
        self.params = {k: np.array(v, dtype=self.dtype) for k, v in params.items()}

    # --- noise -------------------------------------------------------------------------------------------------
    def _draw(self, batch_size: int) -> list[np.ndarray]:
        """The backend's own noise: keep masks from ``contract.draw_keep`` (bit fields at a dyadic keep
        probability), Gaussian draws as ``contract.draw_masks`` makes them."""
        if self.model.noise not in ("dropout", "dropconnect"):
            return contract.draw_masks(self.model, batch_size, self.rng)
        return [contract.draw_keep(self.rng, shape, p).astype(np.float32)
                for shape, p in zip(contract.noise_shapes(self.model, batch_size), self.model.dropouts)]

    def _noise_terms(self, masks: Sequence[np.ndarray]) -> list[tuple[np.ndarray | float, np.ndarray | float]]:
        """Per hidden layer, (multiplier, offset) so that noisy = h * multiplier + offset; for dropconnect the
        multiplier is the one applied to the kernel that reads the layer."""
        terms = []
        for mask, p in zip(masks, self.model.dropouts):
            mask = np.asarray(mask, dtype=self.dtype)
            if self.model.noise in ("dropout", "dropconnect"):
                terms.append((mask * self.dtype(_noise_scale(p)), 0.0))
            elif self.model.noise == "gaussian":
                terms.append((1.0 + self.dtype(np.sqrt(p / (1.0 - p))) * mask, 0.0))
            else:  # additive
                terms.append((1.0, self.dtype(p) * mask))
        return terms

    # --- forward / backward ------------------------------------------------------------------------------------
    def _forward(self, x: np.ndarray, terms, pre: list | None = None) -> tuple[np.ndarray, list]:
        """Logits and what backward needs. ``terms`` is None for noise off; ``pre``, when given, gets a copy of each
        hidden layer's pre-activation.

        Every array made here is fresh, so the elementwise steps run in place (``z += bias``, ReLU into ``z``): the
        same operations in the same order, without a new 256 KB array each (allocation and page faults cost more than
        the arithmetic at these sizes)."""
        dropconnect = self.model.noise == "dropconnect"
        h = np.asarray(x, dtype=self.dtype).reshape(len(x), -1)
        tape = []
        for i in range(self.num_layers):
            kernel = self.params[f"dense_{i}/kernel"]
            weight_mult = terms[i - 1][0] if (terms is not None and dropconnect and i > 0) else None
            effective = kernel * weight_mult if weight_mult is not None else kernel
            z = h @ effective
            z += self.params[f"dense_{i}/bias"]
            tape.append((h, effective, weight_mult))
            if i == self.num_layers - 1:
                return z, tape
            if pre is not None:
                pre.append(z.copy())
            relu = np.maximum(z, 0, out=z)
            h = relu
            if terms is not None and not dropconnect:
                mult, offset = terms[i]
                h = relu * mult
                if not (np.isscalar(offset) and offset == 0):
                    h += offset
            tape[-1] += (relu, terms[i][0] if (terms is not None and not dropconnect) else None)
        raise AssertionError("unreachable")

    def _loss_grads(self, x, y, terms) -> tuple[float, int, Params]:
        logits, tape = self._forward(x, terms)
        y = np.asarray(y)
        shifted = logits - logits.max(axis=1, keepdims=True)
        log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        rows = np.arange(len(y))
        loss = float(-log_probs[rows, y].mean())
        correct = int((logits.argmax(axis=1) == y).sum())
        grad = np.exp(log_probs)
        grad[rows, y] -= 1.0
        grad /= len(y)
        grads: Params = {}
        for i in reversed(range(self.num_layers)):
            h_in, effective, weight_mult = tape[i][:3]
            grad_kernel = h_in.T @ grad
            grads[f"dense_{i}/kernel"] = grad_kernel * weight_mult if weight_mult is not None else grad_kernel
            grads[f"dense_{i}/bias"] = grad.sum(axis=0)
            if i == 0:
                break
            grad = grad @ effective.T  # fresh: the products below run in place
            relu_prev, mult_prev = tape[i - 1][3], tape[i - 1][4]
            if mult_prev is not None and not np.isscalar(mult_prev):
                grad *= mult_prev
            grad *= relu_prev > 0
        return loss, correct, grads

    def _terms_for(self, batch_size: int, masks: Sequence[np.ndarray] | None):
        return self._noise_terms(masks if masks is not None else self._draw(batch_size))

    def forward(self, *, x, train, masks=None) -> np.ndarray:
        terms = self._terms_for(len(x), masks) if train else None
        return self._forward(x, terms)[0]

    def loss_and_grads(self, *, x, y, masks=None) -> tuple[float, Params]:
        loss, _, grads = self._loss_grads(x, y, self._terms_for(len(x), masks))
        return loss, grads

    def _step(self, x, y, masks) -> tuple[float, int]:
        if self.fused and self.model.noise != "dropconnect":
            x = np.ascontiguousarray(x, dtype=self.dtype).reshape(len(x), -1)
            workspace = self._workspaces.get(len(x))
            if workspace is None:
                workspace = self._workspaces[len(x)] = numpy_fused.Workspace(self.model.layer_sizes, len(x),
                                                                              self.dtype)
            native = (masks is None and self.model.noise == "dropout"
                      and type(self)._noise_terms is Backend._noise_terms)
            return numpy_fused.step(self, workspace, x, np.asarray(y), masks, native_dropout=native)
        return self._unfused_step(x, y, masks)

    def _unfused_step(self, x, y, masks) -> tuple[float, int]:
        loss, correct, grads = self._loss_grads(x, y, self._terms_for(len(x), masks))
        lr, decay = self.dtype(self.train.lr), self.dtype(self.train.weight_decay)
        for name, grad in grads.items():  # the gradients are this step's own arrays: scaled in place
            if decay and name.endswith("kernel"):
                grad += decay * self.params[name]
            grad *= lr
            self.params[name] -= grad
        return loss, correct

    def train_step(self, *, x, y, masks=None) -> float:
        return self._step(x, y, masks)[0]

    def train_epoch(self, *, batches: EpochBatches) -> EpochMetrics:
        total_loss, total_correct = 0.0, 0
        # Gather each batch into one reused buffer, as the framework backends gather on their side from ``order``:
        # a fresh 800 KB array per batch (fancy indexing) costs about 2.5x more, in page faults.
        buffer = np.empty((batches.batch_size, batches.x.shape[1]), dtype=batches.x.dtype)
        byte_buffer = np.empty(buffer.shape, np.uint8)
        images = self._byte_images(batches.x)
        for idx in batches.indices():
            xb = numpy_fused.gather_rows(batches.x, images, idx, buffer, byte_buffer)
            yb = batches.y[idx]
            loss, correct = self._step(xb, yb, None)
            total_loss += loss * len(yb)
            total_correct += correct
        n = len(batches.order)
        return EpochMetrics(loss=total_loss / n, acc=total_correct / n)

    def _byte_images(self, x: np.ndarray) -> np.ndarray | None:
        """``numpy_fused.byte_images`` of the training split, checked once per split (kept with the array it was
        made from, whose id would otherwise be reused); the plain code (the oracle) gathers floats."""
        if not self.fused:
            return None
        cached = self._byte_split
        if cached is None or cached[0] is not x:
            cached = self._byte_split = (x, numpy_fused.byte_images(x) if isinstance(x, np.ndarray) else None)
        return cached[1]

    def evaluate(self, *, x, y) -> EvalMetrics:
        loss_sum, correct = 0.0, 0
        for start in range(0, len(x), 10_000):
            loss, n_correct, _ = self._eval_chunk(x[start:start + 10_000], y[start:start + 10_000])
            loss_sum += loss
            correct += n_correct
        return EvalMetrics(loss=loss_sum / len(x), acc=correct / len(x))

    def _eval_chunk(self, x, y):
        logits = self._forward(x, None)[0]
        shifted = logits - logits.max(axis=1, keepdims=True)
        log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        return float(-log_probs[np.arange(len(y)), y].sum()), int((logits.argmax(axis=1) == y).sum()), None

    def gemm_library(self, *, m: int, k: int, n: int) -> str:
        """The BLAS NumPy calls (threadpoolctl names it), whatever the shape."""
        try:
            from threadpoolctl import threadpool_info

            pools = [p for p in threadpool_info() if p.get("user_api") == "blas"]
            library = ", ".join(f"{p['internal_api']} {p['version']} ({p.get('architecture')})" for p in pools)
        except ImportError:
            library = "NumPy's BLAS (threadpoolctl not installed to name it)"
        return library or "NumPy's BLAS"

    def gemm_step_probe(self, *, products, rounds: int = 1):
        """``products`` through NumPy's ``matmul`` (its BLAS), transposed operands as transposed views: the floor's
        own calls, one after another instead of each repeated."""
        rng = np.random.default_rng(0)
        operands = []
        for p in products:
            a, b = (rng.standard_normal(shape).astype(self.dtype) for shape in contract.held_operand_shapes(p))
            operands.append((a.T if p["ta"] else a, b.T if p["tb"] else b, np.empty((p["m"], p["n"]), self.dtype)))

        def run():
            for _ in range(rounds):
                for a, b, c in operands:
                    np.matmul(a, b, out=c)
            return [c for _, _, c in operands]
        return run

    def noise_probe(self, *, batch_size: int):
        """The fused step's native dropout: its keep masks (``numpy_fused.draw_keep``), the multiplier, the product."""
        rng = np.random.default_rng(0)
        arrays = [(np.ones((batch_size, w), self.dtype), np.empty((batch_size, w), bool),
                   np.empty((batch_size, w), self.dtype), p) for w, p in zip(self.model.hiddens, self.model.dropouts)]

        def draw():
            for x, keep, multiplier, p in arrays:
                numpy_fused.draw_keep(rng, keep, p)
                np.multiply(keep, self.dtype(_noise_scale(p)), out=multiplier)
                np.multiply(x, multiplier, out=multiplier)
        kinds = contract.mask_draw_kinds(self.model.dropouts, "PCG64", "PCG64 raw words vs an integer threshold")
        return f"{kinds} (NumPy)", draw

    def pre_activations(self, *, x, masks) -> list[np.ndarray]:
        """Each hidden layer's pre-activation (before its ReLU) for ``x`` under the injected ``masks``, in this
        backend's precision."""
        pre: list = []
        self._forward(x, self._terms_for(len(x), masks), pre)
        return pre

    def activations(self, *, x, train, masks=None) -> dict[str, np.ndarray]:
        terms = self._terms_for(len(x), masks) if train else None
        _, tape = self._forward(x, terms)
        out = {}
        for i in range(len(self.model.hiddens)):
            out[f"hidden_{i}/pre_noise"] = tape[i][3].astype(np.float32)
            out[f"hidden_{i}/post_noise"] = tape[i + 1][0].astype(np.float32)
        return out


class Oracle(Backend):
    """The same maths in float64: the reference the parity ladder compares float32 frameworks against."""

    name = "numpy-oracle"
    dtype = np.float64
    fused = False  # the reference keeps the plain code that the fused step is checked against

    def get_params(self) -> Params:
        return {k: v.copy() for k, v in self.params.items()}
