"""Sampling: class-conditional images, pixel by pixel, with a key/value cache.

    python -m simcore.generate --checkpoint runs/small \\
        --classes 0-9 --per-class 8 --temperature 0.8 --seed 0 --out samples.png

All requested images advance together: each new pixel costs one C call per
layer (csrc/decode.c: the block for one position of every image, with the
key/value cache), one for the head and one for the sampler, never a forward
pass over the whole sequence as the original did.
"""
from __future__ import annotations

import argparse
import math
import sys

import numpy as np

from simcore import _kernels as K
from simcore.config import VOCAB
from simcore.progress import Progress
from simcore.resources import check_fits

F32 = np.float32
MAX_IMAGES = 10_000  # per generate CLI call: a grid of more is not a picture anyone looks at


def sample_from_logits(logits: np.ndarray, temperature: float, rng: np.random.Generator,
                       top_k: int | None = None) -> np.ndarray:
    """One token per row of logits [N, V]: greedy when temperature == 0."""
    if temperature == 0:
        return logits.argmax(axis=1).astype(np.uint8)
    z = logits.astype(np.float64) / temperature
    if top_k is not None and top_k < z.shape[1]:
        kth = np.partition(z, -top_k, axis=1)[:, -top_k][:, None]
        z = np.where(z >= kth, z, -np.inf)
    z -= z.max(axis=1, keepdims=True)
    p = np.exp(z)
    c = np.cumsum(p, axis=1)
    u = rng.random(len(z))[:, None] * c[:, -1:]
    return np.minimum((c <= u).sum(axis=1), z.shape[1] - 1).astype(np.uint8)


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


def generate(model, labels, temperature: float = 1.0, seed=None, top_k: int | None = None,
             progress: bool = False) -> np.ndarray:
    """Sample one image per label with the key/value cache: uint8 [N, S, S]."""
    cfg, W = model.cfg, model.weights
    labels = check_sampling_args(labels, temperature, top_k, cfg.n_classes)
    rng = np.random.default_rng(seed)
    N, T, C, H = len(labels), cfg.seq_len, cfg.d_model, cfg.d_hidden
    kshape, vshape = K.kv_cache_shapes(N, T, C, cfg.n_heads)
    check_fits(4 * cfg.n_layers * (math.prod(kshape) + math.prod(vshape)),
               f"sampling {N:,} images (key/value caches)")
    caches = [(np.zeros(kshape, F32), np.zeros(vshape, F32)) for _ in range(cfg.n_layers)]
    blocks = [blk.decode_weights() for blk in model.layers]
    scratch = np.empty(K.block_decode_scratch_size(N, C, H, vshape[2], K.get_num_threads()), F32)
    x, h, rstd = np.empty((N, C), F32), np.empty((N, C), F32), np.empty(N, F32)
    hpre, hact, logits = np.empty((N, H), F32), np.empty((N, H), F32), np.empty((N, VOCAB), F32)
    u, work = np.zeros(N), np.empty(2 * VOCAB)
    seq = np.zeros((T, N), np.uint8)  # position-major: each step reads and writes a row
    seq[0] = labels

    bar = Progress(T - 1, "sampling", "px", enabled=progress)
    for t in range(T - 1):
        np.take(W["token_embedding"], seq[t], axis=0, out=x)
        x += model.pe[t]
        for (kc, vc), weights in zip(caches, blocks):
            K.block_decode(x, kc, vc, scratch, weights, t)
        model.head_logits(logits, x, h, rstd, hpre, hact)
        if temperature > 0:
            rng.random(out=u)  # the same draws as rng.random(N)
        K.sample_tokens(seq[t + 1], work, logits, u, float(temperature), top_k or 0)
        bar.update()
    if progress:
        bar.close()
    return finish_images(seq.T, cfg.image_size)


