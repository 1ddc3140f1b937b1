"""Type stub of the compiled binding (simcore/_kernels.pyx) to csrc/: the signatures and
what each call does, for editors and type checkers.

Every array is a C-contiguous numpy.ndarray of the dtype named (F32 = float32, U8 =
uint8, F64 = float64) and of the shape the sizes imply; outputs come first, are
writeable, and share no byte with an input or with another output. A wrong type is a
TypeError, a wrong dtype a TypeError, a wrong shape, a read-only output or an overlap a
ValueError naming the argument. bf16=True (the product kernels): every product's
operands rounded to bfloat16, nearest even, the sums float32 (AVX512_BF16; a
RuntimeError elsewhere). Forward kernels write their outputs, except those
that say they add (the pixel-above and class embeddings, a beta of 1); backward
kernels add into their gradients (+=). Kernels run with the GIL released.
"""
from typing import Optional

import numpy as np

F32 = np.ndarray  # float32
U8 = np.ndarray   # uint8
F64 = np.ndarray  # float64

ISA_NAMES: tuple[str, ...]         # ("baseline", "avx2", "avx512", "neon"): index = SC_ISA_*
ISA_LEVELS: tuple[str, ...]        # this build's, lowest first: x86-64 ("baseline", "avx2",
                                   # "avx512"), AArch64 ("neon",), elsewhere ("baseline",)
MAX_THREADS: int                   # 4096
KV_BLOCK: int                      # 16 positions per key block of the cache

# ---- BLAS, threads, vector level (blas.c, parallel.c, dispatch.c) ----
def blas_set(fn: int, cblas: bool) -> None:
    """Register an sgemm function pointer (Fortran sgemm_ or cblas_sgemm)."""
def sgemm(out: F32, a: F32, b: F32, trans_a: bool = False, trans_b: bool = False,
          alpha: float = 1.0, beta: float = 0.0) -> None:
    """out[M, N] = alpha * op(a) @ op(b) + beta * out, through the registered BLAS."""
def bf16_supported() -> bool:
    """Whether this CPU has AVX512_BF16, which bgemm needs."""
def bf16_round(out: np.ndarray, x: F32) -> None:
    """out (uint16, x's shape) = bfloat16 bits of x, nearest even (NaN quiet, subnormals kept)."""
def bgemm(out: F32, a: F32, b: F32, trans_a: bool = False, trans_b: bool = False,
          alpha: float = 1.0, beta: float = 0.0) -> None:
    """out = alpha * bf16(op(a)) @ bf16(op(b)) + beta * out, float32 sums (AVX512_BF16)."""
def bf16_packed_shape(K: int, N: int) -> tuple[int, int]:
    """The uint32 shape of a weight [K, N] packed by bf16_pack: [K/2 rounded up, N]."""
def bf16_pack(out: np.ndarray, w: F32) -> None:
    """out = w packed once for many bf16 products (rows in pairs; AVX512_BF16)."""
def linear_forward_packed(out: F32, x: F32, packed: np.ndarray, beta: float = 0.0) -> None:
    """out = bf16(x) @ bf16(w) + beta * out (beta 0 or 1), w packed by bf16_pack."""
def get_num_threads() -> int: ...
def threading_layer() -> str:
    """"openmp", or "pthreads": simcore's own pool, in a build without OpenMP."""
def set_num_threads(n: int) -> None:
    """1..MAX_THREADS threads for simcore's own loops and large products."""
def isa_best() -> str:
    """The highest vector level this CPU runs."""
def isa_get() -> str:
    """The vector level the kernels run at."""
def isa_set(name: str) -> None:
    """Run at level `name`; ValueError above isa_best() or for a name not in ISA_LEVELS."""

# ---- embedding.c ----
def posenc(pe: F32, side: int) -> None:
    """pe[T, C] = the fixed 2-D sinusoidal position encoding (C % 4 == 0, T <= side * side)."""
def embedding_forward(out: F32, tokens: U8, wte: F32, pe: F32) -> None:
    """out[B, T, C] = wte[tokens] + pe[:T]; wte [256, C], tokens [B, T]."""
def embedding_backward(dwte: F32, dout: F32, tokens: U8) -> None:
    """dwte[256, C] += the rows of dout [B, T, C] scattered by token."""
def embedding_above_forward(out: F32, tokens: U8, wab: F32, shift: int) -> None:
    """out[b, t] += wab[tokens[b, t - shift]] for t >= shift (the pixel above the predicted one)."""
