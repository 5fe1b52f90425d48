"""What the parity ladder cannot see in the PyTorch backend: where the scratch mask lives, RNG isolation, the GPU error,
the framework init, the cached training set, eager vs compiled (both tiers); that the stock tier is stock
(``nn.Sequential``, ``torch.optim.SGD``, a default ``torch.compile``); the tuned paths; what the probes report."""
from __future__ import annotations

import math
import re

import numpy as np
import pytest

from tests.conftest import require_backend  # noqa: E402

require_backend("torch", module_level=True)
import torch  # noqa: E402
from torch._inductor.utils import run_and_get_code  # noqa: E402

from backends import contract  # noqa: E402
from backends.contract.spec import ModelSpec, TrainSpec  # noqa: E402
from backends.torch import backend as stock  # noqa: E402
from backends.torch import model as tm  # noqa: E402
from backends.torch import probes, tuned  # noqa: E402

SMALL = dict(num_inputs=20, hiddens=(32, 24), num_outputs=5)
TIERS = {"stock": stock.Backend, "tuned": tuned.Backend}
TIERS_AND_IMPLS = pytest.mark.parametrize("tier, impl", [(t, i) for t in TIERS for i in ("concise", "scratch")])


def make(model: ModelSpec, train: TrainSpec | None = None, seed: int = 0, shared: bool = True,
         tier: str = "stock") -> stock.Backend:
    backend = TIERS[tier](model=model, train=train or TrainSpec(tuning=tier), threads=2)
    backend.build(seed=seed, params=contract.shared_init(model, seed) if shared else None)
    return backend


def batch(n: int = 64, seed: int = 0, inputs: int = 20, classes: int = 5):
    rng = np.random.default_rng(seed)
    return rng.random((n, inputs), dtype=np.float32), rng.integers(0, classes, n).astype(np.int32)


def generated_code(call) -> list[str]:
    """The lines of the code inductor generates while ``call`` runs, comments and asserts left out."""
    torch.compiler.reset()  # a fresh cache: the graphs are compiled (and their code seen) here, whatever ran before
    _, codes = run_and_get_code(call)
    return [line for code in codes for line in code.splitlines() if not line.lstrip().startswith(("#", "assert"))]


def count(lines: list[str], pattern: str) -> int:
    return sum(len(re.findall(pattern, line)) for line in lines)


# --- B3: the scratch mask is drawn on the input's device ---------------------------------------------------------
def test_dropout_layer_draws_its_mask_on_the_input_device():
    # A meta tensor stands in for a GPU tensor: D2L's `torch.rand(X.shape)` makes a CPU mask, and `mask * X` then
    # fails with "Tensor on device meta is not on the expected device cpu".
    X = torch.ones(2, 8, device="meta")
    out = tm.dropout_layer(X, 0.5, generator=torch.Generator().manual_seed(0))
    assert out.device.type == "meta" and out.shape == X.shape
    assert tm.keep_mask((3, 4), 0.5, generator=None, device="meta").device.type == "meta"
    with pytest.raises(RuntimeError):  # the check above can fail: a CPU mask cannot meet a meta X
        (torch.rand(X.shape) > 0.5).float() * X


def test_scratch_model_native_dropout_stays_on_the_input_device():
    model = ModelSpec(impl="scratch", **SMALL)
    net = tm.DropoutMLPScratch(model, device="meta")
    net.generator = torch.Generator().manual_seed(0)
    tape: dict = {}
    logits = net(torch.ones(4, 20, device="meta"), (tm.NATIVE, tm.NATIVE), tape)
    assert logits.device.type == "meta" and logits.shape == (4, 5)
    assert all(v.device.type == "meta" for v in tape.values())
    assert net(torch.ones(4, 20, device="meta"), (tm.NATIVE, tm.NATIVE)).device.type == "meta"  # the section's path


@pytest.mark.parametrize("tier", TIERS)
def test_backend_generator_lives_on_the_model_device(tier):
    backend = make(ModelSpec(impl="scratch", **SMALL), tier=tier)
    assert backend.generator.device == backend.kernels[0].device and backend.net.generator is backend.generator


