"""What XLA's compiled HLO says of the GEMM library it runs (for the JAX and TensorFlow backends' bench labels)."""
from __future__ import annotations

_MARKERS = (("__ynn", "YNNPACK"), ("__xnn", "XNNPACK"), ("onednn", "oneDNN"), ("cublas", "cuBLAS"))


def xla_gemm_library(hlo: str) -> str:
    """"XLA <library>" for the compiled HLO text of a dot: a ``__ynn_fusion``/``__xnn_fusion`` (YNNPACK/XNNPACK), a
    oneDNN or cuBLAS custom call, or none of them (XLA's own Eigen dot)."""
    return "XLA " + next((name for marker, name in _MARKERS if marker in hlo), "Eigen")
