"""Sampling's arguments, checked, and its guidance: the one place for both, used by
SIM.generate (the cached sampler), simcore.generate's reference sampler and CLI, and
the judge."""
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


def finish_images(tokens: np.ndarray, side: int) -> np.ndarray:
    """Tokens [N, T] -> images [N, S, S]; pixel 0 held the label, MNIST's is 0."""
    img = tokens.reshape(-1, side, side).copy()
    img[:, 0, 0] = 0
    return img


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