# --- RNG isolation and reproducibility -----------------------------------------------------------------------------
@TIERS_AND_IMPLS
def test_native_training_leaves_the_global_rng_alone(impl, tier):
    backend = make(ModelSpec(impl=impl, **SMALL), tier=tier)
    x, y = batch()
    torch.manual_seed(123)
    before = torch.get_rng_state()
    backend.train_step(x=x, y=y)
    backend.activations(x=x, train=True)
    backend.train_epoch(batches=contract.EpochBatches(x=x, y=y, order=np.arange(64), batch_size=16))
    assert torch.equal(torch.get_rng_state(), before), "a native step drew from torch's global RNG"


@TIERS_AND_IMPLS
def test_global_seed_does_not_reach_the_backend_masks(impl, tier):
    x, y = batch()

    def run(global_seed):
        torch.manual_seed(global_seed)
        backend = make(ModelSpec(impl=impl, **SMALL), seed=5, tier=tier)
        torch.manual_seed(global_seed + 1)
        losses = [backend.train_step(x=x, y=y) for _ in range(3)]
        dropped = backend.activations(x=x, train=True)["hidden_0/post_noise"] == 0
        return losses, dropped

    losses, dropped = run(1)
    losses_other, dropped_other = run(999)
    assert losses == losses_other
    np.testing.assert_array_equal(dropped, dropped_other)
    assert len(set(losses)) == 3, "consecutive steps must draw new masks"


# --- device --------------------------------------------------------------------------------------------------------
@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is visible here")
@pytest.mark.parametrize("tier", TIERS)
def test_gpu_without_cuda_is_a_one_line_error(tier):
    message = f"device gpu needs CUDA, which torch {torch.__version__} cannot see here; use --device cpu"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        TIERS[tier](model=ModelSpec(), train=TrainSpec(device="gpu", tuning=tier))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@TIERS_AND_IMPLS
def test_gpu_matches_cpu_and_leaves_the_cuda_rng_alone(impl, tier):
    model = ModelSpec(impl=impl, **SMALL)
    gpu, cpu = make(model, TrainSpec(device="gpu", tuning=tier), tier=tier), make(model, tier=tier)
    x, y = batch()
    masks = contract.draw_masks(model, len(x), np.random.default_rng(0))
    for backend in (gpu, cpu):
        backend.train_step(x=x, y=y, masks=masks)
    for key, value in cpu.get_params().items():
        np.testing.assert_allclose(gpu.get_params()[key], value, rtol=1e-4, atol=1e-6, err_msg=key)
    before = torch.cuda.get_rng_state()
    gpu.train_epoch(batches=contract.EpochBatches(x=x, y=y, order=np.arange(64), batch_size=16))
    assert torch.equal(torch.cuda.get_rng_state(), before)
    assert gpu.generator.device.type == "cuda"


# --- init and data path --------------------------------------------------------------------------------------------
def test_framework_init_is_nn_linear_default_under_that_seed():
    model = ModelSpec(init="framework")
    params = make(model, seed=7, shared=False).get_params()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(7)  # what D2L's torch tab gets: nn.Linear's reset_parameters, layer after layer
        layers = [torch.nn.Linear(a, b) for a, b in zip(model.layer_sizes[:-1], model.layer_sizes[1:])]
    for i, layer in enumerate(layers):
        np.testing.assert_array_equal(params[f"dense_{i}/kernel"], layer.weight.detach().numpy().T)
        np.testing.assert_array_equal(params[f"dense_{i}/bias"], layer.bias.detach().numpy())
    assert np.abs(params["dense_0/kernel"]).max() <= 1 / math.sqrt(784)


