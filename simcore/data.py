"""MNIST-format data: find it, fetch it, check it, parse it, turn it into tokens.

The four IDX files of a dataset come from the first of these places that has them:

1. an explicit folder: the ``data_dir`` argument (the ``--data DIR`` flag), or else the
   ``SIMCORE_DATA`` environment variable. Files there may be gzipped or raw and are only
   parse-checked, since users keep their own (often uncompressed) copies. Nothing is ever
   downloaded into such a folder: if it lacks a file, that is an error.
2. the user cache, ``cache_dir(dataset)``, holding the ``.gz`` files exactly as published,
   checked against the known digests on every load.
3. the public mirrors, tried in order; a download lands in the cache only after its digest
   matches (temp file, then atomic ``os.replace``), so a half-written or tampered file is never
   read.

Every problem with a file or a source raises ``DataError`` naming the file and the fault: a
wrong header, a short or overlong payload and a damaged gzip stream all stop the load rather
than hand the model garbage.

It uses the standard library, NumPy and simcore.files only, none of the kernels (``import simcore.data``
still loads the package, and with it the compiled extension).
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import http.client
import os
import struct
import tempfile
import urllib.request
import zlib

import numpy as np

from simcore.files import open_regular
from simcore.progress import Progress

__all__ = [
    "DataError",
    "DATASETS",
    "cache_dir",
    "find_file",
    "load_idx_images",
    "load_idx_labels",
    "load_split",
    "to_tokens",
]


class DataError(ValueError):
    """A data file or data source is missing, unreachable or malformed."""


@dataclasses.dataclass(frozen=True)
class Dataset:
    """Where a dataset is published and how to recognise its files.

    ``checksums`` maps each published ``.gz`` file name to ``(algorithm, hexdigest)``, with
    ``algorithm`` a ``hashlib`` name.
    """

    name: str
    mirrors: tuple[str, ...]
    checksums: dict[str, tuple[str, str]]
    num_classes: int = 10


DATASETS: dict[str, Dataset] = {
    "mnist": Dataset(
        name="mnist",
        mirrors=(
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "https://storage.googleapis.com/cvdf-datasets/mnist/",
            "http://yann.lecun.com/exdb/mnist/",
        ),
        checksums={
            "train-images-idx3-ubyte.gz": (
                "sha256", "0b367032e93c5d0cea0925647cfdb18614af8ee15f83e6f2fc2ad904a6835971"),
            "train-labels-idx1-ubyte.gz": (
                "sha256", "1787548bbe0bff1ec2ecdc0ef292b02df999e2d1a6002d27500982c652b17203"),
            "t10k-images-idx3-ubyte.gz": (
                "sha256", "1a1a05eab793c14bb050b398624a11b0ffd1a2953baed553b1b9bd079e2a20be"),
            "t10k-labels-idx1-ubyte.gz": (
                "sha256", "b91679a0acfe4ba0e50a2437a903084cba1f5f92592b016a25a7dfd00455798b"),
        },
    ),
    # Zalando publishes MD5s only. These SHA-256s of the same four files were taken from two
    # independent public checksum lists that agree on all four; SHA-256, unlike MD5, also
    # guards against a mirror serving a crafted file.
    "fashion-mnist": Dataset(
        name="fashion-mnist",
        mirrors=(
            "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
            "https://github.com/zalandoresearch/fashion-mnist/raw/master/data/fashion/",
        ),
        checksums={
            "train-images-idx3-ubyte.gz": (
                "sha256", "08dc20ab1689590a0bcd66e874647b6ee8464e2d501b5a3f1f78831db19a3fdc"),
            "train-labels-idx1-ubyte.gz": (
                "sha256", "b0197879cbda89f3dc7b894f9fd52b858e68ea4182b6947c9d8c2b67e5f18dcc"),
            "t10k-images-idx3-ubyte.gz": (
                "sha256", "78dcbbfb5a27efaf1b6c1d616caca68560be8766c5bffcb2791df9273a534229"),
            "t10k-labels-idx1-ubyte.gz": (
                "sha256", "42bd18137a62d5998cdeae52bf3a0676ac6b706f5cf8439b47bb5b151ae3dccf"),
        },
    ),
}

# (images stem, labels stem) per split; a file is found as the stem or the stem + ".gz".
SPLITS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

IMAGES_MAGIC = 0x00000803  # unsigned byte, 3 dims: count, rows, cols
LABELS_MAGIC = 0x00000801  # unsigned byte, 1 dim: count
_UBYTE = 0x08
_GZIP_MAGIC = b"\x1f\x8b"
_CHUNK = 1 << 20
_TIMEOUT_S = 30


# ----------------------------------------------------------------------------- IDX parsing


def load_idx_images(path) -> np.ndarray:
    """Read an IDX image file (gzipped or raw) into a uint8 array ``[N, S, S]``."""
    path = os.fspath(path)
    with _IdxReader(path) as f:
        count, rows, cols = _read_header(f, path, IMAGES_MAGIC, "image")
        if rows != cols or rows == 0:
            raise DataError(f"{path}: images are {rows}x{cols}; expected square images of size > 0")
        payload = _read_payload(f, path, count * rows * cols, "pixel")
    return np.frombuffer(payload, dtype=np.uint8).reshape(count, rows, cols)


def load_idx_labels(path, num_classes: int = 10) -> np.ndarray:
    """Read an IDX label file (gzipped or raw) into a uint8 array ``[N]``.

    Every label must lie in ``0 .. num_classes - 1``.
    """
    path = os.fspath(path)
    with _IdxReader(path) as f:
        (count,) = _read_header(f, path, LABELS_MAGIC, "label")
        payload = _read_payload(f, path, count, "label")
    labels = np.frombuffer(payload, dtype=np.uint8)
    bad = np.flatnonzero(labels >= num_classes)
    if bad.size:
        i = int(bad[0])
        raise DataError(
            f"{path}: label {labels[i]} at index {i} is outside 0..{num_classes - 1} "
            f"({bad.size} such labels)")
    return labels


class _IdxReader:
    """A file opened for reading, gzip or raw, whose read errors become DataError."""

    def __init__(self, path: str):
        self.path = path
        try:
            raw = open_regular(path)  # a named pipe or a device is refused, never waited on
        except OSError as e:
            raise DataError(f"{path}: cannot open: {e.strerror or e}") from e
        except ValueError as e:
            raise DataError(f"{path}: {e}; {_HOW_TO_POINT}") from None
        # Sniff rather than trust the name: IDX starts with two zero bytes, gzip with 1f 8b.
        try:
            self.gzipped = raw.read(2) == _GZIP_MAGIC
            raw.seek(0)
        except OSError as e:
            raw.close()
            raise DataError(f"{path}: read error: {e}") from e
        self._f = gzip.GzipFile(fileobj=raw, mode="rb") if self.gzipped else raw
        self._raw = raw

    def read(self, n: int) -> bytes:
        try:
            return self._f.read(n)
        except (OSError, EOFError, zlib.error) as e:
            # BadGzipFile is an OSError; a cut-off stream is an EOFError; bad deflate data
            # is a zlib.error.
            fault = "corrupt gzip stream" if self.gzipped else "read error"
            raise DataError(f"{self.path}: {fault}: {e}") from e

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()
        self._raw.close()


def _read_header(f: _IdxReader, path: str, magic: int, kind: str) -> tuple[int, ...]:
    """Check the magic number and return the dimensions it announces."""
    ndim = magic & 0xFF
    want = f"0x{magic:08X}, an IDX {kind} file of unsigned bytes with {ndim} dimension(s)"
    head = f.read(4)
    if len(head) < 4:
        raise DataError(f"{path}: truncated: {len(head)} bytes, too short for an IDX header")
    (got,) = struct.unpack(">I", head)
    if head[:2] != b"\0\0":
        raise DataError(f"{path}: bad magic number 0x{got:08X} (expected {want})")
    if head[2] != _UBYTE:
        raise DataError(
            f"{path}: bad magic number 0x{got:08X}: data type 0x{head[2]:02X} is not "
            f"unsigned byte (expected {want})")
    if head[3] != ndim:
        raise DataError(
            f"{path}: bad magic number 0x{got:08X}: declares {head[3]} dimension(s) "
            f"(expected {want})")
    dims_raw = f.read(4 * ndim)
    if len(dims_raw) < 4 * ndim:
        raise DataError(f"{path}: truncated: header ends inside the {ndim} dimension size(s)")
    dims = struct.unpack(f">{ndim}I", dims_raw)
    if dims[0] == 0:
        raise DataError(f"{path}: header says the file holds 0 {kind}s")
    return dims


def _read_payload(f: _IdxReader, path: str, nbytes: int, unit: str) -> bytearray:
    """Read exactly the ``nbytes`` the header promises and make sure nothing follows.

    Reads in bounded chunks instead of one ``read(nbytes)``: a corrupt header may promise
    terabytes, and the file, not the header, should decide how much memory we use.
    """
    buf = bytearray()
    while len(buf) <= nbytes:  # one byte past the promise reveals trailing data
        chunk = f.read(min(_CHUNK, nbytes + 1 - len(buf)))
        if not chunk:
            break
        buf += chunk
    if len(buf) < nbytes:
        raise DataError(
            f"{path}: truncated: header promises {nbytes} {unit} bytes, file has {len(buf)}")
    if len(buf) > nbytes:
        # Not read to the end to count the excess: a gzip bomb could make that minutes.
        raise DataError(
            f"{path}: oversized: header promises {nbytes} {unit} bytes, but the file goes on "
            "(trailing data)")
    return buf  # a bytearray, so the arrays built on it are writable


# ----------------------------------------------------------------------------- tokens


def to_tokens(images: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Flatten images in raster order and put each class label in pixel 0.

    The model is class-conditional: token 0 of every sequence is the label, and the model
    predicts pixels 1 .. S*S-1 after it. The top-left pixel is background (0 in every MNIST
    image), so overwriting it loses nothing. Returns a new uint8 array ``[N, S*S]``.
    """
    images = np.asarray(images)
    labels = np.asarray(labels)
    if images.ndim != 3 or images.shape[1] != images.shape[2] or images.shape[1] == 0:
        raise ValueError(f"images must have shape [N, S, S] with S > 0, got {images.shape}")
    if images.dtype != np.uint8:
        raise ValueError(f"images must be uint8, got {images.dtype}")
    if labels.shape != (images.shape[0],):
        raise ValueError(
            f"labels must have shape [{images.shape[0]}] to match images, got {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integers, got {labels.dtype}")
    if labels.size and (labels.min() < 0 or labels.max() > 255):
        raise ValueError("labels must fit in a uint8 token (0..255)")
    tokens = images.reshape(images.shape[0], -1).copy()
    tokens[:, 0] = labels
    return tokens


