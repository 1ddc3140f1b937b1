"""Checkpoints: the model's weights (and optionally its optimizer state) in one safetensors file.

A checkpoint holds one float32 tensor per weight, named as in ``SIM.weights``
(``token_embedding``, ``layers.0.attn.wq``, ...). With ``optimizer=True`` it also holds the
optimizer's moments as ``optim.m.<name>`` and ``optim.v.<name>``: AdamW's two, or for the
matrices Muon trains, its momentum (``optim.v.`` stays zero). The header's metadata (all
strings) carries:

    format       "simcore-checkpoint-1"
    config       JSON of Config.to_dict()
    adam_step    the optimizer's step counter (SIM.opt_step), decimal
    train_state  JSON of the trainer's dict (step, epoch, seeds, ...), when given
    sha256       SHA-256 of the metadata above and of every tensor (name, shape, bytes)

No pickle anywhere: safetensors is a JSON header plus raw little-endian arrays, so loading an
untrusted file can fail but cannot run code. ``load`` opens only a regular file (a named pipe,
a device or a folder is refused, never waited on), and checks the whole header (format, config,
tensor names, shapes, dtypes) before it allocates a model or reads any tensor data, then
checks the numbers against the stored SHA-256 (a flipped bit anywhere, in a weight or in the
config, is an error; a file from before checksums loads with a warning), and every fault
becomes a ``CheckpointError`` naming the file.

Writes are atomic: the bytes go to a temp file created exclusively (O_EXCL, so a file or
symlink planted at its name is never followed) in the same folder, named
``.<name>.tmp-<pid>-<random>``, are fsynced, and ``os.replace`` moves them onto the final
name, so a crash leaves either the old file or the new one, never half of one. A temp file
left by a killed writer is removed by ``remove_stale_temps``.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import warnings

import numpy as np
import safetensors
import safetensors.numpy

from simcore.config import Config
from simcore.files import not_regular, remove_stale_temps, write_atomic
from simcore.model import SIM, one_call, param_specs

FORMAT = "simcore-checkpoint-1"
_MOMENTS = ("optim.m.", "optim.v.")
# The AdamW kernel takes the step as a C long; stay within 32 bits so it fits everywhere.
_MAX_ADAM_STEP = 2**31 - 1
# image_size is the one size no tensor shape pins down, yet SIM allocates its position
# encoding (seq_len x d_model floats) up front. Refuse a header asking for more than 1 GiB
# of it, so a tampered config is an error rather than an out-of-memory kill.
_MAX_POSENC_FLOATS = 2**28

__all__ = ["CheckpointError", "FORMAT", "in_folder", "load", "read_metadata", "remove_stale_temps",
           "resolve", "save", "write_atomic"]
_CHECKSUMMED = ("format", "config", "adam_step", "train_state")


class CheckpointError(ValueError):
    """A checkpoint file that cannot be loaded; the message names the file and the fault."""


# ---- writing -----------------------------------------------------------------------------


def save(path, model: SIM, *, optimizer: bool = False, train_state: dict | None = None) -> None:
    """Write ``model`` (and its optimizer moments when ``optimizer``) to ``path`` atomically.

    ``train_state`` is any JSON-serialisable dict (the trainer's step, epoch, batch position,
    seeds, ...); it comes back from ``load`` as ``json.loads`` gives it (tuples as lists).
    Raises TypeError for a train_state that is not a JSON-serialisable dict, and ValueError
    for non-finite weights (``load`` would refuse them), both before anything is written.
    """
    path = os.fspath(path)
    if not isinstance(optimizer, bool):
        raise TypeError(f"optimizer must be True or False, got {optimizer!r}")
    if not isinstance(model, SIM):
        raise TypeError(f"model must be a simcore.SIM, got {type(model).__name__}")
    with one_call(model, "checkpoint.save"):
        _save(path, model, optimizer, train_state)


def _save(path: str, model: SIM, optimizer: bool, train_state: dict | None) -> None:
    metadata = {
        "format": FORMAT,
        "config": json.dumps(model.cfg.to_dict(), sort_keys=True),
        "adam_step": str(int(model.opt_step)),
    }
    if train_state is not None:
        if not isinstance(train_state, dict):
            raise TypeError(f"train_state must be a dict, got {type(train_state).__name__}")
        try:
            metadata["train_state"] = json.dumps(train_state, sort_keys=True)
        except (TypeError, ValueError) as e:  # ValueError: a circular reference
            raise TypeError(f"train_state is not JSON-serialisable: {e} (numpy scalars need "
                            "int()/float() first)") from e
    if not np.isfinite(model.params).all():
        bad = [name for name, w in model.weights.items() if not np.isfinite(w).all()]
        raise ValueError(f"refusing to save non-finite weights (in {_first(bad)})")
    # Weight views are contiguous slices of the arena; safetensors reads them in place.
    tensors = {name: np.ascontiguousarray(w) for name, w in model.weights.items()}
    if optimizer:
        for name in model.weights:
            tensors[_MOMENTS[0] + name] = _twin(model, model.moment1, name)
            tensors[_MOMENTS[1] + name] = _twin(model, model.moment2, name)
    digest = _Digest(metadata)
    for name in sorted(tensors):
        digest.add(name, tensors[name])
    metadata["sha256"] = digest.hexdigest()
    write_atomic(path, _serialize(tensors, metadata))


def _serialize(tensors: dict, metadata: dict) -> bytes:
    return safetensors.numpy.save(tensors, metadata=metadata)


class _Digest:
    """SHA-256 over the checksummed metadata, then each tensor (in name order): its name,
    shape and little-endian float32 bytes. What save stores and load recomputes."""

    def __init__(self, metadata: dict):
        self._h = hashlib.sha256()
        self._h.update(json.dumps({k: metadata[k] for k in _CHECKSUMMED if k in metadata},
                                  sort_keys=True).encode())

    def add(self, name: str, t: np.ndarray) -> None:
        self._h.update(json.dumps([name, list(t.shape)]).encode())
        self._h.update(np.ascontiguousarray(t, dtype="<f4").tobytes())

    def hexdigest(self) -> str:
        return self._h.hexdigest()


def _twin(model: SIM, arena: np.ndarray, name: str) -> np.ndarray:
    """The view of ``arena`` (m or v) laid out like ``model.weights[name]`` in the params."""
    w = model.weights[name]
    start = (w.ctypes.data - model.params.ctypes.data) // w.itemsize
    assert 0 <= start and start + w.size <= arena.size, name
    return arena[start:start + w.size].reshape(w.shape)


# ---- reading -----------------------------------------------------------------------------


def in_folder(folder) -> list[str]:
    """The step-NNNNNN.safetensors checkpoints a training run wrote in `folder`, oldest first."""
    found = []
    for entry in os.listdir(folder):
        m = re.fullmatch(r"step-(\d+)\.safetensors", entry)
        if m:
            found.append((int(m.group(1)), os.path.join(os.fspath(folder), entry)))
    return [p for _, p in sorted(found)]


def resolve(path) -> str:
    """A checkpoint file, or a run's folder standing for its newest checkpoint."""
    path = os.fspath(path)
    if os.path.isdir(path):
        found = in_folder(path)
        if not found:
            raise FileNotFoundError(2, "no step-NNNNNN.safetensors checkpoint in the folder", path)
        return found[-1]
    return path