def generate_full(model, labels, temperature: float = 1.0, seed=None, top_k: int | None = None,
                  n_pixels: int | None = None) -> np.ndarray:
    """The original's method: a full forward pass over the prefix for every new
    pixel. For tests and benchmarks only (it is hundreds of times slower).
    Returns tokens uint8 [N, T] (pixels past n_pixels+1 stay 0)."""
    cfg = model.cfg
    labels = check_sampling_args(labels, temperature, top_k, cfg.n_classes)
    rng = np.random.default_rng(seed)
    T = cfg.seq_len
    steps = T - 1 if n_pixels is None else min(n_pixels, T - 1)
    tokens = np.zeros((len(labels), T), np.uint8)
    tokens[:, 0] = labels
    for t in range(steps):
        logits = model.forward(tokens[:, :t + 1])
        tokens[:, t + 1] = sample_from_logits(logits[:, t], temperature, rng, top_k)
    return tokens


def finish_images(tokens: np.ndarray, side: int) -> np.ndarray:
    """Tokens [N, T] -> images [N, S, S]; pixel 0 held the label, MNIST's is 0."""
    img = tokens.reshape(-1, side, side).copy()
    img[:, 0, 0] = 0
    return img


def parse_classes(text: str, n_classes: int) -> list[int]:
    """'0-9', '3', '1,4,7' or '0-4,8' -> list of class ids."""
    out = []
    try:
        for part in text.split(","):
            part = part.strip()
            if "-" in part:
                a, b = part.split("-")
                out += list(range(int(a), int(b) + 1))
            else:
                out.append(int(part))
    except ValueError:
        raise ValueError(f"--classes: cannot parse {text!r}; use e.g. 0-9 or 1,4,7") from None
    bad = [c for c in out if not 0 <= c < n_classes]
    if not out or bad:
        raise ValueError(f"--classes: classes must lie in 0..{n_classes - 1}, got {text!r}")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m simcore.generate", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--checkpoint", required=True,
                    help="a .safetensors checkpoint written by simcore.train, or a run's folder (its newest)")
    ap.add_argument("--classes", default="0-9", help="class ids, e.g. 0-9 or 1,4,7")
    ap.add_argument("--per-class", type=int, default=8, help="images per class (one grid row per class)")
    ap.add_argument("--temperature", type=float, default=1.0, help="0 = greedy")
    ap.add_argument("--top-k", type=int, default=None, help="sample only among the k most likely values")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default="samples.png", help="PNG grid to write")
    ap.add_argument("--npy", default=None, help="also write the raw uint8 images [N, S, S] to this .npy file")
    args = ap.parse_args(argv)
    import time

    import simcore
    from simcore import checkpoint, images
    from simcore.files import check_output_file
    try:
        simcore.check_environment()
        if args.threads is not None:
            simcore.set_threads(args.threads)
        # every output checked before the sampling, not after it
        check_output_file(args.out, "--out")
        if args.npy is not None:
            check_output_file(args.npy, "--npy")
        model = simcore.SIM.load(checkpoint.resolve(args.checkpoint), optimizer=False)
        classes = parse_classes(args.classes, model.cfg.n_classes)
        if args.per_class < 1:
            raise ValueError(f"--per-class must be >= 1, got {args.per_class}")
        if len(classes) * args.per_class > MAX_IMAGES:
            raise ValueError(f"--per-class {args.per_class} x {len(classes)} classes = "
                             f"{len(classes) * args.per_class:,} images; at most {MAX_IMAGES:,} per call")
        labels = np.repeat(classes, args.per_class)
        t0 = time.perf_counter()
        imgs = generate(model, labels, args.temperature, args.seed, args.top_k, progress=True)
        dt = time.perf_counter() - t0
        images.save_grid(args.out, imgs, rows=len(classes), cols=args.per_class)
        if args.npy:
            with open(args.npy, "wb") as f:
                np.save(f, imgs)
    except (ValueError, TypeError, OSError, MemoryError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}: {len(labels)} images in {dt:.2f} s ({dt / len(labels) * 1e3:.1f} ms/image)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
