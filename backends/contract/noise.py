"""The injected noise of the contract: its shapes, the NumPy draw the parity oracle uses, the noise RNG's seed; and
which keep probabilities a mask can draw from a few random bits an element (``dyadic_keep``, ``keep_fields``)."""
from __future__ import annotations

import math

import numpy as np

from backends.contract.spec import ModelSpec


def noise_shapes(model: ModelSpec, batch_size: int) -> list[tuple[int, ...]]:
    """Shape of the injected draw for each hidden layer: activations (B, h_i), or for dropconnect the kernel that
    reads hidden layer i, (h_i, fan_out)."""
    sizes = model.layer_sizes
    if model.noise == "dropconnect":
        return [(sizes[i + 1], sizes[i + 2]) for i in range(len(model.hiddens))]
    return [(batch_size, width) for width in model.hiddens]


def draw_masks(model: ModelSpec, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """NumPy draws in the form ``masks`` takes: keep masks (0/1) for dropout kinds, N(0, 1) for Gaussian kinds."""
    masks = []
    for shape, p in zip(noise_shapes(model, batch_size), model.dropouts):
        if model.noise in ("dropout", "dropconnect"):
            keep = rng.random(shape, dtype=np.float32) > p if p > 0 else np.ones(shape, dtype=bool)
            masks.append(keep.astype(np.float32))
        else:
            masks.append(rng.standard_normal(shape, dtype=np.float32))
    return masks


def draw_keep(rng: np.random.Generator, shape: tuple[int, ...], p: float) -> np.ndarray:
    """The NumPy backend's native keep mask of ``shape`` at dropout p, from ``rng`` (injected masks stay
    ``draw_masks``'): the section's ``uniform > p``, where
    ``dyadic_keep(1 - p)`` gives (b, j) from b random bits an element (``keep_fields``, kept when at least
    2**b - j: exactly probability 1 - p, which D2L's float32 ``u > p`` misses by 2**-24); p = 0 keeps all and draws
    nothing."""
    if p == 0:
        return np.ones(shape, dtype=bool)
    dyadic = dyadic_keep(1.0 - p)
    if dyadic is None:
        return rng.random(shape, dtype=np.float32) > p
    bits, kept = dyadic
    count = int(np.prod(shape))
    return (keep_fields(rng, count, bits) >= (1 << bits) - kept).reshape(shape)


def keep_fields(rng: np.random.Generator, count: int, bits: int) -> np.ndarray:
    """``count`` fields of ``bits`` random bits each (``bits`` in ``KEEP_BITS``), as uint8, from
    ``ceil(count * bits / 64)`` raw 64-bit outputs of ``rng``'s bit generator: each output's bytes in little-endian
    order, each byte's fields from its lowest bits up. A 64-bit output serves 64 / bits elements where
    ``Generator.random(dtype=float32)`` gives one element a 32-bit half."""
    octets = rng.bit_generator.random_raw(-(-count * bits // 64)).astype("<u8", copy=False).view(np.uint8)
    if bits == 1:
        return np.unpackbits(octets, count=count, bitorder="little")
    if bits == 8:
        return octets[:count]
    shifts = np.arange(0, 8, bits, dtype=np.uint8)
    return ((octets[:, None] >> shifts) & np.uint8((1 << bits) - 1)).reshape(-1)[:count]


EVAL_CHUNK = 10_000  # examples per evaluation forward: the test split in one piece, the training split in six


def keep_scale(p: float) -> float:
    """Inverted dropout's scale of a kept element at rate p: 1 / (1 - p), and 0 at p = 1 (everything dropped, and no
    division by zero)."""
    return 0.0 if p >= 1.0 else 1.0 / (1.0 - p)


def gaussian_noise_scale(p: float) -> float:
    """Multiplicative Gaussian noise ``h * (1 + s * z)`` at rate p: s = sqrt(p / (1 - p)), dropout's variance."""
    return math.sqrt(p / (1.0 - p))


def additive_noise_scale(p: float) -> float:
    """Additive Gaussian noise ``h + s * z`` at rate p: s = p, the noise's standard deviation."""
    return float(p)


def noise_seed(seed: int) -> int:
    """The seed a backend gives its own noise RNG: derived from the job's seed, apart from the init stream."""
    return int(np.random.default_rng([seed, 0xD20]).integers(0, 2**31 - 1))


KEEP_BITS = (1, 2, 4, 8)  # bits an element that divide a 32-bit word evenly


def dyadic_keep(q: float) -> tuple[int, int] | None:
    """(b, j) with q = j / 2**b, j odd and b in ``KEEP_BITS``, for a q that float32 holds exactly; else None.

    A framework's float32 uniform u has at least 23 random bits (PyTorch's 24, JAX's 23), and u < q for such a q
    holds exactly when the top b of them, read as an integer, are below j: so b fresh random bits an element,
    compared with j, give a keep mask with exactly the law of ``uniform < q`` from 32 / b times fewer random words."""
    if not 0.0 < q < 1.0 or float(np.float32(q)) != q:
        return None
    scaled = q * 2 ** 24
    if scaled != int(scaled):
        return None
    j, b = int(scaled), 24
    while j % 2 == 0:
        j, b = j // 2, b - 1
    return (b, j) if b in KEEP_BITS else None


def mask_draw_kinds(rates, generator: str, otherwise: str) -> str:
    """How a backend that takes ``dyadic_keep`` masks draws them at these dropout rates, for the bench's noise
    label: "b <generator> bit(s) an element" for a rate whose keep probability is j / 2**b, else ``otherwise``; the
    distinct kinds, sorted, comma-separated."""
    return ", ".join(sorted({f"{dyadic[0]} {generator} bit(s) an element" if (dyadic := dyadic_keep(1.0 - p))
                             else otherwise for p in rates}))
