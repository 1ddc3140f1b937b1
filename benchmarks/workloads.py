"""What is measured: the benchmarked model configurations, their FLOP counts, random
input tokens, and the sgemm products (the model's shapes and square ones) with the
sgemm and torch.mm peaks that MFU is measured against.
"""
from __future__ import annotations

import numpy as np
import paths  # noqa: F401  (before simcore: the checkout when simcore is not installed)
from timing import summary, time_calls

from simcore import _kernels
from simcore.config import VOCAB, Config

# name -> (config, batch size). T = 784 tokens per image for the real sizes.
CONFIGS = {
    "small": (Config.preset("small"), 16),
    "medium": (Config(d_model=256, d_hidden=1024, n_layers=6, n_heads=8), 16),
    "original": (Config.preset("original"), 32),
    # --quick: tiny sizes so a smoke run takes seconds; one of each norm/head kind,
    # so both FLOP formulas and both code paths run.
    "tiny": (Config(d_model=32, d_hidden=64, n_layers=2, n_heads=2, image_size=8), 4),
    "tiny-mlp": (Config.preset("original", d_model=32, d_hidden=64, n_layers=2, image_size=8), 4),
}


def describe(cfg: Config, batch: int | None = None) -> str:
    """'d128 h512 L4 H4 rmsnorm/linear T784 B16', for tables."""
    s = (f"d{cfg.d_model} h{cfg.d_hidden} L{cfg.n_layers} H{cfg.n_heads} "
         f"{cfg.norm}/{cfg.head} T{cfg.seq_len}")
    return s + (f" B{batch}" if batch else "")


# ---- FLOPs ------------------------------------------------------------------------

def forward_flops_per_token(cfg: Config, T: int | None = None) -> float:
    """Matmul FLOPs of one forward pass per token (a multiply-add counts 2).

    With d = d_model, h = d_hidden, T = tokens per sequence (784 for 28x28):

      per layer    q, k, v, o projections   4 * 2*d*d             = 8 d^2
                   MLP w1 and w2            2 * 2*d*h             = 4 d h
                   causal attention         QK^T and AV: 2 * 2*d per earlier
                                            position, T/2 of them
                                            on average            = 2 T d
      head         linear                   2 d 256
                   mlp                      2 d h + 2 h 256

      forward per token = n_layers * (8 d^2 + 4 d h + 2 T d) + head

    Not counted: embedding, norms, softmax, SiLU, loss and AdamW, all O(d) per
    token. T defaults to the full sequence (cfg.seq_len).
    """
    d, h, L = cfg.d_model, cfg.d_hidden, cfg.n_layers
    T = cfg.seq_len if T is None else T
    head = 2 * d * VOCAB if cfg.head == "linear" else 2 * d * h + 2 * h * VOCAB
    return L * (8 * d * d + 4 * d * h + 2 * T * d) + head


def train_flops_per_step(cfg: Config, batch: int) -> float:
    """One training step = 3 x forward (the backward pass does two matmuls,
    dX and dW, per forward matmul), over batch * T tokens."""
    return 3 * batch * cfg.seq_len * forward_flops_per_token(cfg)


# ---- inputs -------------------------------------------------------------------------

def random_tokens(cfg: Config, batch: int, seed: int = 0) -> np.ndarray:
    """uint8 [B, T]: a class label in pixel 0, random intensities after it
    (the kernels' cost does not depend on the values)."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, VOCAB, size=(batch, cfg.seq_len), dtype=np.uint8)
    tokens[:, 0] = rng.integers(0, cfg.n_classes, size=batch)
    return tokens


# ---- sgemm ----------------------------------------------------------------------------

def sgemm_shapes(cfg: Config, batch: int, squares=(256, 512, 1024, 2048)) -> list[dict]:
    """Square products, then the model's own: N = B*T rows, C = d_model, H = d_hidden."""
    N, C, H = batch * cfg.seq_len, cfg.d_model, cfg.d_hidden
    shapes = [dict(name=f"square {s}", M=s, K=s, N=s, trans_a=False) for s in squares]
    shapes += [
        dict(name=f"x @ wq [{N},{C}]x[{C},{C}]", M=N, K=C, N=C, trans_a=False),
        dict(name=f"x @ w1 [{N},{C}]x[{C},{H}]", M=N, K=C, N=H, trans_a=False),
        dict(name=f"h @ w2 [{N},{H}]x[{H},{C}]", M=N, K=H, N=C, trans_a=False),
        dict(name=f"x^T @ dy [{C},{N}]x[{N},{H}]", M=C, K=N, N=H, trans_a=True),
    ]
    return shapes


def time_sgemm(shape: dict, warmup: int, repeats: int, budget: float | None) -> dict:
    """GFLOP/s of simcore's sgemm (its threads, the BLAS it was pointed at)."""
    M, K, N, ta = shape["M"], shape["K"], shape["N"], shape["trans_a"]
    rng = np.random.default_rng(0)
    a = rng.standard_normal((K, M) if ta else (M, K), dtype=np.float32)
    b = rng.standard_normal((K, N), dtype=np.float32)
    out = np.empty((M, N), np.float32)
    s = summary(time_calls(lambda: _kernels.sgemm(out, a, b, ta), warmup, repeats, budget))
    return dict(shape, seconds=s, gflops=2.0 * M * N * K / s["median"] / 1e9)


def sgemm_peak(squares, warmup: int, repeats: int, budget: float | None = None) -> dict:
    """The best measured sgemm GFLOP/s over square sizes: the ceiling for MFU."""
    sweep = [time_sgemm(dict(name=f"square {s}", M=s, K=s, N=s, trans_a=False),
                        warmup, repeats, budget) for s in squares]
    return {"gflops": max(r["gflops"] for r in sweep), "sweep": sweep}


def torch_mm_peak(torch, squares, warmup: int, repeats: int, budget: float | None = None) -> dict:
    """The same for torch.mm (PyTorch's own BLAS) at its current thread count."""
    sweep = []
    for s in squares:
        a, b = torch.randn(s, s), torch.randn(s, s)
        out = torch.empty(s, s)
        t = summary(time_calls(lambda: torch.mm(a, b, out=out), warmup, repeats, budget))
        sweep.append({"name": f"square {s}", "seconds": t, "gflops": 2.0 * s ** 3 / t["median"] / 1e9})
    return {"gflops": max(r["gflops"] for r in sweep), "sweep": sweep}
