"""Fashion-MNIST's files: find them, check them against the published checksums, fetch them.

Plain NumPy and the standard library only, so that every worker can import it, including the MXNet venv that pins
numpy 1.23. Every failure raises ``DataError`` with a one-line message that names the file, what is wrong with it,
and what to do about it.

A file is accepted when it is byte-for-byte what upstream publishes (MD5 of the gzip bytes) or when its decompressed
contents are (sha256 of the IDX bytes): repackaged copies such as Debian's ``dataset-fashion-mnist`` recompress the
same data, so their gzip bytes differ but their contents do not.
"""
from __future__ import annotations

import gzip
import hashlib
import http.client
import os
import re
import sys
import tempfile
import urllib.error
import urllib.request
import zlib
from pathlib import Path
from typing import Any, BinaryIO, Callable, Union


PathLike = Union[str, "os.PathLike[str]"]

FILES: dict[str, str] = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

# Measured on the Debian copy (dataset-fashion-mnist); identical to upstream's decompressed files.
DECOMPRESSED_SHA256: dict[str, str] = {
    "train_images": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train_labels": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "test_images": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "test_labels": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}
DECOMPRESSED_SIZE: dict[str, int] = {
    "train_images": 47040016,
    "train_labels": 60008,
    "test_images": 7840016,
    "test_labels": 10008,
}
# Upstream's published MD5s of its .gz files (zalandoresearch/fashion-mnist README).
UPSTREAM_GZ_MD5: dict[str, str] = {
    "train_images": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train_labels": "25c81989df183df01b3e8a0aad5dffbe",
    "test_images": "bef4ecab320f06d8554ea6380940ec79",
    "test_labels": "bb300cfdad3c16e7a12a480ee83cd310",
}

SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
UPSTREAM_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"

IMAGE_SIDE = 28
NUM_CLASSES = 10
CHUNK = 1 << 20  # hash in 1 MiB pieces: the 47 MB image file is never held twice

LABELS_MAGIC = 0x00000801  # uint8, one dimension
IMAGES_MAGIC = 0x00000803  # uint8, three dimensions

FIX_BAD_FILE = "delete it to re-download, or point --data-dir at a good copy"
FIX_DATA_DIR = "point --data-dir at a folder with the four Fashion-MNIST files, or leave it out to download them"
_FIX_ENV_DIR = "point FASHION_MNIST_DIR at a folder with the four Fashion-MNIST files, or unset it to download them"
_FIX_DOWNLOAD = "check the network or set FASHION_MNIST_URL to a mirror, or pass --data-dir"


class DataError(Exception):
    """Missing, damaged or unreadable data; the message is one line naming the problem and the fix."""

    def __init__(self, message: str) -> None:
        # Fold line breaks so that a reason quoted from an OS or HTTP error can never break the one-line promise.
        super().__init__(re.sub(r"\s*[\r\n]+\s*", " ", str(message)).strip())


# --------------------------------------------------------------------------------------------------- where it lives


def cache_dir() -> Path:
    """Where downloads go: ``$XDG_CACHE_HOME/dropbench/fashion-mnist``, else ``~/.cache/dropbench/fashion-mnist``."""
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "dropbench" / "fashion-mnist"


def held_path(folder: Path, name: str) -> Path | None:
    """The file a folder holds for ``name``: ``NAME.gz`` if present (what we download), else the raw ``NAME``."""
    for candidate in (folder / f"{name}.gz", folder / name):
        if candidate.is_file():
            return candidate
    return None


def _is_gz(path: Path) -> bool:
    return path.name.endswith(".gz")


def _missing(folder: Path) -> list[str]:
    return [name for name in FILES.values() if held_path(folder, name) is None]


def _require_all_held(folder: Path, what: str, fix: str) -> None:
    if not folder.is_dir():
        raise DataError(f"{what} {folder} is not a folder; {fix}")
    missing = _missing(folder)
    if missing:
        listed = ", ".join(f"{name}(.gz)" for name in missing)
        raise DataError(f"{what} {folder} lacks {listed}; {fix}")


def locate(data_dir: PathLike | None = None, *, download: bool = True, progress: bool = True) -> Path:
    """The folder to read Fashion-MNIST from, verified.

    An explicit ``data_dir`` (or ``$FASHION_MNIST_DIR``) is the only place looked at, so that a typo fails loudly
    instead of silently training on some other copy. Otherwise the cache, then the system copy; if neither holds
    the files, download them into the cache (or fail when ``download`` is False).
    """
    if data_dir is not None:
        folder = Path(data_dir).expanduser()
        _require_all_held(folder, "--data-dir", FIX_DATA_DIR)
        verify(folder)
        return folder
    env_dir = os.environ.get("FASHION_MNIST_DIR")
    if env_dir:
        folder = Path(env_dir).expanduser()
        _require_all_held(folder, "FASHION_MNIST_DIR", _FIX_ENV_DIR)
        verify(folder)
        return folder
    candidates = [cache_dir(), SYSTEM_DIR]
    for folder in candidates:
        if folder.is_dir() and not _missing(folder):
            verify(folder)
            return folder
    if download:  # the flag shadows the public function here, hence the private name
        return _download_all(cache_dir(), base_url=None, progress=progress)
    looked = ", ".join(str(folder) for folder in candidates)
    raise DataError(f"Fashion-MNIST not found in {looked} and downloading is off; "
                    f"pass --data-dir, install dataset-fashion-mnist, or allow the download")


# ------------------------------------------------------------------------------------------------------- checksums


def _hash_stream(stream: BinaryIO, hasher: Any) -> int:
    """Feed ``stream`` to ``hasher`` in chunks; return the number of bytes read."""
    size = 0
    while True:
        chunk = stream.read(CHUNK)
        if not chunk:
            return size
        hasher.update(chunk)
        size += len(chunk)


def _file_hexdigest(path: Path, algorithm: str) -> str:
    hasher = hashlib.new(algorithm)
    with open(path, "rb") as stream:
        _hash_stream(stream, hasher)
    return hasher.hexdigest()


# EOFError: truncated stream; zlib.error: damaged deflate data; OSError covers gzip.BadGzipFile (magic, CRC, length).
GZIP_ERRORS = (EOFError, zlib.error, OSError)


def describe_gzip_error(err: BaseException) -> str:
    """A gzip failure as a phrase that follows the file's name."""
    if isinstance(err, EOFError):
        return "is truncated (gzip stream ends early)"
    if isinstance(err, OSError) and not isinstance(err, gzip.BadGzipFile):
        return f"cannot be read ({err})"
    if isinstance(err, gzip.BadGzipFile) and str(err).startswith("Not a gzipped file"):
        return f"is not a gzip file (it starts with {str(err)[len('Not a gzipped file '):]})"
    return f"is corrupt (gzip: {err})"


class _GzipProblem(Exception):
    """Internal: why a .gz could not be decompressed, phrased to follow the file's name."""


def _decompressed_sha256(path: Path) -> tuple[str, int]:
    """sha256 and size of the decompressed contents; gzip failures become a ``_GzipProblem`` with a short reason."""
    hasher = hashlib.sha256()
    try:
        with gzip.open(path, "rb") as stream:
            size = _hash_stream(stream, hasher)
    except GZIP_ERRORS as err:
        raise _GzipProblem(describe_gzip_error(err)) from None
    return hasher.hexdigest(), size


def _problem_with(path: Path, key: str, *, compressed: bool) -> str | None:
    """What is wrong with ``path`` as ``FILES[key]`` (gzip or raw), phrased to follow its name; None when good."""
    try:
        return _content_problem(path, key, compressed=compressed)
    except OSError as err:  # unreadable (permissions, I/O error): still a one-line DataError for the caller
        return f"cannot be read ({err})"


def _content_problem(path: Path, key: str, *, compressed: bool) -> str | None:
    expected_sha, expected_size = DECOMPRESSED_SHA256[key], DECOMPRESSED_SIZE[key]
    if compressed:
        if _file_hexdigest(path, "md5") == UPSTREAM_GZ_MD5[key]:
            return None  # upstream's exact bytes: no need to decompress
        try:
            sha, size = _decompressed_sha256(path)
        except _GzipProblem as problem:
            return str(problem)
        what = "decompressed contents"
    else:
        size = path.stat().st_size
        sha = _file_hexdigest(path, "sha256") if size == expected_size else ""  # a wrong size needs no hashing
        what = "contents"
    if size != expected_size:
        return f"has the wrong size ({what} are {size} bytes, expected {expected_size})"
    if sha != expected_sha:
        return f"fails its checksum (sha256 of the {what} is {sha[:12]}..., expected {expected_sha[:12]}...)"
    return None


def verify(folder: PathLike) -> None:
    """Check the four files in ``folder`` against the checksums; raise ``DataError`` on the first bad or missing one."""
    folder = Path(folder)
    _require_all_held(folder, "data folder", FIX_DATA_DIR)
    # Smallest first: a damaged label file is reported without hashing the 47 MB of training images first.
    for key in sorted(FILES, key=DECOMPRESSED_SIZE.__getitem__):
        name = FILES[key]
        path = held_path(folder, name)
        assert path is not None  # _require_all_held checked
        problem = _problem_with(path, key, compressed=_is_gz(path))
        if problem is not None:
            raise DataError(f"{path.name} in {folder} {problem}; {FIX_BAD_FILE}")


# -------------------------------------------------------------------------------------------------------- download


def _progress_printer(label: str, total: int | None) -> Callable[[int, bool], None]:
    """One stderr line per file, rewritten with ``\\r``; redrawn only when the shown percent changes (cheap)."""
    last = [-1]

    def show(done: int, final: bool = False) -> None:
        mb = done / 1e6
        if total:
            percent = min(100, done * 100 // total)
            if percent == last[0] and not final:
                return
            last[0] = percent
            text = f"\r{label}: {percent:3d}% {mb:6.1f}/{total / 1e6:.1f} MB"
        else:
            text = f"\r{label}: {mb:6.1f} MB"
        sys.stderr.write(text + ("\n" if final else ""))
        sys.stderr.flush()

    return show


def _fetch(url: str, target: BinaryIO, label: str, progress: bool) -> None:
    """Stream ``url`` into ``target``; raise OSError-like errors for the caller to report."""
    with urllib.request.urlopen(url, timeout=60) as response:
        length = response.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
        show = _progress_printer(label, total) if progress else None
        done = 0
        while True:
            chunk = response.read(CHUNK)
            if not chunk:
                break
            target.write(chunk)
            done += len(chunk)
            if show:
                show(done)
        if show:
            show(done, True)
        if total is not None and done != total:
            raise OSError(f"connection closed after {done} of {total} bytes")


def _download_one(key: str, dest: Path, base_url: str, progress: bool) -> None:
    name = f"{FILES[key]}.gz"
    url = base_url.rstrip("/") + "/" + name
    # A temp file in ``dest`` then os.replace: readers (and parallel workers) never see a half-written file.
    try:
        handle, temp_name = tempfile.mkstemp(prefix=f".{name}.", suffix=".part", dir=dest)
    except OSError as err:
        raise DataError(f"cannot write into {dest} for the download: {err}; pass --data-dir or set XDG_CACHE_HOME") \
            from None
    temp = Path(temp_name)
    try:
        try:
            with os.fdopen(handle, "wb") as target:
                _fetch(url, target, name, progress)
        except (OSError, http.client.HTTPException, ValueError) as err:  # URLError/HTTPError are OSErrors
            raise DataError(f"download of {name} from {url} failed: {err}; {_FIX_DOWNLOAD}") from None
        # The temp file's name does not end in .gz, so say what it is.
        problem = _problem_with(temp, key, compressed=True) if temp.stat().st_size else "is empty"
        if problem is not None:
            raise DataError(f"download of {name} from {url} failed: the downloaded file {problem}; {_FIX_DOWNLOAD}")
        os.chmod(temp, 0o644)  # mkstemp creates 0600; the cached file should be readable like any download
        os.replace(temp, dest / name)
    finally:
        if temp.exists():
            temp.unlink()


def download(dest: PathLike | None = None, *, base_url: str | None = None, progress: bool = True) -> Path:
    """Fetch the four ``.gz`` files into ``dest`` (default ``cache_dir()``), each verified; return ``dest``.

    Files already present and valid are kept. ``base_url`` defaults to ``$FASHION_MNIST_URL``, else upstream.
    """
    return _download_all(dest, base_url=base_url, progress=progress)


def _download_all(dest: PathLike | None, *, base_url: str | None, progress: bool) -> Path:
    dest = Path(dest) if dest is not None else cache_dir()
    base_url = base_url or os.environ.get("FASHION_MNIST_URL") or UPSTREAM_URL
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DataError(f"cannot create {dest} for the download: {err}; pass --data-dir or set XDG_CACHE_HOME") \
            from None
    for key, name in FILES.items():
        held = held_path(dest, name)
        if held is not None and _problem_with(held, key, compressed=_is_gz(held)) is None:
            continue
        _download_one(key, dest, base_url, progress)
    return dest