@pytest.mark.parametrize("tier", TIERS)
def test_training_set_is_shared_with_numpy_and_cached(tier):
    backend = make(ModelSpec(**SMALL), tier=tier)
    x, y = batch(n=100)
    order = np.random.default_rng(0).permutation(100)
    backend.train_epoch(batches=contract.EpochBatches(x=x, y=y, order=order, batch_size=32))
    xt = backend._train_cache[2]
    assert xt.data_ptr() == x.ctypes.data, "the training set was copied"
    backend.train_epoch(batches=contract.EpochBatches(x=x, y=y, order=order[::-1].copy(), batch_size=32))
    assert backend._train_cache[2] is xt, "the training set was converted again"


@pytest.mark.parametrize("tier", TIERS)
def test_epoch_metrics_weight_the_partial_batch(tier):
    model = ModelSpec(dropouts=(0.0, 0.0), **SMALL)
    x, y = batch(n=50)
    batches = contract.EpochBatches(x=x, y=y, order=np.arange(50), batch_size=32)
    epoch = make(model, tier=tier).train_epoch(batches=batches)
    stepper = make(model, tier=tier)
    losses = [stepper.train_step(x=x[:32], y=y[:32]), stepper.train_step(x=x[32:], y=y[32:])]
    assert epoch.loss == pytest.approx((losses[0] * 32 + losses[1] * 18) / 50, rel=1e-6)


@pytest.mark.parametrize("tier", TIERS)
def test_p1_still_decays_the_kernels_it_cuts_off(tier):
    """At p = 1 dropout_layer returns zeros_like(X): no gradient reaches layer 0, but weight decay still must (the
    oracle adds wd * W to a zero gradient; torch's SGD skips a parameter whose grad is None)."""
    from experiments.parity.factory import oracle_for

    model = ModelSpec(impl="scratch", dropouts=(1.0, 1.0), **SMALL)
    train = TrainSpec(weight_decay=0.1, tuning=tier)
    x, y = batch()
    backend, oracle = make(model, train, tier=tier), oracle_for(model, train)
    for _ in range(2):
        backend.train_step(x=x, y=y)
        oracle.train_step(x=x, y=y)
    for key, value in oracle.get_params().items():
        np.testing.assert_allclose(backend.get_params()[key], value, rtol=1e-5, atol=1e-7, err_msg=key)
    assert not np.array_equal(backend.get_params()["dense_0/kernel"], contract.shared_init(model, 0)["dense_0/kernel"])


# --- eager vs compiled -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("tier", TIERS)
def test_eager_and_compiled_agree(tier):
    """Same params after the same steps: concise with injected masks; scratch with its own draws (compiled mode
    draws them before the graph with the same calls, so both modes see the same masks). Also: a compiled native
    step leaves the global RNG alone."""
    x, y = batch(n=48)
    for impl, inject in (("concise", True), ("scratch", False)):
        model = ModelSpec(impl=impl, **SMALL)
        train = dict(weight_decay=1e-2, tuning=tier)
        eager = make(model, TrainSpec(mode="eager", **train), seed=3, tier=tier)
        compiled = make(model, TrainSpec(mode="compiled", **train), seed=3, tier=tier)
        rng = np.random.default_rng(0)
        for step in range(3):
            masks = contract.draw_masks(model, len(x), rng) if inject else None
            torch.manual_seed(step)
            before = torch.get_rng_state()
            loss_e = eager.train_step(x=x, y=y, masks=masks)
            loss_c = compiled.train_step(x=x, y=y, masks=masks)
            assert torch.equal(torch.get_rng_state(), before)
            assert loss_c == pytest.approx(loss_e, rel=1e-5), f"{impl} step {step}"
        params_e, params_c = eager.get_params(), compiled.get_params()
        for key, value in params_e.items():
            assert np.abs(params_c[key] - value).max() <= 1e-5 * np.abs(value).max(), f"{impl} {key}"
        assert not np.array_equal(params_e["dense_0/kernel"], contract.shared_init(model, 3)["dense_0/kernel"])
    # concise compiled draws nn.Dropout's masks inside the graph, from the swapped-in default generator
    model = ModelSpec(impl="concise", **SMALL)

    def compiled_native_losses(global_seed):
        backend = make(model, TrainSpec(mode="compiled", tuning=tier), seed=4, tier=tier)
        torch.manual_seed(global_seed)
        before = torch.get_rng_state()
        losses = [backend.train_step(x=x, y=y) for _ in range(3)]
        assert torch.equal(torch.get_rng_state(), before), "a compiled native step drew from the global RNG"
        return losses

    losses = compiled_native_losses(1)
    assert losses == compiled_native_losses(2) and len(set(losses)) == 3


