"""Messages between processes that may run different NumPy versions (the MXNet venv pins numpy 1.23).

A message is a length-prefixed ``.npz`` blob: its JSON skeleton plus every array by name. No pickle: a pickled
NumPy 2 array names ``numpy._core``, which NumPy 1.23 cannot load.
"""
from __future__ import annotations

import dataclasses
import io
import json
import struct
from typing import Any, BinaryIO

import numpy as np

from backends.base import EpochBatches, EpochMetrics, EvalMetrics

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
