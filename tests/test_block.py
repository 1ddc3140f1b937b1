"""The transformer block in C (csrc/block.c), against a float64 NumPy block: its forward
pass, every gradient by finite differences, the accumulate-twice rule, sampling's
one-position embedding, and the binding's checks."""
import numpy as np
import pytest
from test_kernels import F32, assert_close, numgrad, rand, ref_attention, ref_mlp, ref_rmsnorm

import simcore  # noqa: F401  (registers the default BLAS)
from simcore import _kernels as K

pytestmark = pytest.mark.usefixtures("at_every_isa")


def block_weights(rng, C, H, norm):
    """(attn_norm, wq, wk, wv, wo, mlp_norm, w1, w2) in K.BLOCK_TENSORS' order."""
    gain = (lambda: (1 + rand(rng, C, scale=0.3))) if norm else (lambda: None)
    return (gain(), *(rand(rng, C, C, scale=C ** -0.5) for _ in range(4)), gain(),
            rand(rng, C, H, scale=C ** -0.5), rand(rng, H, C, scale=H ** -0.5))


def ref_block(x, w, nh):
    """The block in float64: x + attention(norm1(x)) wo, then + MLP(norm2(.))."""
    attn_norm, wq, wk, wv, wo, mlp_norm, w1, w2 = w
    xn = x if attn_norm is None else ref_rmsnorm(x, attn_norm)
    att = ref_attention(xn @ wq, xn @ wk, xn @ wv, nh)[0]
    xmid = x + att @ wo
    return xmid + ref_mlp(xmid if mlp_norm is None else ref_rmsnorm(xmid, mlp_norm), w1, w2)


def run_forward(x, w, nh):
    B, T, C = x.shape
    H = w[6].shape[1]
    acts = np.empty(K.block_acts_size(w[0] is not None, B, T, C, H, nh), F32)
    scratch = np.empty(K.block_scratch_size(B, T, C, H, nh, K.get_num_threads()), F32)
    out = np.empty_like(x)
    K.block_forward(out, acts, scratch, x, w, nh)
    return out, acts, scratch


def f64(w):
    return tuple(None if a is None else a.astype(np.float64) for a in w)


@pytest.mark.parametrize("norm", [True, False])
@pytest.mark.parametrize("B,T,C,H,NH", [(1, 1, 4, 4, 1), (2, 7, 8, 12, 2), (2, 70, 16, 24, 4),
                                        (1, 130, 12, 20, 3)])
def test_block_forward_matches_the_float64_block(norm, B, T, C, H, NH):
    rng = np.random.default_rng(B * T + C)
    x, w = rand(rng, B, T, C), block_weights(rng, C, H, norm)
    out, _, _ = run_forward(x, w, NH)
    assert_close(out, ref_block(x.astype(np.float64), f64(w), NH), rtol=2e-5)


@pytest.mark.parametrize("norm", [True, False])
def test_block_backward_matches_finite_differences_and_twice_doubles(norm):
    B, T, C, H, NH = 2, 5, 8, 12, 2
    rng = np.random.default_rng(11)
    x, w = rand(rng, B, T, C), block_weights(rng, C, H, norm)
    g = rand(rng, B, T, C)  # d loss / d out
    _, acts, scratch = run_forward(x, w, NH)
    x64, w64 = x.astype(np.float64), f64(w)

    def with_tensor(i):
        return lambda v: ref_block(x64, w64[:i] + (v,) + w64[i + 1:], NH)
    want_w = [None if a is None else numgrad(with_tensor(i), a, g) for i, a in enumerate(w64)]
    want_x = numgrad(lambda v: ref_block(v, w64, NH), x64, g)
    grads = tuple(None if a is None else np.zeros_like(a) for a in w)
    for times in (1, 2):
        dx = g.copy()  # in: d out; back: d x
        K.block_backward(dx, grads, scratch, x, acts, w, NH)
        assert_close(dx, want_x, rtol=1e-4)
        for got, ref in zip(grads, want_w):
            if ref is not None:
                assert_close(got, times * ref, rtol=1e-4)


def test_block_decode_is_the_forward_pass_one_position_at_a_time():
    """The same block, with a float32 cache, gives block_forward's rows bit for bit
    apart from the order of the attention sums: within float32 rounding."""
    B, T, C, H, NH = 3, 20, 16, 24, 2
    rng = np.random.default_rng(5)
    x, w = rand(rng, B, T, C), block_weights(rng, C, H, True)
    full, _, _ = run_forward(x, w, NH)
    kc, vc = (np.zeros(s, F32) for s in K.kv_cache_shapes(B, T, C, NH))
    scratch = np.empty(K.block_decode_scratch_size(B, C, H, kc.shape[2] * K.KV_BLOCK, K.get_num_threads()), F32)
    for t in range(T):
        row = np.ascontiguousarray(x[:, t])
        K.block_decode(row, kc, vc, scratch, w, t)
        assert_close(row, full[:, t], rtol=1e-5)