# --- the stock tier is stock ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ("eager", "compiled"))
def test_stock_steps_a_torch_optim_sgd_with_d2l_parameter_groups(mode):
    """The stock step is ``zero_grad(); backward(); optimizer.step()`` on a ``torch.optim.SGD`` whose kernels decay and
    whose biases do not, once per batch; its update is SGD's: W - lr * (grad + wd * W), b - lr * grad."""
    model = ModelSpec(**SMALL)
    lr, wd = 0.1, 0.05
    backend = make(model, TrainSpec(mode=mode, lr=lr, weight_decay=wd))
    assert type(optimizer := backend.optimizer) is torch.optim.SGD
    kernels, biases = optimizer.param_groups
    assert [p is k for p, k in zip(kernels["params"], backend.kernels)] == [True] * 3 and kernels["weight_decay"] == wd
    assert [p is lin.bias for p, lin in zip(biases["params"], backend.linears)] == [True] * 3
    assert biases["weight_decay"] == 0.0 and kernels["lr"] == biases["lr"] == lr
    steps = []
    optimizer.register_step_post_hook(lambda *_: steps.append(1))
    x, y = batch(n=48)
    masks = contract.draw_masks(model, len(x), np.random.default_rng(0))
    before = backend.get_params()
    _, grads = backend.loss_and_grads(x=x, y=y, masks=masks)
    backend.train_step(x=x, y=y, masks=masks)
    assert len(steps) == 1 and all(p.grad is not None for p in backend.params)
    for key, value in before.items():
        decay = wd * value if key.endswith("kernel") else 0.0
        np.testing.assert_allclose(backend.get_params()[key], value - lr * (grads[key] + decay), rtol=1e-5, atol=1e-6,
                                   err_msg=key)
    backend.train_epoch(batches=contract.EpochBatches(x=x, y=y, order=np.arange(48), batch_size=16))
    assert len(steps) == 4, "one optimizer step per batch"


def test_stock_concise_trains_through_its_sequential_and_nn_dropout():
    """The concise stock model is called as the section calls it: its ``nn.Sequential`` runs, and its
    ``nn.Dropout`` layers change their input in training and pass it through in evaluation."""
    backend = make(ModelSpec(**SMALL))
    calls = []
    backend.net.net.register_forward_hook(lambda *_: calls.append("sequential"))
    for layer in backend.net._dropout_layers:
        layer.register_forward_hook(lambda module, inputs, output: calls.append(not torch.equal(output, inputs[0])))
    x, y = batch()
    backend.train_step(x=x, y=y)
    assert calls == [True, True, "sequential"]  # a forward hook runs when its module returns
    calls.clear()
    backend.evaluate(x=x, y=y)
    assert calls == [False, False, "sequential"]


@pytest.mark.parametrize("impl", ("concise", "scratch"))
def test_stock_compiled_is_torch_compile_of_the_model_with_its_defaults(impl):
    """Stock compiled mode compiles the model (``torch.compile(net)``, inductor's defaults): the generated code has
    the forward's three ``addmm`` and the backward's products as ATen's ``mm`` (extern kernels), and no operator of
    this project; concise dropout is drawn inside the graph."""
    model = ModelSpec(impl=impl, **SMALL)
    backend = make(model, TrainSpec(mode="compiled"), seed=1)
    assert isinstance(backend._compiled, torch._dynamo.eval_frame.OptimizedModule)
    assert backend._compiled._orig_mod is backend.net
    x, y = batch(n=16)
    lines = generated_code(lambda: backend.train_step(x=x, y=y))
    assert count(lines, r"extern_kernels\.addmm\(") == 3
    assert count(lines, r"extern_kernels\.mm\(") >= 4  # input gradients of layers 1, 2; the three kernel gradients
    assert count(lines, r"dropbench|onednn|_linear_pointwise") == 0
    draws = count(lines, r"aten\.randint|normalized_rand|bernoulli|torch\.rand\(")  # the graph's seed, its numbers
    assert (draws > 0) == (impl == "concise"), "concise masks are drawn in the graph, scratch ones before it"


