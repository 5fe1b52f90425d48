"""Fashion-MNIST read into arrays, and shuffled the same way in every backend.

Plain NumPy and the standard library only, so that every worker can import it, including the MXNet venv that pins
numpy 1.23. Finding and checking the files is ``experiments.data_files`` (its names are re-exported here: the data
module is what the rest of the project calls). Every failure raises ``DataError`` with a one-line message that names
the file, what is wrong with it, and what to do about it.
"""
from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from experiments.data_files import (  # noqa: F401  (re-exported)
    FILES, FIX_BAD_FILE, FIX_DATA_DIR, GZIP_ERRORS, IMAGE_SIDE, IMAGES_MAGIC, LABELS_MAGIC, NUM_CLASSES, SYSTEM_DIR,
    UPSTREAM_GZ_MD5, DataError, PathLike, cache_dir, describe_gzip_error, download, held_path, locate, verify,
)

_EPOCH_ORDER_SALT = 0xDA7A  # keeps the data stream independent of any other stream seeded with (seed, epoch)


def _read_bytes(path: Path) -> bytes:
    """The IDX bytes of ``path``, decompressed when it is gzip (sniffed by its magic, not by its name)."""
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise DataError(f"cannot read {path}: {err}; {FIX_DATA_DIR}") from None
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        return gzip.decompress(raw)  # one zlib call: much faster than streaming through GzipFile
    except GZIP_ERRORS as err:
        raise DataError(f"{path} {describe_gzip_error(err)}; {FIX_BAD_FILE}") from None


def _parse_header(data: bytes, path: Path) -> tuple[tuple[int, ...], int]:
    """Dims and header length of an IDX buffer of uint8 labels (1 dim) or 28x28 images (3 dims)."""
    if len(data) < 4:
        raise DataError(f"{path} is too short to be an IDX file ({len(data)} bytes); {FIX_BAD_FILE}")
    magic = int.from_bytes(data[:4], "big")
    if magic not in (LABELS_MAGIC, IMAGES_MAGIC):
        raise DataError(f"{path} has IDX magic 0x{magic:08x}, expected 0x{LABELS_MAGIC:08x} (uint8 labels) or "
                        f"0x{IMAGES_MAGIC:08x} (uint8 images); {FIX_BAD_FILE}")
    ndim = magic & 0xFF
    header_len = 4 + 4 * ndim
    if len(data) < header_len:
        raise DataError(f"{path} ends inside its IDX header ({len(data)} bytes, header needs {header_len}); "
                        f"{FIX_BAD_FILE}")
    dims = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    if ndim == 3 and dims[1:] != (IMAGE_SIDE, IMAGE_SIDE):
        raise DataError(f"{path} holds images of {dims[1]}x{dims[2]} pixels, expected "
                        f"{IMAGE_SIDE}x{IMAGE_SIDE}; {FIX_BAD_FILE}")
    return dims, header_len


def read_idx(path: PathLike) -> np.ndarray:
    """Parse an IDX file (gzip or raw) of uint8 labels (N,) or images (N, 28, 28); the header is checked."""
    path = Path(path)
    data = _read_bytes(path)
    dims, header_len = _parse_header(data, path)
    expected = int(np.prod(dims, dtype=np.int64))
    held = len(data) - header_len
    if held != expected:
        raise DataError(f"{path}: header says {dims[0]} items ({expected} bytes) but the file holds {held} bytes "
                        f"of data; {FIX_BAD_FILE}")
    return np.frombuffer(data, dtype=np.uint8, offset=header_len).reshape(dims)


@dataclass(frozen=True)
class FashionMNIST:
    """Images as float32 (N, 784) in [0, 1] (uint8 / 255); labels as int32 (N,) in 0..9."""

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray


def _read_split(folder: Path, images_key: str, labels_key: str) -> tuple[np.ndarray, np.ndarray]:
    paths = {}
    for key in (images_key, labels_key):
        path = held_path(folder, FILES[key])
        if path is None:
            raise DataError(f"{folder} lacks {FILES[key]}(.gz); {FIX_DATA_DIR}")
        paths[key] = path
    images, labels = read_idx(paths[images_key]), read_idx(paths[labels_key])
    if images.ndim != 3 or labels.ndim != 1:
        raise DataError(f"{paths[images_key].name} must hold images and {paths[labels_key].name} labels, got "
                        f"{images.ndim} and {labels.ndim} dimensions; {FIX_BAD_FILE}")
    if images.shape[0] != labels.shape[0]:
        raise DataError(f"{paths[images_key].name} holds {images.shape[0]} images but {paths[labels_key].name} "
                        f"holds {labels.shape[0]} labels in {folder}; {FIX_BAD_FILE}")
    if labels.size and int(labels.max()) >= NUM_CLASSES:
        raise DataError(f"{paths[labels_key].name} in {folder} holds label {int(labels.max())}, expected "
                        f"0..{NUM_CLASSES - 1}; {FIX_BAD_FILE}")
    return images, labels


def _to_features(images: np.ndarray) -> np.ndarray:
    features = images.reshape(images.shape[0], -1).astype(np.float32)
    features /= np.float32(255)  # in place: exactly uint8/255 rounded to float32, no float64 temporary
    return features


def load(folder: PathLike, *, train_limit: int | None = None) -> FashionMNIST:
    """Read the four files of ``folder`` (checksums are ``locate``'s job); keep the first ``train_limit`` examples."""
    folder = Path(folder)
    train_images, train_labels = _read_split(folder, "train_images", "train_labels")
    test_images, test_labels = _read_split(folder, "test_images", "test_labels")
    if train_limit is not None:
        if isinstance(train_limit, bool) or not isinstance(train_limit, (int, np.integer)) or train_limit <= 0:
            raise DataError(f"train_limit must be a positive integer, got {train_limit!r}; fix --train-limit")
        if train_limit > train_images.shape[0]:
            raise DataError(f"train_limit {train_limit} is larger than the training set "
                            f"({train_images.shape[0]} examples); lower --train-limit or leave it out")
        # Slice before converting, so that a small limit also means a small float array.
        train_images, train_labels = train_images[:train_limit], train_labels[:train_limit]
    return FashionMNIST(train_x=_to_features(train_images), train_y=train_labels.astype(np.int32),
                        test_x=_to_features(test_images), test_y=test_labels.astype(np.int32))


# -------------------------------------------------------------------------------------------------------- shuffling


def epoch_order(n: int, *, seed: int, epoch: int) -> np.ndarray:
    """The order in which epoch ``epoch`` visits the ``n`` training examples: an int64 permutation of range(n).

    Examples are reshuffled every epoch (so batches hold different examples each time, unlike a pipeline that shuffles
    once and only reorders batches), and every backend gets the same order for the same (seed, epoch). PCG64 and
    ``Generator.permutation`` are stream-stable across numpy 1.17+ and 2.x, which keeps the numpy-1.23 worker in step.
    """
    for name, value in (("n", n), ("seed", seed), ("epoch", epoch)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise ValueError(f"epoch_order: {name} must be an integer >= 0, got {value!r}")
    rng = np.random.default_rng([int(seed), int(epoch), _EPOCH_ORDER_SALT])
    return rng.permutation(int(n)).astype(np.int64, copy=False)


def training_examples(folder: PathLike) -> int:
    """The training set's size from its labels file (60 KB), without reading the images."""
    return int(read_idx(held_path(Path(folder), FILES["train_labels"])).shape[0])
