"""``C <- alpha * A @ B + beta * C`` in place, through the BLAS that NumPy itself calls.

NumPy's ``matmul`` always overwrites its output, so an SGD update written with it is a product into a scratch array
and then a pass of the main thread over the kernel (``W -= lr * XtG``), which reads back what the BLAS threads just
wrote in the other cores' caches. Handing ``beta`` to the BLAS lets its own threads apply the update where they
compute it. The library is the one in NumPy's wheel (``numpy.libs``), so that there is one BLAS thread pool in the
process: a second OpenBLAS (SciPy's) spinning against NumPy's made an epoch eight times slower on two cores.

Operands are NumPy arrays that are C-contiguous or transposed views of C-contiguous arrays (the layout NumPy's
``matmul`` hands BLAS with a transpose flag); ``c`` is C-contiguous. Without such a library ``gemm`` falls back to
``matmul`` and NumPy passes: the same products, in more memory traffic.
"""
from __future__ import annotations

import ctypes
import functools
import glob
import os
from typing import Callable

import numpy as np

_ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112
# (symbol, integer type): NumPy >= 2 wheels ship scipy-openblas64 (64-bit integers, prefixed and suffixed names).
_SYMBOLS = {np.float32: (("scipy_cblas_sgemm64_", ctypes.c_int64), ("cblas_sgemm64_", ctypes.c_int64),
                         ("scipy_cblas_sgemm", ctypes.c_int32), ("cblas_sgemm", ctypes.c_int32)),
            np.float64: (("scipy_cblas_dgemm64_", ctypes.c_int64), ("cblas_dgemm64_", ctypes.c_int64),
                         ("scipy_cblas_dgemm", ctypes.c_int32), ("cblas_dgemm", ctypes.c_int32))}
_CACHE: dict = {}


def _numpy_blas_libraries() -> list[str]:
    package = os.path.dirname(np.__file__)
    return sorted(glob.glob(os.path.join(os.path.dirname(package), "numpy.libs", "*openblas*.so*")))


def _cblas_gemm(dtype):
    """The CBLAS gemm of NumPy's own BLAS for ``dtype`` as (function, its name), or None."""
    dtype = np.dtype(dtype).type
    if dtype not in _CACHE:
        _CACHE[dtype] = None
        scalar = ctypes.c_float if dtype is np.float32 else ctypes.c_double
        for path in _numpy_blas_libraries():
            library = ctypes.CDLL(path)
            for symbol, integer in _SYMBOLS[dtype]:
                function = getattr(library, symbol, None)
                if function is None:
                    continue
                function.restype = None
                function.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, integer, integer, integer, scalar,
                                     ctypes.c_void_p, integer, ctypes.c_void_p, integer, scalar, ctypes.c_void_p,
                                     integer]
                _CACHE[dtype] = (function, f"{os.path.basename(path)}:{symbol}")
                break
            if _CACHE[dtype]:
                break
    return _CACHE[dtype]


def library(dtype=np.float32) -> str | None:
    """Which library and symbol ``gemm`` calls for ``dtype``; None when it falls back to ``matmul``."""
    found = _cblas_gemm(dtype)
    return found[1] if found else None


def _operand(a: np.ndarray) -> tuple[int, int]:
    """(transpose flag, leading dimension) of a C-contiguous array or of a transposed view of one."""
    if a.flags.c_contiguous:
        return _NO_TRANS, a.shape[1]
    if a.T.flags.c_contiguous:
        return _TRANS, a.shape[0]
    raise ValueError("gemm takes C-contiguous operands or transposed views of them")


def _dimensions(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> tuple[int, int, int]:
    """(m, k, n) of ``c = a @ b``, or ValueError where the shapes or dtypes disagree."""
    m, k = a.shape
    n = b.shape[1]
    if b.shape[0] != k or c.shape != (m, n) or not a.dtype == b.dtype == c.dtype:
        raise ValueError(f"gemm shapes or dtypes disagree: {a.shape} {a.dtype} @ {b.shape} {b.dtype} -> "
                         f"{c.shape} {c.dtype}")
    return m, k, n


def gemm(alpha: float, a: np.ndarray, b: np.ndarray, beta: float, c: np.ndarray, *, use_blas: bool = True) -> None:
    """``c = alpha * a @ b + beta * c``, in place; ``beta = 0`` ignores what ``c`` held."""
    m, k, n = _dimensions(a, b, c)
    found = _cblas_gemm(c.dtype) if use_blas else None
    if found is None or not c.flags.c_contiguous:
        product = a @ b
        if alpha != 1:
            product *= c.dtype.type(alpha)
        if beta == 0:
            c[...] = product
            return
        if beta != 1:
            c *= c.dtype.type(beta)
        c += product
        return
    trans_a, lda = _operand(a)
    trans_b, ldb = _operand(b)
    found[0](_ROW_MAJOR, trans_a, trans_b, m, n, k, alpha, a.ctypes.data, lda, b.ctypes.data, ldb, beta,
             c.ctypes.data, n)


def bind(alpha: float, a: np.ndarray, b: np.ndarray, beta: float, c: np.ndarray) -> Callable[[], None]:
    """``gemm(alpha, a, b, beta, c)`` with its arguments bound now, to be called again and again: where the BLAS is
    found, the CBLAS call itself with the arrays' addresses taken once, so that a call skips ``gemm``'s checks and
    ``.ctypes`` lookups (which cost more than the call for the step's small products). The arrays must stay alive and
    in place for as long as the bound call is used."""
    m, k, n = _dimensions(a, b, c)
    found = _cblas_gemm(c.dtype)
    if found is None or not c.flags.c_contiguous:
        return functools.partial(gemm, alpha, a, b, beta, c)
    trans_a, lda = _operand(a)
    trans_b, ldb = _operand(b)
    return functools.partial(found[0], _ROW_MAJOR, trans_a, trans_b, m, n, k, alpha, a.ctypes.data, lda,
                             b.ctypes.data, ldb, beta, c.ctypes.data, n)