# --- the tuned tier's compiled CPU dropout ---------------------------------------------------------------------------
@pytest.mark.parametrize("p", [0.3, 0.5, 0.75])
def test_compiled_cpu_dropout_keeps_the_law_and_the_seed(p):
    """The tuned compiled step on the CPU lowers nn.Dropout's bernoulli_ to ``rand < 1 - p`` (eager torch.rand inside
    the graph), or at a dyadic keep probability (0.5, 0.25 here) to random bits: the masks differ from eager
    nn.Dropout's, but keep with probability 1 - p, scale by 1 / (1 - p), and come from the default generator
    (seeded, fresh per call)."""
    layer = torch.nn.Dropout(p)
    step = torch.compile(lambda X: layer(X), backend=tuned._cpu_inductor, dynamic=False)
    X = torch.ones(512, 256)
    torch.manual_seed(0)
    first, second = step(X), step(X)
    torch.manual_seed(0)
    again = step(X)
    assert torch.equal(first, again) and not torch.equal(first, second)
    np.testing.assert_allclose(first[first != 0].numpy(), 1 / (1 - p), rtol=1e-6)
    kept = (first != 0).float().mean().item()
    assert abs(kept - (1 - p)) < 4 * math.sqrt(p * (1 - p) / X.numel())


def test_dyadic_keep_probabilities_take_that_many_bits():
    assert [contract.dyadic_keep(q) for q in (0.5, 0.25, 0.75, 3 / 16, 255 / 256)] == [
        (1, 1), (2, 1), (2, 3), (4, 3), (8, 255)]
    for q in (0.7, 0.8, 0.125, 1 / 3, 0.0, 1.0, 2 ** -30):  # not j / 2**b with b in 1, 2, 4, 8: rand < q
        assert contract.dyadic_keep(q) is None, q


@pytest.mark.parametrize("q", [0.5, 0.25, 0.75, 3 / 16, 0.7])
def test_keep_masks_from_bits_have_the_law_of_rand_below_q(q):
    """Bits or ``rand < q``: each element kept with probability q, neighbours independent (elements in one word
    and across words: the pair (i, i + 1) kept with probability q**2), seeded by the generator."""
    like = torch.empty(1000, 301)  # 301 001 elements: not a whole number of words at any b
    generator = torch.Generator().manual_seed(7)
    keep = tuned.keep_mask_like(like, q, generator)
    assert keep.shape == like.shape and keep.dtype == torch.bool
    flat, n = keep.flatten().double(), like.numel()
    assert abs(flat.mean().item() - q) < 4 * math.sqrt(q * (1 - q) / n)
    pairs = (flat[:-1] * flat[1:]).mean().item()
    assert abs(pairs - q * q) < 4 * math.sqrt(q * q * (1 - q * q) / (n - 1))
    assert torch.equal(keep, tuned.keep_mask_like(like, q, torch.Generator().manual_seed(7)))
    assert not torch.equal(keep, tuned.keep_mask_like(like, q, generator))


