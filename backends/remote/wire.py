"""Messages between processes that may run different NumPy versions (the MXNet venv pins numpy 1.23).

A message is a length-prefixed ``.npz`` blob: its JSON skeleton plus every array by name. No pickle: a pickled
NumPy 2 array names ``numpy._core``, which NumPy 1.23 cannot load.
"""
from __future__ import annotations

import dataclasses
import io
import json
import os
import struct
import sys
from typing import Any, BinaryIO

import numpy as np

from backends.contract import EpochBatches, EpochMetrics, EvalMetrics

_DATACLASSES = {cls.__name__: cls for cls in (EpochMetrics, EvalMetrics, EpochBatches)}
_HEADER = struct.Struct(">Q")


def _flatten(value: Any, arrays: dict[str, np.ndarray]) -> Any:
    if isinstance(value, np.ndarray):
        key = f"a{len(arrays)}"
        arrays[key] = value
        return {"__array__": key}
    if isinstance(value, np.generic):
        return value.item()
    if dataclasses.is_dataclass(value) and type(value).__name__ in _DATACLASSES:
        fields = {f.name: _flatten(getattr(value, f.name), arrays) for f in dataclasses.fields(value)}
        return {"__dataclass__": type(value).__name__, "fields": fields}
    if isinstance(value, dict):
        return {"__dict__": [[_flatten(k, arrays), _flatten(v, arrays)] for k, v in value.items()]}
    if isinstance(value, (list, tuple)):
        return [_flatten(v, arrays) for v in value]
    return value


def _hashable(key: Any) -> Any:
    """Tuples travel as JSON lists; as dictionary keys they must come back as tuples."""
    return tuple(_hashable(k) for k in key) if isinstance(key, list) else key


def _restore(value: Any, arrays: Any) -> Any:
    if isinstance(value, dict):
        if "__array__" in value:
            return arrays[value["__array__"]]
        if "__dataclass__" in value:
            return _DATACLASSES[value["__dataclass__"]](**{k: _restore(v, arrays) for k, v in value["fields"].items()})
        if "__dict__" in value:
            return {_hashable(_restore(k, arrays)): _restore(v, arrays) for k, v in value["__dict__"]}
        return {k: _restore(v, arrays) for k, v in value.items()}
    if isinstance(value, list):
        return [_restore(v, arrays) for v in value]
    return value


def encode(message: Any) -> bytes:
    arrays: dict[str, np.ndarray] = {}
    skeleton = _flatten(message, arrays)
    buffer = io.BytesIO()
    np.savez(buffer, __json__=np.frombuffer(json.dumps(skeleton).encode(), dtype=np.uint8), **arrays)
    return buffer.getvalue()


def decode(blob: bytes) -> Any:
    with np.load(io.BytesIO(blob), allow_pickle=False) as npz:
        arrays = {name: npz[name] for name in npz.files}
    skeleton = json.loads(arrays.pop("__json__").tobytes().decode())
    return _restore(skeleton, arrays)


def send(stream: BinaryIO, message: Any) -> None:
    blob = encode(message)
    stream.write(_HEADER.pack(len(blob)))
    stream.write(blob)
    stream.flush()


def receive(stream: BinaryIO) -> Any:
    """The next message, or raises EOFError when the other side has closed the stream."""
    header = stream.read(_HEADER.size)
    if len(header) < _HEADER.size:
        raise EOFError("peer closed the stream")
    (length,) = _HEADER.unpack(header)
    blob = stream.read(length)
    if len(blob) < length:
        raise EOFError("peer closed the stream mid-message")
    return decode(blob)


def claim_stdout(*, binary: bool):
    """The process's original stdout as a private channel, with fd 1 pointed at stderr from now on.

    Frameworks print to stdout at will; a worker's messages must not mix with that, so they leave on a duplicate of
    the original stdout. Call this before any framework is imported."""
    channel = os.fdopen(os.dup(1), "wb" if binary else "w", **({} if binary else {"buffering": 1}))
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return channel


def one_line(exc: BaseException) -> str:
    """An exception as one line for the other side: its type and its message, whitespace folded."""
    return f"{type(exc).__name__}: {' '.join(str(exc).split()) or type(exc).__name__}"
