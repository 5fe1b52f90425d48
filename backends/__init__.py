"""The framework side: one package per framework, the contract they implement, the registry that finds them.

- ``backends.contract``: what a backend implements and is given (specs, the Backend class, noise, init, timing);
- ``backends.registry``: name -> package, interpreter, capabilities (re-exported here);
- ``backends.<framework>`` (numpy, torch, jax, tensorflow, mxnet): the implementations, each the only importer of its
  framework, with the same modules: ``model``, ``backend`` (stock tier), ``tuned`` (tuned tier), ``probes``;
- ``backends.remote``: calls to a backend that lives in another interpreter (the MXNet venv).

Nothing here imports ``experiments``.
"""
from backends.registry import (  # noqa: F401
    ALIASES, PROJECT_ROOT, REGISTRY, BackendError, BackendInfo, available_backends, capabilities, framework_version,
    is_available, load_class, load_probes, resolve, select, unavailable_reason,
)
