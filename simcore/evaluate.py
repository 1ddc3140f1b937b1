"""Test-set likelihood in bits per dimension, overall and per class.

    python -m simcore.evaluate --checkpoint runs/guided       # its newest checkpoint
    python -m simcore.evaluate --pretrained                   # the model shipped in the package

bits/dim = total nats over the 783 predicted pixels / (784 * ln 2): the label
in pixel 0 is given, and every image counts all 784 of its dimensions.
"""
from __future__ import annotations

import math
import sys

import numpy as np

import simcore
from simcore import cli, data
from simcore.progress import Progress


def bits_per_dim(nats: float, n_images: int, seq_len: int) -> float:
    return nats / (n_images * seq_len * math.log(2))


def evaluate(model, tokens: np.ndarray, batch_size: int = 64, progress: bool = False,
             desc: str = "eval") -> dict:
    """bits/dim of `tokens` [N, T] (label in token 0), overall and per class."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    tokens = model.check_tokens(tokens, min_len=2)
    N, T = tokens.shape
    nats = np.empty(N)
    bar = Progress(N, desc, "img", enabled=progress)
    for i in range(0, N, batch_size):
        nats[i:i + batch_size] = model.nll_per_image(tokens[i:i + batch_size])
        bar.update(min(batch_size, N - i))
    if progress:
        bar.close()
    labels = tokens[:, 0]
    classes = [int(c) for c in np.unique(labels)]
    per_class_nats = {c: float(nats[labels == c].sum()) for c in classes}
    per_class_images = {c: int((labels == c).sum()) for c in classes}
    per_class = {c: bits_per_dim(per_class_nats[c], per_class_images[c], T) for c in classes}
    return {"bits_per_dim": bits_per_dim(nats.sum(), N, T), "n_images": int(N),
            "per_class": per_class, "nats": float(nats.sum()),
            "per_class_nats": per_class_nats, "per_class_images": per_class_images}


def main(argv=None) -> int:
    ap = cli.ArgumentParser(prog="python -m simcore.evaluate", description=__doc__.split("\n\n")[0],
                            formatter_class=cli.HelpFormatter)
    cli.add_model_choice(ap)
    ap.add_argument("--data", default=None,
                    help="folder with the IDX files (else $SIMCORE_DATA, the cache, a download)")
    ap.add_argument("--dataset", default="mnist", choices=["mnist", "fashion-mnist"])
    ap.add_argument("--batch-size", type=int, default=64, help="images per forward pass")
    ap.add_argument("--limit", type=int, default=None, help="only the first N test images")
    ap.add_argument("--threads", type=int, default=None, help="default: $OMP_NUM_THREADS, else one per core")
    args = ap.parse_args(argv)
    try:
        simcore.check_environment()
        if args.threads is not None:
            simcore.set_threads(args.threads)
        if args.limit is not None and args.limit < 1:
            raise ValueError(f"--limit must be >= 1, got {args.limit}")
        if args.pretrained and args.dataset != "mnist":
            raise ValueError(f"--pretrained is a model of MNIST digits, not of {args.dataset}")
        model = cli.chosen_model(args)
        images, labels = data.load_split(args.dataset, "test", data_dir=args.data)
        if images.shape[1:] != (model.cfg.image_size, model.cfg.image_size):
            raise ValueError(f"the {args.dataset} test images are {images.shape[1]}x{images.shape[2]} "
                             f"but the model was trained on {model.cfg.image_size}x{model.cfg.image_size}")
        tokens = data.to_tokens(images, labels)[:args.limit]
        res = evaluate(model, tokens, args.batch_size, progress=True, desc="test")
    except (ValueError, TypeError, OSError, MemoryError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"test bits/dim {res['bits_per_dim']:.4f} over {res['n_images']} images")
    for c, b in res["per_class"].items():
        print(f"  class {c}: {b:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