def embedding_above_backward(dwab: F32, dout: F32, tokens: U8, shift: int) -> None:
    """dwab[tokens[b, t - shift]] += dout[b, t] for t >= shift."""
def embedding_class_forward(out: F32, tokens: U8, wcl: F32) -> None:
    """out[b, t] += wcl[tokens[b, 0]] at every t (the label); ValueError for a label >= len(wcl)."""
def embedding_step(x: F32, tokens: U8, above: Optional[U8], labels: Optional[U8], wte: F32,
                   pe_t: F32, wab: Optional[F32], wcl: Optional[F32]) -> None:
    """Sampling's embedding at one position: x [N, C] = wte[tokens] + pe_t (+ wab[above])
    (+ wcl[labels]), the training pass's sum in its order."""
def embedding_class_backward(dwcl: F32, dout: F32, tokens: U8) -> None:
    """dwcl[tokens[b, 0]] += dout[b].sum(axis=0); ValueError for a label >= len(dwcl)."""

# ---- rmsnorm.c ----
def rmsnorm_forward(out: F32, rstd: F32, x: F32, w: F32) -> None:
    """out[N, C] = x * rstd * w, rstd[N] = 1 / sqrt(mean(x^2) + eps)."""
def rmsnorm_backward(dx: F32, dw: F32, dout: F32, x: F32, w: F32, rstd: F32) -> None:
    """dx[N, C] += ..., dw[C] += ... (rstd from the forward pass)."""

# ---- linear.c ----
def linear_forward(out: F32, x: F32, w: F32, beta: float = 0.0, bf16: bool = False) -> None:
    """out[N, Cout] = x[N, Cin] @ w[Cin, Cout] + beta * out."""
def linear_backward(dx: Optional[F32], dw: F32, dout: F32, x: F32, w: F32, bf16: bool = False) -> None:
    """dx += dout @ w.T (skipped when dx is None); dw += x.T @ dout."""

# ---- mlp.c ----
def silu_forward(out: F32, x: F32) -> None:
    """out = x * sigmoid(x), any shape."""
def silu_backward(dx: F32, dout: F32, x: F32) -> None:
    """dx += dout * silu'(x)."""
def mlp_forward(out: F32, h_pre: F32, h_act: F32, x: F32, w1: F32, w2: F32,
                beta: float = 0.0, bf16: bool = False) -> None:
    """h_pre[N, H] = x @ w1; h_act = silu(h_pre); out[N, Cout] = h_act @ w2 + beta * out."""
def mlp_backward(dx: F32, dw1: F32, dw2: F32, dh: F32, h_act: F32, dout: F32, x: F32,
                 h_pre: F32, w1: F32, w2: F32, bf16: bool = False) -> None:
    """dx, dw1, dw2 += the gradients; dh and h_act are [N, H] scratch."""

# ---- attention.c ----
def attention_scratch_size(T: int, C: int, n_heads: int, threads: int) -> int:
    """Floats of scratch attention_forward/backward need for `threads` threads."""
def attention_forward(out: F32, lse: F32, scratch: F32, q: F32, k: F32, v: F32,
                      n_heads: int, bf16: bool = False) -> None:
    """Causal attention: out[B, T, C] and lse[B, n_heads, T] from q, k, v [B, T, C]."""
def attention_backward(dq: F32, dk: F32, dv: F32, scratch: F32, dout: F32, q: F32, k: F32,
                       v: F32, out: F32, lse: F32, n_heads: int, bf16: bool = False) -> None:
    """dq, dk, dv += the gradients of causal attention (out, lse from the forward pass)."""

