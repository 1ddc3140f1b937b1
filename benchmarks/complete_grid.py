"""The README's picture of completions: top halves of real test digits, finished by the
pretrained model with their class and without one.

Four rows of N columns (the first test digit of each class 0..9, then the next ones):
  1. the real test digit;
  2. its top `rows` rows (what the model is given; the rest black);
  3. completed with its class (guidance 2, the model's default);
  4. completed without a class (the null class: the model guesses the digit from the rows).
Each column's two completions share one seed. Prints the time of the two completions.

    python benchmarks/complete_grid.py --out docs/completions.png      # MNIST from SIMCORE_DATA or the cache
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import paths  # noqa: F401  (simcore from the checkout when not installed)

import simcore
from simcore import data, images


def first_of_each_class(imgs: np.ndarray, labels: np.ndarray, n: int) -> np.ndarray:
    """Indices: the first test digit of each class in turn, then the next of each, ... (n in all)."""
    per_class = [np.flatnonzero(labels == c) for c in range(10)]
    return np.array([per_class[i % 10][i // 10] for i in range(n)])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="completions.png")
    ap.add_argument("--n", type=int, default=10, help="digits (columns)")
    ap.add_argument("--rows", type=int, default=14, help="rows given")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    model = simcore.SIM.pretrained()
    test_images, test_labels = data.load_split("mnist", "test", progress=False)
    pick = first_of_each_class(test_images, test_labels, args.n)
    real, labels = test_images[pick], test_labels[pick].astype(np.int64)
    given = real.copy()
    given[:, args.rows:] = 0
    t0 = time.perf_counter()
    with_class = model.complete(given, args.rows, labels, seed=args.seed)
    t1 = time.perf_counter()
    without = model.complete(given, args.rows, None, seed=args.seed)
    t2 = time.perf_counter()
    images.save_grid(args.out, np.concatenate([real, given, with_class, without]), rows=4, cols=args.n)
    print(f"wrote {args.out}: {args.n} test digits, {args.rows} rows given; completed with the class in "
          f"{t1 - t0:.2f} s (guidance 2), without in {t2 - t1:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
