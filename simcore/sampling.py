"""Sampling's arguments, checked, and its guidance: the one place for both, used by
SIM.generate and SIM.complete (the cached sampler), simcore.generate's reference sampler
and CLI, simcore.serve, and the judge."""
from __future__ import annotations

import math
import numbers

import numpy as np

from simcore.config import VOCAB, Config

# The key/value cache's element types for sampling (SIM.generate's kv_cache).
KV_CACHE_DTYPES = {"float16": np.dtype(np.float16), "float32": np.dtype(np.float32)}


def check_sampling_args(labels, temperature, top_k, n_classes):
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.size == 0:
        raise ValueError(f"labels must be a non-empty 1-D sequence of class ids, got shape {list(labels.shape)}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise TypeError(f"labels must be integers, got dtype {labels.dtype}")
    if labels.min() < 0 or labels.max() >= n_classes:
        raise ValueError(f"labels must lie in 0..{n_classes - 1}, got {labels.min()}..{labels.max()}")
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature >= 0):
        raise ValueError(f"temperature must be a finite number >= 0, got {temperature!r}")
    if top_k is not None and not (isinstance(top_k, int) and 1 <= top_k <= VOCAB):
        raise ValueError(f"top_k must be an integer in 1..{VOCAB}, got {top_k!r}")
    return labels.astype(np.uint8)


def check_completion_args(images, rows, labels, guidance, cfg: Config):
    """SIM.complete's images, rows, labels and guidance, checked: (images uint8 [N, S, S],
    rows int, labels uint8 [N] or None (no class: the model's null class), guidance float).
    labels may be one class id for every image."""
    S = cfg.image_size
    if not isinstance(images, np.ndarray):
        raise TypeError(f"images must be a numpy array of shape [N, {S}, {S}], got {type(images).__name__}")
    if images.ndim != 3 or images.shape[1:] != (S, S) or images.shape[0] == 0:
        raise ValueError(f"images must have shape [N, {S}, {S}] with N >= 1, got {list(images.shape)}")
    if images.dtype != np.uint8:
        if not np.issubdtype(images.dtype, np.integer):
            raise TypeError(f"images must be uint8 pixels 0..255, got dtype {images.dtype}")
        if images.min() < 0 or images.max() > 255:
            raise ValueError(f"images must hold pixels 0..255, got {images.min()}..{images.max()}")
    if isinstance(rows, bool) or not isinstance(rows, numbers.Integral) or not 0 <= rows <= S:
        raise ValueError(f"rows must be an integer in 0..{S} (the given rows at the top), got {rows!r}")
    n = images.shape[0]
    if labels is None:
        if not cfg.null_class:
            raise ValueError("this model has no null class (Config.null_class), so it cannot complete "
                             "without a class: give labels")
        if guidance is not None and guidance != 1:
            raise ValueError(f"guidance {guidance!r} needs labels: without a class there is nothing "
                             "to lean towards (leave guidance out, or give labels)")
        guidance = 1.0
    else:
        if isinstance(labels, numbers.Integral) and not isinstance(labels, bool):
            labels = [labels] * n
        labels = check_sampling_args(labels, 1.0, None, cfg.n_classes)
        if len(labels) != n:
            raise ValueError(f"labels has {len(labels)} class ids for {n} images")
    return np.ascontiguousarray(images, dtype=np.uint8), int(rows), labels, check_guidance(guidance, cfg)


# SIM.generate's guidance for a model with a null class, when none is given. Chosen by
# the judge: benchmarks/results/*/ablation-*.md.
DEFAULT_GUIDANCE = 2.0


def check_guidance(guidance, cfg: Config) -> float:
    """guidance as a float: None -> the model's default; otherwise a finite number >= 0,
    and other than 1 only for a model with a null class."""
    if guidance is None:
        return DEFAULT_GUIDANCE if cfg.null_class else 1.0
    if isinstance(guidance, bool) or not (isinstance(guidance, numbers.Real) and math.isfinite(guidance)
                                          and guidance >= 0):
        raise ValueError(f"guidance must be a finite number >= 0, got {guidance!r}")
    if guidance != 1 and not cfg.null_class:
        raise ValueError(f"guidance {guidance} needs a model trained with a null class "
                         "(Config.null_class); this one has none, so only 1 (its own distribution)")
    return float(guidance)


def guide(logits: np.ndarray, n_out: int, guidance: float) -> None:
    """Classifier-free guidance, in place: logits [2 n_out, V] holds the images' rows with
    their labels, then the same images' rows with the null class; the first half becomes
    null + guidance * (label - null). Nothing happens at guidance 1 (no second half)."""
    if guidance == 1.0:
        return
    cond, null = logits[:n_out], logits[n_out:2 * n_out]
    cond -= null
    cond *= guidance
    cond += null