def read_metadata(path) -> dict:
    """The header's metadata as stored (str -> str), without reading any tensor data.

    Raises FileNotFoundError for a missing file and CheckpointError for anything that is not
    a readable simcore checkpoint.
    """
    path = os.fspath(path)
    with _open(path) as f, _reading(path, "unreadable header"):
        metadata = f.metadata()
    return _check_format(path, metadata)


def load_model(path, *, optimizer: bool = True) -> SIM:
    """Read a checkpoint into a new SIM (``simcore.load``); see ``load``."""
    return load(path, optimizer=optimizer)[0]


def load(path, *, optimizer: bool = True) -> tuple[SIM, dict | None]:
    """Read a checkpoint; return ``(model, train_state)`` (train_state None when absent).

    With ``optimizer`` and moments in the file, the optimizer moments and step counter are
    restored too, so training continues exactly; otherwise the optimizer starts fresh
    (zero moments, ``adam_step`` 0).
    """
    path = os.fspath(path)
    if not isinstance(optimizer, bool):
        raise TypeError(f"optimizer must be True or False, got {optimizer!r}")
    with _open(path) as f:
        # 1. The header: nothing is allocated or read until all of it checks out.
        with _reading(path, "unreadable header"):
            metadata = f.metadata()
            header = {}
            for key in f.keys():
                view = f.get_slice(key)
                header[key] = (view.get_dtype(), tuple(view.get_shape()))
        metadata = _check_format(path, metadata)
        cfg = _parse_config(path, metadata)
        adam_step = _parse_adam_step(path, metadata)
        train_state = _parse_train_state(path, metadata)
        specs = {name: tuple(shape) for name, shape, _ in param_specs(cfg)}
        has_moments = _check_tensors(path, header, specs, cfg)

        # 2. The data, one tensor at a time, straight into the model's arenas; every
        #    tensor in the file is hashed (the moments too, also when not restored).
        model = SIM(cfg, seed=0)
        digest = _Digest(metadata)
        moments = {}
        for key in sorted(header):
            if key in model.weights:
                t = _read(path, f, key, specs[key])
                model.weights[key][...] = t
            else:  # optim.m.<name> / optim.v.<name>
                name = key.split(".", 2)[2]
                t = _read(path, f, key, specs[name])
                if key.startswith(_MOMENTS[1]) and (t < 0).any():
                    raise CheckpointError(f"{path}: negative values in {key} "
                                          "(a second moment is a running mean of squares)")
                if optimizer:
                    moments[key] = t
            digest.add(key, t)
        _check_digest(path, metadata, digest)
        if optimizer and has_moments:
            for name in model.weights:
                _twin(model, model.moment1, name)[...] = moments[_MOMENTS[0] + name]
                _twin(model, model.moment2, name)[...] = moments[_MOMENTS[1] + name]
            model.opt_step = adam_step
    return model, train_state