@pytest.mark.parametrize("above,classes", [(False, False), (True, False), (True, True), (False, True)])
def test_embedding_step_is_the_training_embedding_at_one_position_bit_for_bit(above, classes):
    B, T, C, side, n_cls = 4, 12, 8, 3, 5
    rng = np.random.default_rng(3)
    tokens = rng.integers(0, 256, (B, T)).astype(np.uint8)
    tokens[:, 0] = rng.integers(0, n_cls, B)
    wte, wab, wcl, pe = rand(rng, 256, C), rand(rng, 256, C), rand(rng, n_cls, C), rand(rng, T, C)
    full = np.empty((B, T, C), F32)
    K.embedding_forward(full, tokens, wte, pe)
    if above:
        K.embedding_above_forward(full, tokens, wab, side - 1)
    if classes:
        K.embedding_class_forward(full, tokens, wcl)
    labels = np.ascontiguousarray(tokens[:, 0]) if classes else None
    for t in range(T):
        x = np.empty((B, C), F32)
        up = np.ascontiguousarray(tokens[:, t - (side - 1)]) if above and t >= side - 1 else None
        K.embedding_step(x, np.ascontiguousarray(tokens[:, t]), up, labels, wte, pe[t],
                         wab if up is not None else None, wcl if classes else None)
        np.testing.assert_array_equal(x, full[:, t])


def test_embedding_step_checks_its_arguments():
    rng = np.random.default_rng(0)
    wte, pe, wcl = rand(rng, 256, 8), rand(rng, 8), rand(rng, 3, 8)
    tok, x = np.zeros(2, np.uint8), np.empty((2, 8), F32)
    with pytest.raises(ValueError, match="both arrays or both None"):
        K.embedding_step(x, tok, tok, None, wte, pe, None, None)
    with pytest.raises(ValueError, match="both arrays or both None"):
        K.embedding_step(x, tok, None, tok, wte, pe, None, None)
    with pytest.raises(ValueError, match=r"labels\[1\] = 3 is not a class"):
        K.embedding_step(x, tok, None, np.array([0, 3], np.uint8), wte, pe, None, wcl)
    with pytest.raises(ValueError, match=r"pe_t: expected shape \[8\]"):
        K.embedding_step(x, tok, None, None, wte, pe[:4], None, None)
    with pytest.raises(ValueError, match="x must not overlap"):
        K.embedding_step(wte[:2], tok, None, None, wte, pe, None, None)


def test_block_kernels_check_their_arguments():
    B, T, C, H, NH = 2, 5, 8, 12, 2
    rng = np.random.default_rng(1)
    x, w = rand(rng, B, T, C), block_weights(rng, C, H, True)
    out, acts, scratch = run_forward(x, w, NH)
    grads = tuple(np.zeros_like(a) for a in w)
    with pytest.raises(TypeError, match="tuple of 8"):
        K.block_forward(out, acts, scratch, x, w[:7], NH)
    with pytest.raises(ValueError, match="both be arrays or both None"):
        K.block_forward(out, acts, scratch, x, (None,) + w[1:], NH)
    with pytest.raises(ValueError, match=r"acts: expected shape"):
        K.block_forward(out, acts[:-1], scratch, x, w, NH)
    with pytest.raises(ValueError, match="scratch: needs"):
        K.block_forward(out, acts, scratch[:10], x, w, NH)
    with pytest.raises(ValueError, match="not divisible by n_heads"):
        K.block_forward(out, acts, scratch, x, w, 3)
    with pytest.raises(ValueError, match="xout must not overlap x"):
        K.block_forward(x, acts, scratch, x, w, NH)
    with pytest.raises(ValueError, match=r"w1: expected shape \[8, \?\]"):
        K.block_forward(out, acts, scratch, x, w[:6] + (rand(rng, 4, H), w[7]), NH)
    with pytest.raises(ValueError, match="exactly when the gains are"):
        K.block_backward(out, (None,) + grads[1:], scratch, x, acts, w, NH)
    with pytest.raises(ValueError, match=r"d w2: expected shape \[12, 8\]"):
        K.block_backward(out, grads[:7] + (np.zeros((8, 12), F32),), scratch, x, acts, w, NH)
    with pytest.raises(ValueError, match="must not overlap"):
        K.block_backward(out, grads[:1] + (grads[2],) + grads[2:], scratch, x, acts, w, NH)
