"""Checkpoints: the model's weights (and optionally its AdamW state) in one safetensors file.

A checkpoint holds one float32 tensor per weight, named as in ``SIM.weights``
(``token_embedding``, ``layers.0.attn.wq``, ...). With ``optimizer=True`` it also holds the
AdamW moments as ``optim.m.<name>`` and ``optim.v.<name>``. The header's metadata (all
strings) carries:

    format       "simcore-checkpoint-1"
    config       JSON of Config.to_dict()
    adam_step    the AdamW step counter, decimal
    train_state  JSON of the trainer's dict (step, epoch, seeds, ...), when given

No pickle anywhere: safetensors is a JSON header plus raw little-endian arrays, so loading an
untrusted file can fail but cannot run code. ``load`` checks the whole header (format, config,
tensor names, shapes, dtypes) before it allocates a model or reads any tensor data, and every
fault becomes a ``CheckpointError`` naming the file.

Writes are atomic: the bytes go to ``.<name>.tmp-<pid>`` in the same folder, are fsynced, and
``os.replace`` moves them onto the final name, so a crash leaves either the old file or the
new one, never half of one.
"""
from __future__ import annotations

import contextlib
import json
import os
import re

import numpy as np
import safetensors
import safetensors.numpy

from simcore.config import Config
from simcore.model import SIM, param_specs

FORMAT = "simcore-checkpoint-1"
_MOMENTS = ("optim.m.", "optim.v.")
# The AdamW kernel takes the step as a C long; stay within 32 bits so it fits everywhere.
_MAX_ADAM_STEP = 2**31 - 1
# image_size is the one size no tensor shape pins down, yet SIM allocates its position
# encoding (seq_len x d_model floats) up front. Refuse a header asking for more than 1 GiB
# of it, so a tampered config is an error rather than an out-of-memory kill.
_MAX_POSENC_FLOATS = 2**28

__all__ = ["CheckpointError", "FORMAT", "load", "read_metadata", "save", "write_atomic"]


class CheckpointError(ValueError):
    """A checkpoint file that cannot be loaded; the message names the file and the fault."""


# ---- writing -----------------------------------------------------------------------------


def save(path, model: SIM, *, optimizer: bool = False, train_state: dict | None = None) -> None:
    """Write ``model`` (and its AdamW moments when ``optimizer``) to ``path`` atomically.

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
    metadata = {
        "format": FORMAT,
        "config": json.dumps(model.cfg.to_dict(), sort_keys=True),
        "adam_step": str(int(model.adam_step)),
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
            tensors[_MOMENTS[0] + name] = _twin(model, model.m, name)
            tensors[_MOMENTS[1] + name] = _twin(model, model.v, name)
    write_atomic(path, _serialize(tensors, metadata))


def _serialize(tensors: dict, metadata: dict) -> bytes:
    return safetensors.numpy.save(tensors, metadata=metadata)


def _twin(model: SIM, arena: np.ndarray, name: str) -> np.ndarray:
    """The view of ``arena`` (m or v) laid out like ``model.weights[name]`` in the params."""
    w = model.weights[name]
    start = (w.ctypes.data - model.params.ctypes.data) // w.itemsize
    assert 0 <= start and start + w.size <= arena.size, name
    return arena[start:start + w.size].reshape(w.shape)


def write_atomic(path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a fsynced temp file and ``os.replace``.

    Readers see the old file or the new one, never a mix; on any failure the temp file is
    removed and ``path`` is untouched.
    """
    path = os.fspath(path)
    folder, name = os.path.split(os.path.abspath(path))
    tmp = os.path.join(folder, f".{name}.tmp-{os.getpid()}")
    created = False
    try:
        with open(tmp, "wb") as f:
            created = True
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        created = False
    finally:
        if created:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
    _fsync_dir(folder)


def _fsync_dir(folder: str) -> None:
    """Make the rename durable. Some platforms (Windows) and filesystems cannot fsync a
    folder; the rename has happened either way, so that is not worth an exception."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# ---- reading -----------------------------------------------------------------------------


def read_metadata(path) -> dict:
    """The header's metadata as stored (str -> str), without reading any tensor data.

    Raises FileNotFoundError for a missing file and CheckpointError for anything that is not
    a readable simcore checkpoint.
    """
    path = os.fspath(path)
    with _open(path) as f, _reading(path, "unreadable header"):
        metadata = f.metadata()
    return _check_format(path, metadata)


def load(path, *, optimizer: bool = True) -> tuple[SIM, dict | None]:
    """Read a checkpoint; return ``(model, train_state)`` (train_state None when absent).

    With ``optimizer`` and moments in the file, the AdamW moments and step counter are
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

        # 2. The data, one tensor at a time, straight into the model's arenas.
        model = SIM(cfg, seed=0)
        for name, w in model.weights.items():
            w[...] = _read(path, f, name, specs[name])
        if optimizer and has_moments:
            for name in model.weights:
                m = _read(path, f, _MOMENTS[0] + name, specs[name])
                v = _read(path, f, _MOMENTS[1] + name, specs[name])
                if (v < 0).any():
                    raise CheckpointError(f"{path}: negative values in {_MOMENTS[1] + name} "
                                          "(a second moment is a running mean of squares)")
                _twin(model, model.m, name)[...] = m
                _twin(model, model.v, name)[...] = v
            model.adam_step = adam_step
    return model, train_state


@contextlib.contextmanager
def _open(path: str):
    """safe_open, with every failure but a missing file turned into CheckpointError."""
    if not os.path.exists(path):
        raise FileNotFoundError(2, "no such checkpoint file", path)
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