# ----------------------------------------------------------------------------- locating files


def cache_dir(dataset: str) -> str:
    """The user cache folder for ``dataset``: ``$XDG_CACHE_HOME/simcore/<dataset>``, or
    ``~/.cache/simcore/<dataset>`` when XDG_CACHE_HOME is unset or empty."""
    _dataset(dataset)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "simcore", dataset)


def find_file(dirpath, stem: str) -> str | None:
    """Path of ``stem`` or ``stem + ".gz"`` in ``dirpath`` (raw preferred, a regular file
    before anything else of the name: a pipe or a folder there is returned, so that reading
    it says what it is rather than call it missing), or None."""
    found = [p for p in (os.path.join(os.fspath(dirpath), name) for name in (stem, stem + ".gz"))
             if os.path.lexists(p)]
    return next((p for p in found if os.path.isfile(p)), found[0] if found else None)


def load_split(dataset: str = "mnist", split: str = "train", data_dir=None,
               download: bool = True, progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Load one split as ``(images uint8 [N, S, S], labels uint8 [N])``.

    Looks in ``data_dir`` or else ``$SIMCORE_DATA``; without either, in ``cache_dir(dataset)``,
    downloading what is missing when ``download`` is true (with a progress bar on stderr when
    ``progress`` is true). See the module docstring for the rules of each place.
    """
    spec = _dataset(dataset)
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {sorted(SPLITS)}")
    stems = SPLITS[split]

    explicit = data_dir if data_dir is not None else os.environ.get("SIMCORE_DATA") or None
    if explicit is not None:
        images_path, labels_path = _from_user_dir(os.fspath(explicit), stems, data_dir is None)
    else:
        images_path, labels_path = (
            _from_cache(spec, stem + ".gz", download, progress) for stem in stems)

    images = load_idx_images(images_path)
    labels = load_idx_labels(labels_path, spec.num_classes)
    if len(images) != len(labels):
        raise DataError(
            f"{images_path}, {labels_path}: count mismatch: {len(images)} images "
            f"but {len(labels)} labels")
    return images, labels


def _dataset(name: str) -> Dataset:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; expected one of {sorted(DATASETS)}")
    return DATASETS[name]


def _from_user_dir(dirpath: str, stems, from_env: bool) -> list[str]:
    where = f"{dirpath} (from SIMCORE_DATA)" if from_env else dirpath
    try:
        os.listdir(dirpath)
    except NotADirectoryError:
        raise DataError(f"{where}: not a folder; {_HOW_TO_POINT}") from None
    except FileNotFoundError:
        raise DataError(f"{where}: no such folder; {_HOW_TO_POINT}") from None
    except PermissionError:
        raise DataError(f"{where}: cannot read the folder (permission denied)") from None
    except OSError as e:
        raise DataError(f"{where}: cannot read the folder ({e.strerror or e})") from None
    paths = [find_file(dirpath, stem) for stem in stems]
    missing = [f"{stem}[.gz]" for stem, p in zip(stems, paths) if p is None]
    if missing:
        raise DataError(f"{where}: missing {', '.join(missing)}; {_HOW_TO_POINT}")
    return paths


_ALL_FILES = ", ".join(f"{stem}[.gz]" for pair in SPLITS.values() for stem in pair)
_HOW_TO_POINT = (
    f"point --data DIR (or the SIMCORE_DATA environment variable) at a folder holding "
    f"the four files {_ALL_FILES}, gzipped or raw")


# ----------------------------------------------------------------------------- cache + download


def _from_cache(spec: Dataset, filename: str, download: bool, progress: bool) -> str:
    """Path of a verified copy of ``filename`` in the cache, downloading it if needed."""
    folder = cache_dir(spec.name)
    path = os.path.join(folder, filename)
    if os.path.isfile(path):
        damage = _digest_problem(path, spec.checksums[filename])
        if damage is None:
            return path
        # A damaged copy (an old interrupted tool, a disk fault) is replaced, never parsed.
        situation = f"the cached copy {path} is damaged ({damage})"
    else:
        situation = f"no copy in the cache {folder}"
    if not download:
        raise DataError(f"{filename}: {situation} and downloading is off; {_HOW_TO_POINT}")
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        raise DataError(f"{folder}: cannot create the cache folder: {e}; {_HOW_TO_POINT}") from e

    failures = []
    for mirror in spec.mirrors:
        url = mirror + filename
        label = f"{spec.name} {filename}" if progress else None
        problem = _fetch_verified(url, path, spec.checksums[filename], label)
        if problem is None:
            return path
        failures.append(f"  {url}: {problem}")
    raise DataError(
        f"{filename}: {situation} and every mirror failed:\n" + "\n".join(failures)
        + f"\nTo work offline, {_HOW_TO_POINT}.")


def _fetch_verified(url: str, dest: str, checksum: tuple[str, str], label: str | None):
    """Download ``url`` to ``dest`` if its digest matches; return None or what went wrong.

    The bytes go to a temp file in the destination folder, so the final ``os.replace`` is an
    atomic rename: readers see either no file or the whole verified file.
    """
    algorithm, expected = checksum
    digest = hashlib.new(algorithm, usedforsecurity=False)  # lets md5 work under FIPS too
    try:
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(dest), prefix=".download-")
    except OSError as e:  # the cache folder's fault, not the mirror's: no point trying others
        raise DataError(f"{os.path.dirname(dest)}: cannot write to the cache folder: {e}") from e
    bar = Progress(None, label or "", "MB", enabled=bool(label), scale=1e6)
    try:
        with os.fdopen(fd, "wb") as out:
            # Some mirrors refuse urllib's default User-Agent.
            request = urllib.request.Request(url, headers={"User-Agent": "simcore"})
            with urllib.request.urlopen(request, timeout=_TIMEOUT_S) as response:
                bar.total = _content_length(response)
                while chunk := response.read(_CHUNK // 4):
                    out.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
        if digest.hexdigest() != expected:
            return f"checksum mismatch ({algorithm} {digest.hexdigest()}, expected {expected})"
        os.replace(tmp, dest)
        tmp = None
        return None
    except (OSError, http.client.HTTPException) as e:
        # URLError and HTTPError are OSErrors, as are timeouts and connection resets;
        # HTTPException covers a response cut short (IncompleteRead) or garbled.
        return str(e) or type(e).__name__
    finally:
        if bar.n:
            bar.close()
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass


def _content_length(response) -> int | None:
    try:
        return int(response.headers.get("Content-Length"))
    except (AttributeError, TypeError, ValueError):
        return None


def _digest_problem(path: str, checksum: tuple[str, str]) -> str | None:
    """None if the file at ``path`` has the expected digest, else what is wrong."""
    algorithm, expected = checksum
    digest = hashlib.new(algorithm, usedforsecurity=False)
    try:
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                digest.update(chunk)
    except OSError as e:
        return f"cannot read: {e}"
    if digest.hexdigest() != expected:
        return f"{algorithm} {digest.hexdigest()}, expected {expected}"
    return None