def _check_digest(path: str, metadata: dict, digest: _Digest) -> None:
    stored = metadata.get("sha256")
    if stored is None:
        warnings.warn(f"{path} has no checksum (written before simcore stored one): its "
                      "numbers cannot be verified", stacklevel=3)
        return
    if stored != digest.hexdigest():
        raise CheckpointError(f"{path}: checksum mismatch: the file's tensors or settings "
                              "changed after it was written (a damaged or edited file)")


@contextlib.contextmanager
def _open(path: str):
    """safe_open, with every failure but a missing file turned into CheckpointError."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise FileNotFoundError(2, "no such checkpoint file", path) from None
    except PermissionError:
        raise PermissionError(13, "cannot read the checkpoint (permission denied)", path) from None
    # Only a regular file: safetensors would open a named pipe and wait for a writer forever,
    # and a device or a folder fails in its reader with an OS error that names neither.
    what = not_regular(mode)
    if what is not None:
        raise CheckpointError(f"{path}: not a regular file ({what}), so not a checkpoint")
    if not os.access(path, os.R_OK):
        raise PermissionError(13, "cannot read the checkpoint (permission denied)", path)
    with _reading(path, "not a readable safetensors file"):
        try:
            # pread: a file truncated while we read it gives an error, not a SIGBUS from mmap.
            handle = safetensors.safe_open(path, framework="numpy", backend="pread")
        except TypeError:  # safetensors < 0.8 has no backend argument
            handle = safetensors.safe_open(path, framework="numpy")
    with handle as f:
        yield f


@contextlib.contextmanager
def _reading(path: str, what: str):
    """Turn whatever the safetensors reader raises into CheckpointError.

    Its own errors are SafetensorError or OSError, but a Rust panic arrives as pyo3's
    PanicException, which derives from BaseException, so this catches that wide.
    """
    try:
        yield
    except (CheckpointError, KeyboardInterrupt, SystemExit, GeneratorExit, MemoryError):
        raise
    except BaseException as e:
        raise CheckpointError(f"{path}: {what}: {type(e).__name__}: {e}") from e


def _check_format(path: str, metadata) -> dict:
    if not metadata or "format" not in metadata:
        raise CheckpointError(f"{path}: no 'format' in the metadata; not a simcore checkpoint")
    if metadata["format"] != FORMAT:
        raise CheckpointError(f"{path}: format is {_short(metadata['format'])}, "
                              f"expected {FORMAT!r}")
    return dict(metadata)


def _parse_config(path: str, metadata: dict) -> Config:
    if "config" not in metadata:
        raise CheckpointError(f"{path}: no 'config' in the metadata")
    try:
        d = json.loads(metadata["config"])
    except (ValueError, RecursionError) as e:
        raise CheckpointError(f"{path}: config is not valid JSON: {e}") from e
    if not isinstance(d, dict):
        raise CheckpointError(f"{path}: config must be a JSON object, got {type(d).__name__}")
    try:
        return Config.from_dict(d)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: invalid config: {e}") from e


def _parse_adam_step(path: str, metadata: dict) -> int:
    s = metadata.get("adam_step")
    if s is None:
        raise CheckpointError(f"{path}: no 'adam_step' in the metadata")
    if not re.fullmatch(r"[0-9]{1,10}", s) or int(s) > _MAX_ADAM_STEP:
        raise CheckpointError(f"{path}: adam_step must be an integer in 0..{_MAX_ADAM_STEP}, "
                              f"got {_short(s)}")
    return int(s)


def _parse_train_state(path: str, metadata: dict) -> dict | None:
    if "train_state" not in metadata:
        return None
    try:
        state = json.loads(metadata["train_state"])
    except (ValueError, RecursionError) as e:
        raise CheckpointError(f"{path}: train_state is not valid JSON: {e}") from e
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: train_state must be a JSON object, "
                              f"got {type(state).__name__}")
    return state


def _check_tensors(path: str, header: dict, specs: dict, cfg: Config) -> bool:
    """Check names, dtypes and shapes against the config; return whether moments are present."""
    expected = dict(specs)
    moments = {prefix + name: shape for prefix in _MOMENTS for name, shape in specs.items()}
    missing = [name for name in specs if name not in header]
    if missing:
        raise CheckpointError(f"{path}: missing tensor(s) {_first(missing)} for config {cfg}")
    present = [name for name in moments if name in header]
    if present and len(present) != len(moments):
        absent = [name for name in moments if name not in header]
        raise CheckpointError(f"{path}: optimizer moments present for some tensors but not all "
                              f"(missing {_first(absent)})")
    expected.update({name: moments[name] for name in present})
    extra = sorted(name for name in header if name not in expected)
    if extra:
        raise CheckpointError(f"{path}: unexpected tensor(s) {_first(extra)} for config {cfg}")
    for name, (dtype, shape) in header.items():
        if dtype != "F32":
            raise CheckpointError(f"{path}: tensor {name!r} has dtype {dtype}, expected F32")
        if shape != expected[name]:
            raise CheckpointError(f"{path}: tensor {name!r} has shape {list(shape)}, expected "
                                  f"{list(expected[name])} for config {cfg}")
    if cfg.seq_len * cfg.d_model > _MAX_POSENC_FLOATS:
        raise CheckpointError(f"{path}: implausible config: image_size={cfg.image_size} with "
                              f"d_model={cfg.d_model} needs a {cfg.seq_len} x {cfg.d_model} "
                              "position encoding")
    return bool(present)


def _read(path: str, f, name: str, shape: tuple) -> np.ndarray:
    with _reading(path, f"cannot read tensor {name!r}"):
        t = f.get_tensor(name)
    if t.dtype != np.float32 or t.shape != shape:  # the header said so; the data must agree
        raise CheckpointError(f"{path}: tensor {name!r} read as {t.dtype} {list(t.shape)}")
    if not np.isfinite(t).all():
        raise CheckpointError(f"{path}: non-finite values (NaN or inf) in tensor {name!r}")
    return t


def _first(names, k: int = 5) -> str:
    shown = ", ".join(_short(n) for n in names[:k])
    return shown + (f" and {len(names) - k} more" if len(names) > k else "")


def _short(s, limit: int = 60) -> str:
    r = repr(s)
    return r if len(r) <= limit else r[:limit] + "...'"
