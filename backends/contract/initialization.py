"""The ``shared`` initialisation: one NumPy draw from the job's seed, handed to every backend."""
from __future__ import annotations

import numpy as np

from backends.contract.backend import Params
from backends.contract.spec import ModelSpec


def shared_init(model: ModelSpec, seed: int) -> Params:
    """The ``shared`` initialisation, drawn once in NumPy and handed to every backend.

    It is PyTorch's ``nn.Linear`` default (the D2L PyTorch tab): kernel and bias ~ U(+-1/sqrt(fan_in)).
    """
    rng = np.random.default_rng([seed, 0x1D17])
    params: Params = {}
    for name, shape in model.param_shapes().items():
        fan_in = shape[0] if name.endswith("kernel") else model.param_shapes()[name[:-4] + "kernel"][0]
        bound = 1.0 / np.sqrt(fan_in)
        params[name] = rng.uniform(-bound, bound, size=shape).astype(np.float32)
    return params
