"""Draw digits from a checkpoint into a PNG grid (and a .npy file):

    python -m simcore.generate --pretrained --classes 0-9 --out digits.png   # the shipped model
    python -m simcore.generate --checkpoint runs/guided \\
        --classes 0-9 --per-class 8 --temperature 0.8 --seed 0 --out samples.png

The sampler itself is ``SIM.generate`` (model.py: the key/value cache, one C call
per block per new pixel). Here are the command line and the two references the
tests and benchmarks hold it against: the original's method (``generate_full``,
a full forward pass per pixel) and a NumPy draw (``sample_from_logits``).
"""
from __future__ import annotations

import io
import sys
import time

import numpy as np

import simcore
from simcore import cli, images
from simcore.files import check_outputs, write_atomic
from simcore.model import PRECISIONS, resolve_precision
from simcore.sampling import DEFAULT_GUIDANCE, KV_CACHE_DTYPES, check_guidance, check_sampling_args, guide

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


def generate_full(model, labels, temperature: float = 1.0, seed=None, top_k: int | None = None,
                  n_pixels: int | None = None, guidance: float | None = None, prefix=None,
                  null_labels: bool = False) -> np.ndarray:
    """The original's method: a full forward pass over the prefix for every new
    pixel (two with guidance: with the labels and with the null class). For tests
    and benchmarks only (it is hundreds of times slower).
    prefix: tokens uint8 [N, P] given (a completion's pixels; its column 0 is ignored),
    sampling starts at pixel P. null_labels: the labels are the null class (a completion
    without a class; labels then only count the images).
    Returns tokens uint8 [N, T] (pixels past n_pixels+1 stay 0)."""
    cfg = model.cfg
    labels = check_sampling_args(labels, temperature, top_k, cfg.n_classes)
    if null_labels:
        labels = np.full(len(labels), cfg.n_classes, np.uint8)
    guidance = check_guidance(guidance, cfg)
    rng = np.random.default_rng(seed)
    T = cfg.seq_len
    steps = T - 1 if n_pixels is None else min(n_pixels, T - 1)
    tokens = np.zeros((len(labels), T), np.uint8)
    start = 0
    if prefix is not None:
        start = prefix.shape[1] - 1
        tokens[:, :start + 1] = prefix
    tokens[:, 0] = labels
    unknown = tokens.copy()
    n_out = len(labels)
    for t in range(start, steps):
        if guidance != 1.0:  # the same images, label unknown, below them
            unknown[:, 1:t + 1] = tokens[:, 1:t + 1]
            unknown[:, 0] = cfg.n_classes
            logits = np.concatenate([model.forward(tokens[:, :t + 1])[:, t],
                                     model.forward(unknown[:, :t + 1])[:, t]])
        else:
            logits = model.forward(tokens[:, :t + 1])[:, t]
        guide(logits, n_out, guidance)
        tokens[:, t + 1] = sample_from_logits(logits[:n_out], temperature, rng, top_k)
    return tokens


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
    ap = cli.ArgumentParser(prog="python -m simcore.generate", description=__doc__.split("\n\n")[0],
                            formatter_class=cli.HelpFormatter)
    cli.add_model_choice(ap)
    ap.add_argument("--classes", default="0-9", help="class ids, e.g. 0-9 or 1,4,7")
    ap.add_argument("--per-class", type=int, default=8, help="images per class (one grid row per class)")
    ap.add_argument("--temperature", type=float, default=1.0, help="0 = greedy")
    ap.add_argument("--top-k", type=int, default=None, help="sample only among the k most likely values")
    ap.add_argument("--seed", type=int, default=0, help="the draws (the same seed draws the same images)")
    ap.add_argument("--kv-cache", choices=["auto", *KV_CACHE_DTYPES], default="auto",
                    help="the key/value cache's precision: float16 streams half the bytes; float32 "
                         "reproduces the training forward pass exactly; auto is float16 on CPUs with "
                         "AVX2, AVX-512 or NEON (hardware half conversion), float32 on older ones")
    ap.add_argument("--guidance", type=float, default=None,
                    help="classifier-free guidance, for a model trained with a null class: 1 draws from "
                         "the model as it is, more leans towards the asked class (twice the work); "
                         f"default: {DEFAULT_GUIDANCE:g} for such a model, else 1")
    ap.add_argument("--precision", choices=list(PRECISIONS), default="float32",
                    help="the products' operands: bfloat16 rounds those of the projections, the MLP "
                         "and the head (needs AVX512_BF16); auto is bfloat16 where the CPU has it")
    ap.add_argument("--threads", type=int, default=None, help="default: $OMP_NUM_THREADS, else one per core")
    ap.add_argument("--out", default="samples.png", help="PNG grid to write")
    ap.add_argument("--npy", default=None, help="also write the raw uint8 images [N, S, S] to this .npy file")
    args = ap.parse_args(argv)
    try:
        simcore.check_environment()
        if args.threads is not None:
            simcore.set_threads(args.threads)
        resolve_precision(args.precision)  # a CPU without bf16 refused before the model is read
        # every output checked, and against the other and the checkpoint read, before the sampling
        check_outputs({"--out": args.out, "--npy": args.npy}, inputs={"--checkpoint": args.checkpoint})
        model = cli.chosen_model(args)
        classes = parse_classes(args.classes, model.cfg.n_classes)
        if args.per_class < 1:
            raise ValueError(f"--per-class must be >= 1, got {args.per_class}")
        if len(classes) * args.per_class > MAX_IMAGES:
            raise ValueError(f"--per-class {args.per_class} x {len(classes)} classes = "
                             f"{len(classes) * args.per_class:,} images; at most {MAX_IMAGES:,} per call")
        labels = np.repeat(classes, args.per_class)
        t0 = time.perf_counter()
        imgs = model.generate(labels, args.temperature, args.seed, args.top_k, progress=True,
                              kv_cache=args.kv_cache, guidance=args.guidance, precision=args.precision)
        dt = time.perf_counter() - t0
        images.save_grid(args.out, imgs, rows=len(classes), cols=args.per_class)
        if args.npy:
            buf = io.BytesIO()
            np.save(buf, imgs)
            write_atomic(args.npy, buf.getvalue())
    except (ValueError, TypeError, OSError, MemoryError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}: {len(labels)} images in {dt:.2f} s ({dt / len(labels) * 1e3:.1f} ms/image)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
