"""The contract every backend implements, in one place: framework-free, importable under NumPy 1.23.

- ``spec``: ``ModelSpec`` and ``TrainSpec`` (validated), the constants they allow (impls, inits, modes, devices,
  noise kinds);
- ``backend``: the ``Backend`` base class, ``Capabilities``, the metrics, ``EpochBatches``;
- ``noise``: the shapes and the NumPy draw of the injected noise, the noise RNG's seed, ``dyadic_keep``;
- ``xla``: what XLA's compiled HLO says of the GEMM library it runs;
- ``initialization``: the ``shared`` initialisation;
- ``timing``: the ``Stopwatch`` (synchronises the device at every reading);
- ``threads``: the environment that sizes every framework's thread pools.
"""
from backends.contract.backend import (  # noqa: F401
    Backend, Capabilities, EpochBatches, EpochMetrics, EvalMetrics, Params, check_params, held_operand_shapes,
)
from backends.contract.initialization import shared_init  # noqa: F401
from backends.contract.noise import (  # noqa: F401
    EVAL_CHUNK, additive_noise_scale, draw_keep, draw_masks, dyadic_keep, gaussian_noise_scale, keep_fields,
    keep_scale, mask_draw_kinds, noise_seed, noise_shapes)
from backends.contract.spec import (  # noqa: F401
    DEVICES, IMPLS, INITS, MODES, NOISE_KINDS, TUNINGS, ModelSpec, SpecError, TrainSpec,
)
from backends.contract.timing import Stopwatch  # noqa: F401
from backends.contract.xla import xla_gemm_library  # noqa: F401
