"""Each C kernel against a float64 NumPy reference and finite differences.

Forward kernels are compared with a float64 NumPy implementation of the formula
at the top of their C file. Backward kernels are compared with central finite
differences of that float64 reference (loss = sum(g * f(x)) for a random g),
and must *add* into their gradient buffers: calling twice doubles them.
"""
import numpy as np
import pytest

import simcore  # noqa: F401  (registers the default BLAS)
from simcore import _kernels as K

# every test here runs once per vector level this CPU supports (conftest.py), except
# those marked one_level (nothing they check depends on the level): they run once
pytestmark = pytest.mark.usefixtures("at_every_isa")

F32 = np.float32


def rand(rng, *shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(F32)


def numgrad(f, x, g, eps=1e-6):
    """d/dx sum(g * f(x)) by central differences, x float64 (copied)."""
    x = x.astype(np.float64).copy()
    grad = np.zeros_like(x)
    flat, gflat = x.reshape(-1), grad.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + eps
        up = np.sum(g * f(x))
        flat[i] = old - eps
        down = np.sum(g * f(x))
        flat[i] = old
        gflat[i] = (up - down) / (2 * eps)
    return grad


def assert_close(got, want, rtol=1e-5, atol=1e-6):
    """Max error relative to the reference's scale."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape
    scale = max(np.abs(want).max(initial=0.0), atol)
    err = np.abs(got - want).max(initial=0.0) / scale
    assert err < rtol, f"max relative error {err:.3g} >= {rtol:.3g}"


# ---- float64 references ------------------------------------------------------------

def ref_posenc(T, C, side):
    pe = np.zeros((T, C))
    half = C // 2
    for t in range(T):
        for part, pos in enumerate((t // side, t % side)):
            for i in range(half // 2):
                f = 10000.0 ** (-2 * i / half)
                pe[t, part * half + 2 * i] = np.sin(pos * f)
                pe[t, part * half + 2 * i + 1] = np.cos(pos * f)
    return pe


def ref_rmsnorm(x, w):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + 1e-5) * w


def ref_silu(x):
    return x / (1.0 + np.exp(-x))


def ref_mlp(x, w1, w2):
    return ref_silu(x @ w1) @ w2


def ref_attention(q, k, v, nh):
    """Naive causal attention with the full T x T matrix; returns (out, lse)."""
    B, T, C = q.shape
    d = C // nh
    out = np.zeros((B, T, C))
    lse = np.zeros((B, nh, T))
    mask = np.tril(np.ones((T, T), bool))
    for h in range(nh):
        sl = slice(h * d, (h + 1) * d)
        s = q[:, :, sl] @ k[:, :, sl].transpose(0, 2, 1) / np.sqrt(d)
        s = np.where(mask, s, -np.inf)
        mx = s.max(-1, keepdims=True)
        e = np.exp(s - mx)
        lse[:, h] = (mx + np.log(e.sum(-1, keepdims=True)))[..., 0]
        out[:, :, sl] = (e / e.sum(-1, keepdims=True)) @ v[:, :, sl]
    return out, lse


def ref_xent(logits, tokens):
    z = logits[:, :-1].astype(np.float64)
    mx = z.max(-1, keepdims=True)
    lse = mx[..., 0] + np.log(np.exp(z - mx).sum(-1))
    tgt = tokens[:, 1:].astype(np.int64)
    picked = np.take_along_axis(z, tgt[..., None], -1)[..., 0]
    return lse - picked


# ---- BLAS --------------------------------------------------------------------------

@pytest.mark.one_level
@pytest.mark.parametrize("ta,tb", [(False, False), (True, False), (False, True), (True, True)])
def test_sgemm_row_major_matches_numpy_for_every_transpose(ta, tb):
    rng = np.random.default_rng(0)
    M, N, Kd = 5, 7, 3
    a = rand(rng, Kd, M) if ta else rand(rng, M, Kd)
    b = rand(rng, N, Kd) if tb else rand(rng, Kd, N)
    c = rand(rng, M, N)
    want = 2.0 * ((a.T if ta else a) @ (b.T if tb else b)).astype(np.float64) + 0.5 * c
    K.sgemm(c, a, b, trans_a=ta, trans_b=tb, alpha=2.0, beta=0.5)
    assert_close(c, want)


# ---- embedding ---------------------------------------------------------------------

@pytest.mark.parametrize("T,C,side", [(784, 128, 28), (10, 8, 4), (1, 4, 1), (30, 12, 5)])
def test_position_encoding_matches_formula(T, C, side):
    pe = np.empty((T, C), F32)
    K.posenc(pe, side)
    assert_close(pe, ref_posenc(T, C, side), rtol=1e-6)


@pytest.mark.one_level
def test_position_encoding_rejects_width_not_multiple_of_four():
    with pytest.raises(ValueError, match="multiple of 4"):
        K.posenc(np.empty((4, 6), F32), 2)


def test_embedding_forward_adds_token_row_and_position():
    rng = np.random.default_rng(1)
    B, T, C = 3, 7, 8
    tokens = rng.integers(0, 256, (B, T)).astype(np.uint8)
    wte, pe = rand(rng, 256, C), rand(rng, 9, C)
    out = np.empty((B, T, C), F32)
    K.embedding_forward(out, tokens, wte, pe)
    assert_close(out, wte[tokens].astype(np.float64) + pe[:T])


def test_embedding_backward_accumulates_repeated_tokens_and_twice_doubles():
    rng = np.random.default_rng(2)
    B, T, C = 2, 9, 4
    tokens = rng.integers(0, 3, (B, T)).astype(np.uint8)  # many repeats
    g = rand(rng, B, T, C)
    want = np.zeros((256, C))
    np.add.at(want, tokens.reshape(-1), g.reshape(-1, C).astype(np.float64))
    dwte = np.zeros((256, C), F32)
    K.embedding_backward(dwte, g, tokens)
    assert_close(dwte, want)
    K.embedding_backward(dwte, g, tokens)
    assert_close(dwte, 2 * want)


@pytest.mark.parametrize("T", [1, 5, 6, 13])
def test_pixel_above_embedding_adds_the_row_shift_back_and_scatters_back(T):
    """shift 5 (a 6-wide image): positions t >= 5 get wab[tokens[t - 5]], the first row
    nothing; backward scatters dout[t] into row tokens[t - 5], accumulating."""
    rng = np.random.default_rng(17)
    B, C, shift = 2, 8, 5
    tokens = rng.integers(0, 4, (B, T)).astype(np.uint8)  # few values: rows repeat
    wab, x0 = rand(rng, 256, C), rand(rng, B, T, C)
    out = x0.copy()
    K.embedding_above_forward(out, tokens, wab, shift)
    want = x0.astype(np.float64)
    for t in range(shift, T):
        want[:, t] += wab[tokens[:, t - shift]]
    assert_close(out, want)
    dout, dwab = rand(rng, B, T, C), np.zeros((256, C), F32)
    K.embedding_above_backward(dwab, dout, tokens, shift)
    K.embedding_above_backward(dwab, dout, tokens, shift)
    want = np.zeros((256, C))
    for b in range(B):
        for t in range(shift, T):
            want[tokens[b, t - shift]] += 2 * dout[b, t]
    assert_close(dwab, want)


@pytest.mark.parametrize("B,T,C", [(1, 1, 4), (3, 7, 8), (5, 40, 33), (4, 300, 100)])
def test_class_embedding_adds_the_label_row_everywhere_and_sums_back(B, T, C):
    """out[b, t] += wcl[tokens[b, 0]] at every t; backward adds sum_t dout[b, t] into the
    label's row, accumulating (images share labels: their rows collide); C = 33 and 100
    leave a partial channel chunk, and 4 x 300 x 100 takes the threaded path."""
    rng = np.random.default_rng(18)
    tokens = rng.integers(0, 256, (B, T)).astype(np.uint8)
    tokens[:, 0] = rng.integers(0, 3, B)  # labels of a 3-row table, some repeated
    wcl, x0 = rand(rng, 3, C), rand(rng, B, T, C)
    out = x0.copy()
    K.embedding_class_forward(out, tokens, wcl)
    assert_close(out, x0.astype(np.float64) + wcl[tokens[:, 0]][:, None, :])
    dout, dwcl = rand(rng, B, T, C), np.zeros((3, C), F32)
    K.embedding_class_backward(dwcl, dout, tokens)
    K.embedding_class_backward(dwcl, dout, tokens)
    want = np.zeros((3, C))
    np.add.at(want, tokens[:, 0], 2 * dout.astype(np.float64).sum(axis=1))
    assert_close(dwcl, want)


@pytest.mark.one_level
def test_class_embedding_refuses_a_label_outside_its_table():
    tokens = np.zeros((2, 5), np.uint8)
    tokens[1, 0] = 3
    out, wcl = np.zeros((2, 5, 4), F32), np.zeros((3, 4), F32)
    with pytest.raises(ValueError, match=r"tokens\[1, 0\] = 3 is not a class of the 3-row class table"):
        K.embedding_class_forward(out, tokens, wcl)
    with pytest.raises(ValueError, match="not a class"):
        K.embedding_class_backward(wcl, out, tokens)
    with pytest.raises(ValueError, match="sequence length must be positive"):
        K.embedding_class_backward(wcl, np.zeros((2, 0, 4), F32), np.zeros((2, 0), np.uint8))
    assert not wcl.any() and not out.any()


# ---- rmsnorm -----------------------------------------------------------------------

@pytest.mark.parametrize("N,C", [(1, 4), (5, 12), (33, 128)])
def test_rmsnorm_forward_matches_reference(N, C):
    rng = np.random.default_rng(3)
    x, w = rand(rng, N, C), rand(rng, C)
    out, rstd = np.empty((N, C), F32), np.empty(N, F32)
    K.rmsnorm_forward(out, rstd, x, w)
    assert_close(out, ref_rmsnorm(x.astype(np.float64), w.astype(np.float64)))
    assert_close(rstd, 1 / np.sqrt(np.mean(x.astype(np.float64) ** 2, -1) + 1e-5))


def test_rmsnorm_backward_matches_finite_differences_and_twice_doubles():
    rng = np.random.default_rng(4)
    N, C = 4, 6
    x, w, g = rand(rng, N, C), rand(rng, C), rand(rng, N, C)
    out, rstd = np.empty((N, C), F32), np.empty(N, F32)
    K.rmsnorm_forward(out, rstd, x, w)
    dx, dw = np.zeros((N, C), F32), np.zeros(C, F32)
    K.rmsnorm_backward(dx, dw, g, x, w, rstd)
    x64, w64 = x.astype(np.float64), w.astype(np.float64)
    assert_close(dx, numgrad(lambda v: ref_rmsnorm(v, w64), x64, g), rtol=1e-4)
    assert_close(dw, numgrad(lambda v: ref_rmsnorm(x64, v), w64, g), rtol=1e-4)
    K.rmsnorm_backward(dx, dw, g, x, w, rstd)
    assert_close(dx, 2 * numgrad(lambda v: ref_rmsnorm(v, w64), x64, g), rtol=1e-4)


# ---- linear ------------------------------------------------------------------------

@pytest.mark.parametrize("N,Cin,Cout", [(1, 1, 1), (7, 5, 3), (64, 33, 50), (65, 33, 50),
                                        (130, 64, 256)])
@pytest.mark.parametrize("beta", [0.0, 1.0, 0.5])
def test_linear_forward_matches_reference_on_both_paths(N, Cin, Cout, beta):
    # N <= 64 with beta 0 or 1 runs the register-tiled kernel, the rest BLAS (linear.c)
    rng = np.random.default_rng(4)
    x, w, out = rand(rng, N, Cin), rand(rng, Cin, Cout), rand(rng, N, Cout)
    want = beta * out.astype(np.float64) + x.astype(np.float64) @ w.astype(np.float64)
    K.linear_forward(out, x, w, beta)
    assert_close(out, want)


@pytest.mark.parametrize("N,Cin,Cout", [(1, 1, 1), (7, 5, 3), (130, 64, 256)])
def test_linear_forward_and_backward_match_reference(N, Cin, Cout):
    rng = np.random.default_rng(5)
    x, w, g = rand(rng, N, Cin), rand(rng, Cin, Cout), rand(rng, N, Cout)
    x64, w64, g64 = (a.astype(np.float64) for a in (x, w, g))
    out = rand(rng, N, Cout)
    prev = out.astype(np.float64)
    K.linear_forward(out, x, w, 1.0)  # beta = 1 accumulates (the residual add)
    assert_close(out, prev + x64 @ w64)
    K.linear_forward(out, x, w)
    assert_close(out, x64 @ w64)
    dx, dw = np.zeros((N, Cin), F32), np.zeros((Cin, Cout), F32)
    for times in (1, 2):
        K.linear_backward(dx, dw, g, x, w)
        assert_close(dx, times * g64 @ w64.T)
        assert_close(dw, times * x64.T @ g64)


# ---- SiLU and MLP ------------------------------------------------------------------

def test_silu_forward_and_backward_match_reference():
    rng = np.random.default_rng(6)
    x = rand(rng, 1000, scale=4.0)
    g = rand(rng, 1000)
    out = np.empty_like(x)
    K.silu_forward(out, x)
    assert_close(out, ref_silu(x.astype(np.float64)))
    dx = np.zeros_like(x)
    K.silu_backward(dx, g, x)
    s = 1 / (1 + np.exp(-x.astype(np.float64)))
    assert_close(dx, g * s * (1 + x * (1 - s)))


@pytest.mark.parametrize("N,C,H,Cout", [(3, 4, 6, 4), (5, 8, 16, 11), (1, 1, 1, 1)])
def test_mlp_backward_matches_finite_differences_and_twice_doubles(N, C, H, Cout):
    rng = np.random.default_rng(7)
    x, w1, w2 = rand(rng, N, C), rand(rng, C, H), rand(rng, H, Cout)
    g = rand(rng, N, Cout)
    out, hpre, hact = np.empty((N, Cout), F32), np.empty((N, H), F32), np.empty((N, H), F32)
    K.mlp_forward(out, hpre, hact, x, w1, w2)
    x64, w164, w264 = (a.astype(np.float64) for a in (x, w1, w2))
    assert_close(out, ref_mlp(x64, w164, w264))
    dx, dw1, dw2 = np.zeros_like(x), np.zeros_like(w1), np.zeros_like(w2)
    dh, hs = np.empty((N, H), F32), np.empty((N, H), F32)
    want = [numgrad(lambda v: ref_mlp(v, w164, w264), x64, g),
            numgrad(lambda v: ref_mlp(x64, v, w264), w164, g),
            numgrad(lambda v: ref_mlp(x64, w164, v), w264, g)]
    for times in (1, 2):
        K.mlp_backward(dx, dw1, dw2, dh, hs, g, x, hpre, w1, w2)
        for got, ref in zip((dx, dw1, dw2), want):
            assert_close(got, times * ref, rtol=1e-4)


# ---- attention ---------------------------------------------------------------------

ATTN_SHAPES = [  # (B, T, C, NH): T=1, partial blocks, H=1 and H>1, odd d_head
    (1, 1, 8, 1), (2, 5, 12, 3), (1, 64, 32, 1), (2, 70, 20, 2), (1, 130, 48, 1),
    (3, 129, 24, 4), (1, 200, 36, 3),
]


def attention_buffers(B, T, C, NH):
    scratch = np.empty(K.attention_scratch_size(T, C, NH, K.get_num_threads()), F32)
    return np.empty((B, T, C), F32), np.empty((B, NH, T), F32), scratch


@pytest.mark.parametrize("B,T,C,NH", ATTN_SHAPES)
def test_attention_forward_matches_naive_softmax(B, T, C, NH):
    rng = np.random.default_rng(8)
    q, k, v = (rand(rng, B, T, C) for _ in range(3))
    out, lse, scratch = attention_buffers(B, T, C, NH)
    K.attention_forward(out, lse, scratch, q, k, v, NH)
    want, want_lse = ref_attention(*(a.astype(np.float64) for a in (q, k, v)), NH)
    assert_close(out, want, rtol=2e-5)
    assert_close(lse, want_lse, rtol=2e-6)


def attention_grads(B, T, C, NH, seed=9):
    rng = np.random.default_rng(seed)
    q, k, v, g = (rand(rng, B, T, C) for _ in range(4))
    out, lse, scratch = attention_buffers(B, T, C, NH)
    K.attention_forward(out, lse, scratch, q, k, v, NH)
    grads = [np.zeros_like(q) for _ in range(3)]
    K.attention_backward(*grads, scratch, g, q, k, v, out, lse, NH)
    return (q, k, v, g), grads, (out, lse, scratch)


@pytest.mark.parametrize("B,T,C,NH", [(1, 1, 4, 1), (2, 5, 6, 2), (1, 67, 6, 1)])
def test_attention_backward_matches_finite_differences(B, T, C, NH):
    (q, k, v, g), (dq, dk, dv), _ = attention_grads(B, T, C, NH)
    q64, k64, v64 = (a.astype(np.float64) for a in (q, k, v))
    f = lambda qq, kk, vv: ref_attention(qq, kk, vv, NH)[0]  # noqa: E731
    want = [numgrad(lambda x: f(x, k64, v64), q64, g), numgrad(lambda x: f(q64, x, v64), k64, g),
            numgrad(lambda x: f(q64, k64, x), v64, g)]
    for got, ref in zip((dq, dk, dv), want):
        assert_close(got, ref, rtol=1e-4, atol=backward_scale(want))


def backward_scale(grads) -> float:
    """The scale errors in dq, dk and dv are measured against: the largest of the three.
    Where a gradient is zero analytically (T = 1: softmax over one key), the kernel
    returns the float32 rounding noise of dS = P (dP - D), ~1e-7 of |dout| |v|; it
    is exactly 0 only when dP and D happen to be summed in the same order."""
    return max(np.abs(x).max() for x in grads)


def ref_attention_backward(q, k, v, g, nh):
    """Analytic float64 gradients of naive causal attention (checked by the
    finite-difference test above on small shapes; used here on larger ones)."""
    B, T, C = q.shape
    d = C // nh
    dq, dk, dv = np.zeros_like(q), np.zeros_like(k), np.zeros_like(v)
    mask = np.tril(np.ones((T, T), bool))
    for h in range(nh):
        sl = slice(h * d, (h + 1) * d)
        s = np.where(mask, q[:, :, sl] @ k[:, :, sl].transpose(0, 2, 1) / np.sqrt(d), -np.inf)
        p = np.exp(s - s.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        dv[:, :, sl] = p.transpose(0, 2, 1) @ g[:, :, sl]
        dp = g[:, :, sl] @ v[:, :, sl].transpose(0, 2, 1)
        ds = p * (dp - (dp * p).sum(-1, keepdims=True)) / np.sqrt(d)
        dq[:, :, sl] = ds @ k[:, :, sl]
        dk[:, :, sl] = ds.transpose(0, 2, 1) @ q[:, :, sl]
    return dq, dk, dv


@pytest.mark.one_level
def test_reference_attention_backward_agrees_with_finite_differences():
    rng = np.random.default_rng(10)
    q, k, v, g = (rng.standard_normal((1, 6, 4)) for _ in range(4))
    dq, dk, dv = ref_attention_backward(q, k, v, g, 2)
    f = lambda qq, kk, vv: ref_attention(qq, kk, vv, 2)[0]  # noqa: E731
    assert_close(dq, numgrad(lambda x: f(x, k, v), q, g), rtol=1e-7)
    assert_close(dk, numgrad(lambda x: f(q, x, v), k, g), rtol=1e-7)
    assert_close(dv, numgrad(lambda x: f(q, k, x), v, g), rtol=1e-7)


@pytest.mark.parametrize("B,T,C,NH", ATTN_SHAPES)
def test_attention_backward_matches_float64_reference(B, T, C, NH):
    (q, k, v, g), grads, _ = attention_grads(B, T, C, NH)
    want = ref_attention_backward(*(a.astype(np.float64) for a in (q, k, v, g)), NH)
    for got, ref in zip(grads, want):
        assert_close(got, ref, rtol=5e-5, atol=backward_scale(want))


def test_attention_backward_twice_doubles():
    B, T, C, NH = 2, 70, 8, 2
    (q, k, v, g), grads, (out, lse, scratch) = attention_grads(B, T, C, NH)
    once = [x.copy() for x in grads]
    K.attention_backward(*grads, scratch, g, q, k, v, out, lse, NH)
    for got, ref in zip(grads, once):
        assert_close(got, 2 * ref.astype(np.float64), rtol=1e-6)


def test_attention_result_does_not_depend_on_thread_count():
    B, T, C, NH = 3, 100, 16, 2
    rng = np.random.default_rng(11)
    q, k, v = (rand(rng, B, T, C) for _ in range(3))
    before = K.get_num_threads()
    results = []
    try:
        for n in (1, 2):
            K.set_num_threads(n)
            out, lse, scratch = attention_buffers(B, T, C, NH)
            K.attention_forward(out, lse, scratch, q, k, v, NH)
            results.append(out)
    finally:
        K.set_num_threads(before)
    np.testing.assert_array_equal(results[0], results[1])


# ---- cross-entropy -----------------------------------------------------------------

@pytest.mark.parametrize("B,T", [(1, 2), (3, 17)])
def test_xent_forward_and_backward_match_reference(B, T):
    rng = np.random.default_rng(12)
    logits = rand(rng, B, T, 256, scale=3.0)
    tokens = rng.integers(0, 256, (B, T)).astype(np.uint8)
    losses, lse = np.empty((B, T - 1), F32), np.empty((B, T), F32)
    K.xent_forward(losses, lse, logits, tokens)
    assert_close(losses, ref_xent(logits, tokens), rtol=1e-6)
    scale = 1.0 / (B * (T - 1))
    dlogits = np.zeros_like(logits)
    K.xent_backward(dlogits, logits, lse, tokens, scale)
    z = logits.astype(np.float64)
    p = np.exp(z - z.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    want = p.copy()
    want[:, :-1][np.arange(B)[:, None], np.arange(T - 1)[None], tokens[:, 1:]] -= 1
    want[:, -1] = 0  # the last position predicts nothing
    assert_close(dlogits, want * scale, rtol=1e-5)
    K.xent_backward(dlogits, logits, lse, tokens, scale)
    assert_close(dlogits, 2 * want * scale, rtol=1e-5)


# ---- AdamW -------------------------------------------------------------------------

def test_grad_sumsq_matches_numpy():
    rng = np.random.default_rng(13)
    g = rand(rng, 100_001)
    assert K.grad_sumsq(g) == pytest.approx(np.sum(g.astype(np.float64) ** 2), rel=1e-12)


def test_adamw_matches_torch_formula_over_several_steps():
    rng = np.random.default_rng(14)
    n = 1000
    p = rand(rng, n)
    m, v = np.zeros(n, F32), np.zeros(n, F32)
    p64, m64, v64 = p.astype(np.float64), np.zeros(n), np.zeros(n)
    lr, b1, b2, eps, wd, gs = 1e-2, 0.9, 0.95, 1e-8, 0.1, 0.5
    for t in range(1, 4):
        g = rand(rng, n)
        K.adamw(p, m, v, g, lr, b1, b2, eps, wd, gs, t)
        g64 = g.astype(np.float64) * gs
        p64 *= 1 - lr * wd
        m64 = b1 * m64 + (1 - b1) * g64
        v64 = b2 * v64 + (1 - b2) * g64 ** 2
        p64 -= lr / (1 - b1 ** t) * m64 / (np.sqrt(v64) / np.sqrt(1 - b2 ** t) + eps)
        assert_close(p, p64, rtol=1e-6)
        assert_close(m, m64, rtol=1e-6)
        assert_close(v, v64, rtol=1e-6)


def ref_muon(p, buf, g, lr, mom, wd, gs, steps=5):
    """Muon in float64, written as Keller Jordan's reference: Nesterov momentum,
    Newton-Schulz on the wide orientation, scale sqrt(max(1, fan_out / fan_in))."""
    g = g * gs
    buf = mom * buf + g
    x = g + mom * buf
    x = x / (np.linalg.norm(x) + 1e-7)
    tall = x.shape[0] > x.shape[1]
    if tall:
        x = x.T
    for _ in range(steps):
        a = x @ x.T
        x = 3.4445 * x + (-4.7750 * a + 2.0315 * a @ a) @ x
    if tall:
        x = x.T
    scale = np.sqrt(max(1.0, p.shape[1] / p.shape[0]))
    return p * (1 - lr * wd) - lr * scale * x, buf


@pytest.mark.parametrize("R, Cc", [(8, 24), (24, 8), (16, 16), (1, 5), (37, 129)])
def test_muon_matches_float64_reference_over_several_steps(R, Cc):
    rng = np.random.default_rng(15)
    p, buf = rand(rng, R, Cc), np.zeros((R, Cc), F32)
    p64, buf64 = p.astype(np.float64), np.zeros((R, Cc))
    scratch = np.empty(K.muon_scratch_size(R, Cc), F32)
    lr, mom, wd, gs = 0.02, 0.95, 0.1, 0.5
    for _ in range(3):
        g = rand(rng, R, Cc)
        K.muon(p, buf, g, scratch, lr, mom, wd, gs)
        p64, buf64 = ref_muon(p64, buf64, g.astype(np.float64), lr, mom, wd, gs)
        assert_close(buf, buf64, rtol=1e-6)
        assert_close(p, p64, rtol=1e-5, atol=1e-6)


def test_muon_update_is_nearly_orthogonal_whatever_the_gradient_scale():
    """The point of Muon: the step's singular values all land near 1 (NS5 keeps them in
    about [0.7, 1.2]), however large or small the gradient is."""
    rng = np.random.default_rng(16)
    for gscale in (1e-4, 1.0, 1e3):
        p, buf = np.zeros((32, 96), F32), np.zeros((32, 96), F32)
        scratch = np.empty(K.muon_scratch_size(32, 96), F32)
        K.muon(p, buf, rand(rng, 32, 96, scale=gscale), scratch, 1.0, 0.0, 0.0, 1.0)
        sv = np.linalg.svd(-p.astype(np.float64) / np.sqrt(3.0), compute_uv=False)
        assert 0.6 < sv.min() and sv.max() < 1.25, (gscale, sv.min(), sv.max())


@pytest.mark.one_level
def test_muon_rejects_small_scratch_bad_momentum_and_a_vector():
    z = np.zeros((4, 6), F32)
    small = np.empty(K.muon_scratch_size(4, 6) - 1, F32)
    with pytest.raises(ValueError, match="scratch: needs"):
        K.muon(z, z.copy(), z.copy(), small, 0.1, 0.9, 0.0, 1.0)
    ok = np.empty(K.muon_scratch_size(4, 6), F32)
    with pytest.raises(ValueError, match="momentum"):
        K.muon(z, z.copy(), z.copy(), ok, 0.1, 1.0, 0.0, 1.0)
    with pytest.raises(ValueError, match="lr"):
        K.muon(z, z.copy(), z.copy(), ok, float("nan"), 0.9, 0.0, 1.0)
    with pytest.raises(ValueError, match="expected shape"):
        K.muon(np.zeros(6, F32), np.zeros(6, F32), np.zeros(6, F32), ok, 0.1, 0.9, 0.0, 1.0)
    with pytest.raises(ValueError, match="must not overlap"):
        K.muon(z, z, z.copy(), ok, 0.1, 0.9, 0.0, 1.0)


# ---- the binding refuses bad arguments --------------------------------------------

@pytest.mark.one_level
def test_wrong_dtype_raises_type_error_naming_the_argument():
    x = np.zeros((4, 3), np.float64)
    with pytest.raises(TypeError, match="x: expected dtype float32"):
        K.linear_forward(np.zeros((4, 2), F32), x, np.zeros((3, 2), F32))


@pytest.mark.one_level
def test_non_array_raises_type_error():
    with pytest.raises(TypeError, match="numpy.ndarray"):
        K.linear_forward(np.zeros((4, 2), F32), [[1.0] * 3] * 4, np.zeros((3, 2), F32))


@pytest.mark.one_level
def test_wrong_shape_raises_value_error_with_expected_shape():
    with pytest.raises(ValueError, match=r"w: expected shape \[3, \?\]"):
        K.linear_forward(np.zeros((4, 2), F32), np.zeros((4, 3), F32), np.zeros((5, 2), F32))
    with pytest.raises(ValueError, match=r"out: expected shape \[4, 2\]"):
        K.linear_forward(np.zeros((4, 5), F32), np.zeros((4, 3), F32), np.zeros((3, 2), F32))


@pytest.mark.one_level
def test_non_contiguous_raises_value_error():
    x = np.zeros((4, 6), F32)[:, ::2]
    with pytest.raises(ValueError, match="C-contiguous"):
        K.linear_forward(np.zeros((4, 2), F32), x, np.zeros((3, 2), F32))


@pytest.mark.one_level
def test_read_only_output_raises_value_error():
    out = np.zeros((4, 2), F32)
    out.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        K.linear_forward(out, np.zeros((4, 3), F32), np.zeros((3, 2), F32))


@pytest.mark.one_level
def test_output_overlapping_input_raises_value_error():
    buf = np.zeros((4, 4), F32)
    with pytest.raises(ValueError, match="must not overlap"):
        K.linear_forward(buf, buf, np.zeros((4, 4), F32))


@pytest.mark.one_level
def test_two_outputs_overlapping_each_other_raise_value_error():
    N, C = 4, 8
    buf = np.zeros(N * C + C, F32)
    dx, dw = buf[:N * C].reshape(N, C), buf[N * C - C:N * C].reshape(C)  # dw is dx's last row
    with pytest.raises(ValueError, match="dx must not overlap dw"):
        K.rmsnorm_backward(dx, dw, np.ones((N, C), F32), np.ones((N, C), F32),
                           np.ones(C, F32), np.ones(N, F32))


@pytest.mark.one_level
def test_the_type_stub_lists_every_kernel_with_its_parameters():
    """simcore/_kernels.pyi (for editors) names each function of the binding with the
    same parameters, in the same order."""
    import ast
    import inspect
    import os
    stub = ast.parse(open(os.path.join(os.path.dirname(K.__file__), "_kernels.pyi")).read())
    stubbed = {f.name: [a.arg for a in f.args.args] for f in stub.body if isinstance(f, ast.FunctionDef)}
    public = {name: fn for name, fn in vars(K).items() if callable(fn) and not name.startswith("_")
              and getattr(fn, "__module__", None) == K.__name__}
    assert sorted(stubbed) == sorted(public)
    for name, fn in public.items():
        assert list(inspect.signature(fn).parameters) == stubbed[name], name


@pytest.mark.one_level
def test_attention_rejects_small_scratch_and_bad_heads():
    B, T, C, NH = 1, 10, 8, 2
    q = np.zeros((B, T, C), F32)
    out, lse, _ = attention_buffers(B, T, C, NH)
    with pytest.raises(ValueError, match="scratch"):
        K.attention_forward(out, lse, np.zeros(3, F32), q, q.copy(), q.copy(), NH)
    with pytest.raises(ValueError, match="not divisible"):
        K.attention_forward(out, np.zeros((B, 3, T), F32), np.zeros(10**5, F32),
                            q, q.copy(), q.copy(), 3)


@pytest.mark.one_level
def test_zero_batch_raises_value_error():
    with pytest.raises(ValueError, match="batch size must be positive"):
        K.embedding_forward(np.zeros((0, 4, 8), F32), np.zeros((0, 4), np.uint8),
                            np.zeros((256, 8), F32), np.zeros((4, 8), F32))


@pytest.mark.one_level
def test_adamw_rejects_step_zero():
    z = np.zeros(4, F32)
    with pytest.raises(ValueError, match="step"):
        K.adamw(z, z.copy(), z.copy(), z.copy(), 1e-3, 0.9, 0.95, 1e-8, 0.0, 1.0, 0)