# --- the tuned compiled CPU step's products through oneDNN ---------------------------------------------------------
@pytest.mark.skipif(not tuned.ONEDNN_AVAILABLE, reason="this torch build has no oneDNN inner product")
def test_onednn_products_are_the_float32_products_on_transposed_views():
    """``onednn_mm`` and ``onednn_addmm`` on the layouts autograd hands them (a transposed view on either side),
    against the float64 product: within float32 rounding of the sum's scale."""
    generator = torch.Generator().manual_seed(0)
    a, b = torch.randn(37, 53, generator=generator), torch.randn(53, 29, generator=generator)
    bias = torch.randn(29, generator=generator)
    exact = a.double() @ b.double()
    scale = (a.double().abs() @ b.double().abs()).max().item()
    for left, right in ((a, b), (a.t().contiguous().t(), b), (a, b.t().contiguous().t()),
                        (a.t().contiguous().t(), b.t().contiguous().t())):
        product = torch.ops.dropbench.onednn_mm(left, right)
        assert product.shape == (37, 29) and product.dtype == torch.float32
        assert (product.double() - exact).abs().max().item() <= 1e-6 * scale
        with_bias = torch.ops.dropbench.onednn_addmm(bias, left, right)
        assert (with_bias.double() - exact - bias.double()).abs().max().item() <= 1e-6 * (scale + 3)


@pytest.mark.skipif(not tuned.ONEDNN_AVAILABLE, reason="this torch build has no oneDNN inner product")
def test_tuned_compiled_cpu_step_runs_every_product_through_onednn():
    """The tuned compiled graph's generated code calls the oneDNN operators for the step's eight products (three
    forward ``addmm``, three kernel gradients and two input gradients as ``mm``) and no ATen ``mm``/``addmm``."""
    compiled = make(ModelSpec(**SMALL), TrainSpec(mode="compiled", tuning="tuned"), seed=1, tier="tuned")
    x, y = batch(n=16)
    lines = generated_code(lambda: compiled.train_step(x=x, y=y))
    assert count(lines, r"torch\.ops\.dropbench\.onednn_addmm\.default\(") == 3
    assert count(lines, r"torch\.ops\.dropbench\.onednn_mm\.default\(") == 5
    assert count(lines, r"extern_kernels\.(?:mm|addmm|bmm)\(|aten\.(?:mm|addmm)\.default\(") == 0


# --- probes --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("tier", TIERS)
@pytest.mark.parametrize("mode", ("eager", "compiled"))
def test_probes_report_what_each_tier_and_mode_runs(tier, mode):
    """The GEMM library and the noise draw each tier and mode runs (stock: aten::mm and nn.Dropout's own draw; tuned
    compiled: oneDNN and bit masks); the step probe's products are the float32 products; the noise probe leaves the
    backend's stream and the global RNG alone."""
    backend = make(ModelSpec(**SMALL), TrainSpec(mode=mode, tuning=tier), tier=tier)
    onednn = tier == "tuned" and mode == "compiled" and tuned.ONEDNN_AVAILABLE
    library = probes.gemm_library(backend, m=16, k=20, n=32)
    assert (library == tuned.ONEDNN_LIBRARY) == onednn and ("aten::mm" in library) == (not onednn)
    products = [dict(m=16, k=20, n=32, ta=False, tb=True), dict(m=32, k=16, n=24, ta=True, tb=False)]
    results = probes.gemm_step_probe(backend, products=products, rounds=2)()
    assert [tuple(r.shape) for r in results] == [(16, 32), (32, 24)]
    generator = torch.Generator().manual_seed(0)  # the probe's operands: the same draws, in the same order
    for product, result in zip(products, results):
        a, b = (torch.randn(shape, generator=generator) for shape in contract.held_operand_shapes(product))
        a, b = (a.t() if product["ta"] else a), (b.t() if product["tb"] else b)
        exact = a.double() @ b.double()
        assert (result.double() - exact).abs().max() <= 1e-6 * (a.double().abs() @ b.double().abs()).max()
    how, draw = probes.noise_probe(backend, batch_size=64)
    state, before = backend.generator.get_state(), torch.get_rng_state()
    draw()
    assert torch.equal(backend.generator.get_state(), state) and torch.equal(torch.get_rng_state(), before)
    if tier == "tuned" and mode == "compiled":
        assert "bit" in how or "rand" in how
    elif mode == "compiled":
        assert "inductor" in how
    else:
        assert how.startswith("bernoulli_")