# ---- decode.c: one position of every sequence, with a key/value cache ----
# The caches (kcache, vcache) are both float32, or both float16 (half the bytes
# to stream; keys and values rounded to nearest even on the way in).
def kv_cache_shapes(B: int, Tmax: int, C: int, NH: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(kcache shape [B, NH, nb, d, KV_BLOCK], vcache shape [B, NH, nb * KV_BLOCK, d])."""
def kv_cache_write(kcache: np.ndarray, vcache: np.ndarray, k: F32, v: F32, pos: int) -> None:
    """Store k, v [B, C] as position pos of the caches; ValueError (nothing stored) if a
    float16 cache cannot hold a value (|x| >= 65520, inf, NaN)."""
def kv_cache_fill(kcache: np.ndarray, vcache: np.ndarray, k: F32, v: F32) -> None:
    """Store k, v [B, T, C] as positions 0..T-1 of the caches at once (the same elements as
    T calls of kv_cache_write); ValueError (nothing stored) if a float16 cache cannot hold a value."""
def attention_decode_scratch_size(T: int, threads: int) -> int: ...
def attention_decode(out: F32, scratch: F32, q: F32, kcache: np.ndarray, vcache: np.ndarray,
                     pos: int) -> None:
    """out[B, C] = attention of q [B, C] over cached positions 0..pos."""

# ---- block.c: one transformer block, for training and for sampling ----
BLOCK_TENSORS: tuple[str, ...]  # ("attn_norm", "wq", "wk", "wv", "wo", "mlp_norm", "w1", "w2")
BlockTuple = tuple[Optional[F32], F32, F32, F32, F32, Optional[F32], F32, F32]
def block_acts_size(has_norm: bool, B: int, T: int, C: int, H: int, n_heads: int) -> int:
    """Floats of one block's activations for B x T positions (csrc/block.c lays them out)."""
def block_scratch_size(B: int, T: int, C: int, H: int, n_heads: int, threads: int) -> int:
    """Floats of scratch block_forward / block_backward need for `threads` threads."""
def block_forward(xout: F32, acts: F32, scratch: F32, x: F32, weights: BlockTuple,
                  n_heads: int, bf16: bool = False) -> None:
    """xout [B, T, C] = the block applied to x [B, T, C]; acts keeps what backward needs.
    weights in BLOCK_TENSORS' order (SIM.layers[l].as_tuple()), the gains None without a norm."""
def block_backward(dx: F32, grads: BlockTuple, scratch: F32, x: F32, acts: F32,
                   weights: BlockTuple, n_heads: int, bf16: bool = False) -> None:
    """dx [B, T, C]: d loss / d xout in, d loss / d x out; grads += the weights' gradients."""
def block_prefill(xout: F32, kcache: np.ndarray, vcache: np.ndarray, acts: F32, scratch: F32,
                  x: F32, weights: BlockTuple) -> None:
    """Completion's prefill: xout [B, T, C] = the block (float32) applied to x [B, T, C], its
    keys and values stored as positions 0..T-1 of the caches; acts, scratch: block_acts_size
    and block_scratch_size floats."""
def block_decode_scratch_size(B: int, C: int, H: int, Tmax: int, threads: int) -> int: ...
PACKED_TENSORS: tuple[str, ...]
def block_decode(x: F32, kcache: np.ndarray, vcache: np.ndarray, scratch: F32,
                 weights: BlockTuple, pos: int, packed: Optional[tuple[np.ndarray, ...]] = None) -> None:
    """One block at position pos of every sequence: x [B, C] updated in place, the caches
    written at pos. weights as block_forward's; packed: PACKED_TENSORS by bf16_pack, or None."""

# ---- sample.c ----
def sample_tokens(out: U8, work: F64, logits: F32, u: F64, temperature: float,
                  top_k: int = 0) -> None:
    """out[b] = a draw from softmax(logits[b] / temperature) with the uniform u[b]
    (argmax at temperature 0; top_k > 0 keeps the k largest); work: [2 * V]."""

# ---- xent.c ----
def xent_forward(losses: F32, lse: F32, logits: F32, tokens: U8) -> None:
    """losses[B, T-1] = -log softmax(logits[:, :-1])[next token]; lse[B, T] for backward."""
def xent_backward(dlogits: F32, logits: F32, lse: F32, tokens: U8, scale: float) -> None:
    """dlogits[B, T, 256] += scale * (softmax - onehot(next token)) at t < T-1 (the last predicts nothing)."""

# ---- adamw.c ----
def grad_sumsq(g: F32) -> float:
    """Sum of squares (float64 accumulation)."""
def adamw(params: F32, m: F32, v: F32, grads: F32, lr: float, beta1: float, beta2: float,
          eps: float, weight_decay: float, grad_scale: float, step: int) -> None:
    """One AdamW step over flat arrays, gradients scaled by grad_scale; step is 1-based."""

# ---- muon.c ----
def muon_scratch_size(rows: int, cols: int) -> int:
    """Floats of scratch one muon call on a [rows, cols] matrix needs."""
def muon(params: F32, buf: F32, grads: F32, scratch: F32, lr: float, momentum: float,
         weight_decay: float, grad_scale: float, ns_steps: int = 5) -> None:
    """One Muon step on a 2-D matrix: Nesterov momentum in buf, orthogonalised by Newton-Schulz."""
