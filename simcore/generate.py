"""Draw digits from a checkpoint into a PNG grid (and a .npy file), or finish digits whose
top rows a PNG holds:

    python -m simcore.generate --pretrained --classes 0-9 --out digits.png   # the shipped model
    python -m simcore.generate --checkpoint runs/guided \\
        --classes 0-9 --per-class 8 --temperature 0.8 --seed 0 --out samples.png
    python -m simcore.generate --pretrained --complete in.png --rows 14 --out out.png   # no class
    python -m simcore.generate --pretrained --complete in.png --rows 14 --classes 3 --out out.png

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
from simcore.files import check_outputs, open_regular, write_atomic
from simcore.model import PRECISIONS, resolve_precision
from simcore.sampling import DEFAULT_GUIDANCE, KV_CACHE_DTYPES, check_guidance, check_sampling_args, guide

MAX_IMAGES = 10_000  # per generate CLI call: a grid of more is not a picture anyone looks at
MAX_PNG_BYTES = 64 * 2**20  # --complete's PNG


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


def completion_inputs(args):
    """--complete's PNG (its bytes, at most MAX_PNG_BYTES), --rows, and --classes unparsed
    (None: no class). What needs the model (its image size, its classes) is checked once
    it is read."""
    if args.rows is None:
        raise ValueError("--complete needs --rows (how many rows at the top of each digit are given)")
    if args.per_class is not None:
        raise ValueError("--per-class does not go with --complete: each digit of the PNG is completed once")
    with open_regular(args.complete) as f:
        data = f.read(MAX_PNG_BYTES + 1)
    if len(data) > MAX_PNG_BYTES:
        raise ValueError(f"--complete: {args.complete} is larger than {MAX_PNG_BYTES // 2**20} MB")
    if args.rows < 0:
        raise ValueError(f"--rows must be >= 0, got {args.rows}")
    return data, args.rows, args.classes


def main(argv=None) -> int:
    ap = cli.ArgumentParser(prog="python -m simcore.generate", description=__doc__.split("\n\n")[0],
                            formatter_class=cli.HelpFormatter)
    cli.add_model_choice(ap)
    ap.add_argument("--classes", default=None,
                    help="class ids, e.g. 0-9 or 1,4,7 (default 0-9); with --complete, one per digit of the "
                         "PNG or one for all (default: none, for a model with a null class)")
    ap.add_argument("--per-class", type=int, default=None,
                    help="images per class (one grid row per class; default 8)")
    ap.add_argument("--complete", default=None, metavar="PNG",
                    help="finish the digits of this PNG (one 28 x 28 digit, or a grid as this command "
                         "writes them) below their first --rows rows; the output has the same layout")
    ap.add_argument("--rows", type=int, default=None, help="with --complete: the rows given at the top")
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
        check_outputs({"--out": args.out, "--npy": args.npy},
                      inputs={"--checkpoint": args.checkpoint, "--complete": args.complete})
        if args.complete is None and args.rows is not None:
            raise ValueError("--rows goes with --complete (the PNG whose top rows are given)")
        if args.complete is not None:
            png, rows, labels = completion_inputs(args)
        model = cli.chosen_model(args)
        t0 = time.perf_counter()
        if args.complete is None:
            per_class = 8 if args.per_class is None else args.per_class
            classes = parse_classes(args.classes or "0-9", model.cfg.n_classes)
            if per_class < 1:
                raise ValueError(f"--per-class must be >= 1, got {per_class}")
            if len(classes) * per_class > MAX_IMAGES:
                raise ValueError(f"--per-class {per_class} x {len(classes)} classes = "
                                 f"{len(classes) * per_class:,} images; at most {MAX_IMAGES:,} per call")
            labels = np.repeat(classes, per_class)
            imgs = model.generate(labels, args.temperature, args.seed, args.top_k, progress=True,
                                  kv_cache=args.kv_cache, guidance=args.guidance, precision=args.precision)
            grid_rows, grid_cols = len(classes), per_class
        else:
            side = model.cfg.image_size
            if not 0 <= rows <= side:
                raise ValueError(f"--rows must lie in 0..{side}, got {rows}")
            try:
                given = images.read_grid(png, side=side)
            except ValueError as err:
                raise ValueError(f"--complete: {args.complete}: {err}") from None
            grid_rows, grid_cols = given.shape[:2]
            flat = given.reshape(-1, side, side)
            if len(flat) > MAX_IMAGES:
                raise ValueError(f"--complete: {args.complete} holds {len(flat):,} digits; at most "
                                 f"{MAX_IMAGES:,} per call")
            if labels is not None:
                labels = parse_classes(labels, model.cfg.n_classes)
                if len(labels) not in (1, len(flat)):
                    raise ValueError(f"--classes: {len(labels)} classes for the {len(flat)} digits of "
                                     f"{args.complete}: give one, or one per digit")
                labels = np.resize(labels, len(flat))
            imgs = model.complete(flat, rows, labels, args.temperature, args.guidance, args.seed, args.top_k,
                                  progress=True, kv_cache=args.kv_cache, precision=args.precision)
        dt = time.perf_counter() - t0
        images.save_grid(args.out, imgs, rows=grid_rows, cols=grid_cols)
        if args.npy:
            buf = io.BytesIO()
            np.save(buf, imgs)
            write_atomic(args.npy, buf.getvalue())
    except (ValueError, TypeError, OSError, MemoryError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}: {len(imgs)} images in {dt:.2f} s ({dt / len(imgs) * 1e3:.1f} ms/image)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
