"""bfloat16 (csrc/bf16.c): rounding to nearest even bit for bit against a NumPy
reference, and the bf16 product against float64 products of the rounded operands."""
import numpy as np
import pytest

import simcore
from simcore import _kernels as K

F32 = np.float32
needs_bf16 = pytest.mark.skipif(not K.bf16_supported(),
                                reason="this CPU has no bfloat16 dot products (AVX512_BF16)")


def ref_round(x: np.ndarray) -> np.ndarray:
    """bfloat16 bits of float32 x: add half an ulp of bf16 (less one, plus the kept
    lowest bit: ties to even) and keep the top 16 bits; a NaN keeps its top bits, quieted."""
    bits = x.astype(F32).view(np.uint32).astype(np.uint64)
    out = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
    nan = np.isnan(x)
    out[nan] = ((bits[nan] >> 16) | 0x40).astype(np.uint16)
    return out


def widen(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(F32)


def rounded(x: np.ndarray) -> np.ndarray:
    return widen(ref_round(x)).astype(np.float64)


def test_the_reference_rounds_ties_to_even_and_keeps_the_specials():
    one = np.uint32(0x3F800000)
    x = np.array([one | 0x8000, one | 0x18000, one | 0x7FFF, one | 0x8001], np.uint32).view(F32)
    assert list(ref_round(x)) == [0x3F80, 0x3F82, 0x3F80, 0x3F81]  # tie down, tie up, below, above
    specials = np.array([np.inf, -np.inf, 0.0, -0.0, 3.4028235e38], F32)
    assert list(ref_round(specials)) == [0x7F80, 0xFF80, 0x0000, 0x8000, 0x7F80]  # max rounds to inf
    assert np.isnan(widen(ref_round(np.array([np.nan], F32))))[0]


def test_bf16_round_is_the_reference_bit_for_bit():
    rng = np.random.default_rng(0)
    bits = rng.integers(0, 2 ** 32, 200_000, dtype=np.uint64).astype(np.uint32)  # every kind of float
    ties = (rng.integers(0, 2 ** 16, 1000, dtype=np.uint32) << 16) | 0x8000        # exact ties
    sub = rng.integers(0, 0x00800000, 1000, dtype=np.uint32)                       # subnormals
    special = np.array([0x7F800000, 0xFF800000, 0x7FC00000, 0xFFC00001, 0x7F800001, 0x7F7FFFFF,
                        0x00000001, 0x80000001, 0x007FFFFF, 0, 0x80000000], np.uint32)
    x = np.concatenate([bits, ties, sub, special]).view(F32)
    out = np.empty(x.shape, np.uint16)
    K.bf16_round(out, x)
    np.testing.assert_array_equal(out, ref_round(x))


@needs_bf16
@pytest.mark.parametrize("ta,tb", [(False, False), (False, True), (True, False), (True, True)])
@pytest.mark.parametrize("M,Kd,N", [(1, 1, 1), (8, 2, 32), (37, 13, 45), (9, 515, 33), (100, 1030, 70),
                                    (130, 64, 256), (37, 2101, 45)])  # the last: split along K when ta
def test_bgemm_is_the_float64_product_of_the_rounded_operands(ta, tb, M, Kd, N):
    """The rounded operands' products are exact in float32; only the float32 sums differ
    from float64, by a few ulps of the sum of the magnitudes."""
    rng = np.random.default_rng(M * 1000 + Kd + N)
    a = rng.standard_normal((Kd, M) if ta else (M, Kd)).astype(F32)
    b = rng.standard_normal((N, Kd) if tb else (Kd, N)).astype(F32)
    c = rng.standard_normal((M, N)).astype(F32)
    A, B = rounded(a), rounded(b)
    A, B = (A.T if ta else A), (B.T if tb else B)
    for alpha, beta in ((1.0, 0.0), (0.5, 0.25), (-2.0, 1.0)):
        out = c.copy()
        K.bgemm(out, a, b, ta, tb, alpha, beta)
        want = alpha * (A @ B) + beta * c.astype(np.float64)
        scale = np.abs(alpha) * (np.abs(A) @ np.abs(B)) + np.abs(beta * c)
        assert (np.abs(out - want) <= 1e-6 * Kd ** 0.5 * scale + 1e-30).all()


@needs_bf16
def test_bgemm_rounds_its_operands_where_float32_would_not():
    """1 + 2^-9 is not a bfloat16: rounded to 1 (a tie, to even), the product says so."""
    a = np.full((8, 2), 1 + 2 ** -9, F32)
    b = np.ones((2, 32), F32)
    out = np.empty((8, 32), F32)
    K.bgemm(out, a, b)
    assert (out == 2.0).all()


@needs_bf16
def test_bgemm_with_no_inner_dimension_scales_c_and_beta_zero_ignores_its_nan():
    c = np.full((3, 4), np.nan, F32)
    K.bgemm(c, np.zeros((3, 0), F32), np.zeros((0, 4), F32))
    assert (c == 0).all()
    c = np.ones((3, 4), F32)
    K.bgemm(c, np.zeros((3, 0), F32), np.zeros((0, 4), F32), beta=3.0)
    assert (c == 3).all()


@needs_bf16
@pytest.mark.parametrize("ta,Kd", [(False, 1100), (True, 1100), (True, 2600)])  # ta 2600: split along K
def test_bgemm_does_not_depend_on_the_thread_count(ta, Kd):
    rng = np.random.default_rng(1)
    M = 300 if Kd < 2600 else 70
    a, b = rng.standard_normal((M, Kd)).astype(F32), rng.standard_normal((Kd, 90)).astype(F32)
    if ta:
        a = np.ascontiguousarray(a.T)
    outs = []
    before = simcore.get_threads()
    try:
        for n in (1, 2, 3):
            simcore.set_threads(n)
            out = np.empty((M, 90), F32)
            K.bgemm(out, a, b, ta)
            outs.append(out)
    finally:
        simcore.set_threads(before)
    np.testing.assert_array_equal(outs[0], outs[1])


def test_bgemm_checks_its_arguments():
    a, b = np.zeros((4, 3), F32), np.zeros((5, 2), F32)
    if not K.bf16_supported():
        with pytest.raises(RuntimeError, match="AVX512_BF16"):
            K.bgemm(np.zeros((4, 2), F32), a, b)
        return
    with pytest.raises(ValueError, match="inner dimensions differ: 3 vs 5"):
        K.bgemm(np.zeros((4, 2), F32), a, b)
    with pytest.raises(ValueError, match=r"out: expected shape \[4, 2\]"):
        K.bgemm(np.zeros((2, 4), F32), a, b[:3])
    with pytest.raises(TypeError, match="dtype float32"):
        K.bgemm(np.zeros((4, 2), F32), a.astype(np.float64), b[:3])
    sq = np.zeros((4, 4), F32)
    with pytest.raises(ValueError, match="out must not overlap a"):
        K.bgemm(sq, sq, np.zeros((4, 4), F32))


def test_cpu_info_says_whether_the_cpu_has_bf16_and_a_capped_level_has_none():
    assert simcore.cpu_info()["bf16"] is K.bf16_supported()
    if "avx2" not in simcore.cpu_info()["supported"]:
        return
    before = simcore.get_isa()
    try:
        simcore.set_isa("avx2")  # stands for a CPU without AVX-512
        assert simcore.cpu_info()["bf16"] is False
        cfg = simcore.Config(d_model=16, d_hidden=32, n_layers=1, n_heads=2, image_size=4)
        with pytest.raises(ValueError, match="capped at avx2"):
            simcore.SIM(cfg, precision="bfloat16")
        assert simcore.SIM(cfg, precision="auto").precision == "float32"
    finally:
        simcore.set_isa(before)


# ---- the block and the model with bfloat16 products --------------------------------------

def r(a):
    """float64 copies of a's values rounded to bfloat16 (a made float32 first, as the
    kernels' inputs are)."""
    return rounded(np.asarray(a, F32))


def ref_attention_bf16(q, k, v, nh):
    """Causal attention with bf16 operands in both products, for T <= 64 (one block):
    S = bf16(q / sqrt(d)) bf16(k)^T, P = exp(S - rowmax) in full, out = bf16(P) bf16(v) / sum(P)."""
    B, T, C = q.shape
    d = C // nh
    out = np.zeros((B, T, C))
    mask = np.tril(np.ones((T, T), bool))
    for h in range(nh):
        sl = slice(h * d, (h + 1) * d)
        s = r(q[:, :, sl] * np.float32(1 / np.sqrt(np.float32(d)))) @ r(k[:, :, sl]).transpose(0, 2, 1)
        p = np.where(mask, np.exp(s - np.where(mask, s, -np.inf).max(-1, keepdims=True)), 0.0)
        out[:, :, sl] = (r(p) @ r(v[:, :, sl])) / p.sum(-1, keepdims=True)
    return out


def attention_bf16_refs(q, k, v, dout, nh, out, lse):
    """Float64 references of attention with bf16 operands in every product, as
    csrc/attention.c rounds them, for any T: forward in key blocks of 64 with the online
    softmax (P = exp(S - the running max), rounded per block, each block's part rescaled by
    exp(its max - the final max)); backward from the kernel's own out and lse (P = exp(S -
    lse), dS = P (dP - D) / sqrt(d)), D = rowsum(dout * out). Returns out and dq, dk, dv,
    each with the same stages left unrounded (to show the rounding matters)."""
    B, T, C = q.shape
    d, BK = C // nh, 64
    scale = np.float32(1 / np.sqrt(np.float32(d)))
    res = {name: [np.zeros((B, T, C)) for _ in range(4)] for name in ("bf16", "f64")}
    mask = np.tril(np.ones((T, T), bool))
    for h in range(nh):
        sl = slice(h * d, (h + 1) * d)
        for name, rr in (("bf16", r), ("f64", lambda a: np.asarray(a, np.float64))):
            qs = rr(q[:, :, sl] * scale)
            s = np.where(mask, qs @ rr(k[:, :, sl]).transpose(0, 2, 1), -np.inf)
            o, l, m = 0.0, 0.0, None
            blocks = [np.where(mask, s, -np.inf)[:, :, j0:j0 + BK].max(-1, keepdims=True)
                      for j0 in range(0, T, BK)]
            mfin = np.maximum.reduce(blocks)
            m = np.full_like(mfin, -np.inf)
            for jb, j0 in enumerate(range(0, T, BK)):
                m = np.maximum(m, blocks[jb])  # the running max after this block
                p = np.exp(s[:, :, j0:j0 + BK] - m)
                w = np.exp(m - mfin)
                o = o + w * (rr(p) @ rr(v[:, j0:j0 + BK, sl]))
                l = l + w * p.sum(-1, keepdims=True)
            res[name][0][:, :, sl] = o / l
            p = np.exp(s - lse[:, h, :, None].astype(np.float64))
            dp = rr(dout[:, :, sl]) @ rr(v[:, :, sl]).transpose(0, 2, 1)
            D = (dout[:, :, sl].astype(np.float64) * out[:, :, sl]).sum(-1, keepdims=True)
            ds = p * (dp - D) * np.float64(scale)
            res[name][1][:, :, sl] = rr(ds) @ rr(k[:, :, sl])
            res[name][2][:, :, sl] = rr(ds).transpose(0, 2, 1) @ rr(q[:, :, sl])
            res[name][3][:, :, sl] = rr(p).transpose(0, 2, 1) @ rr(dout[:, :, sl])
    return res["bf16"], res["f64"]


@needs_bf16
@pytest.mark.parametrize("B,T,C,NH", [(2, 141, 12, 4), (1, 130, 80, 2), (2, 64, 64, 2), (1, 200, 64, 1)])
def test_bf16_attention_forward_and_backward_are_the_float64_ones_of_rounded_operands(B, T, C, NH):
    """Several key blocks, a partial last one, odd T and odd head widths (d = 3, 40, 32,
    64): out, dq, dk, dv against float64 with the kernel's rounding, to 2e-4 of each
    tensor's largest value. A P or dS that float32 puts on the other side of a bf16 tie
    than float64 does moves a sum by about 2^-9 of one term, so a few ulps is no fair
    bound; left unrounded, the references are 10x and more further off (checked)."""
    rng = np.random.default_rng(T + C)
    q, k, v, dout = (rng.standard_normal((B, T, C)).astype(F32) for _ in range(4))
    out, lse = np.empty_like(q), np.empty((B, NH, T), F32)
    scratch = np.empty(K.attention_scratch_size(T, C, NH, K.get_num_threads()), F32)
    K.attention_forward(out, lse, scratch, q, k, v, NH, bf16=True)
    grads = [np.zeros_like(q) for _ in range(3)]
    K.attention_backward(*grads, scratch, dout, q, k, v, out, lse, NH, bf16=True)
    want, unrounded = attention_bf16_refs(q, k, v, dout, NH, out, lse)
    for got, w, u, name in zip([out, *grads], want, unrounded, ("out", "dq", "dk", "dv")):
        err = np.abs(got - w).max() / np.abs(w).max()
        assert err <= 2e-4, (name, err)
        assert np.abs(got - u).max() / np.abs(u).max() >= 10 * max(err, 1e-6), name


def test_bf16_attention_is_refused_where_the_cpu_has_no_bf16():
    q = np.zeros((1, 4, 8), F32)
    out, lse = np.empty_like(q), np.empty((1, 2, 4), F32)
    scratch = np.empty(K.attention_scratch_size(4, 8, 2, K.get_num_threads()), F32)
    if "avx2" not in simcore.cpu_info()["supported"] and K.bf16_supported():
        pytest.skip("no lower level to cap at")
    before = simcore.get_isa()
    try:
        if K.bf16_supported():
            simcore.set_isa("avx2")  # stands for a CPU without AVX-512
        with pytest.raises(RuntimeError, match="AVX512_BF16"):
            K.attention_forward(out, lse, scratch, q, q, q, 2, bf16=True)
    finally:
        simcore.set_isa(before)


def ref_block_bf16(x, w, nh, attention=ref_attention_bf16):
    """The float64 block with the operands of every product rounded to bfloat16, as
    block_forward(bf16=True) rounds them (the attention's too, unless another attention
    is given)."""
    from test_kernels import ref_rmsnorm, ref_silu
    attn_norm, wq, wk, wv, wo, mlp_norm, w1, w2 = w
    mm = lambda a, b: r(a) @ r(b)  # noqa: E731
    xn = x if attn_norm is None else ref_rmsnorm(x, attn_norm)
    att = attention(mm(xn, wq), mm(xn, wk), mm(xn, wv), nh)
    xmid = x + mm(att, wo)
    h = xmid if mlp_norm is None else ref_rmsnorm(xmid, mlp_norm)
    return xmid + mm(ref_silu(mm(h, w1)), w2)


@needs_bf16
@pytest.mark.parametrize("norm", [True, False])
def test_every_product_of_the_bf16_block_is_the_float64_product_of_its_rounded_operands(norm):
    """Stage by stage, each from the block's own float32 inputs to it (the arena's tensors,
    laid out as csrc/block.c says): q = bf16(xn1) bf16(wq), the attention with bf16
    operands in both its products, xmid = x + bf16(att) bf16(wo), hpre = bf16(xn2)
    bf16(w1), out = xmid + bf16(silu(hpre)) bf16(w2), each within float32's rounding of
    its sums. (Chained end to end in float64 instead, an ulp of difference upstream flips
    a bf16 rounding here and there, and softmax amplifies it: no fair oracle.)"""
    from test_block import block_weights
    from test_kernels import ref_rmsnorm, ref_silu
    rng = np.random.default_rng(4)
    B, T, C, H, NH = 2, 60, 16, 24, 4  # one attention block: the reference's softmax is exact
    N = B * T
    x, w = rng.standard_normal((B, T, C)).astype(F32), block_weights(rng, C, H, norm)
    out = np.empty_like(x)
    acts = np.empty(K.block_acts_size(norm, B, T, C, H, NH), F32)
    scratch = np.empty(K.block_scratch_size(B, T, C, H, NH, K.get_num_threads()), F32)
    K.block_forward(out, acts, scratch, x, w, NH, True)
    q, k, v, att, xmid = (acts[i * N * C:(i + 1) * N * C].reshape(B, T, C).astype(np.float64) for i in range(5))
    hpre = acts[5 * N * C:5 * N * C + N * H].reshape(B, T, H).astype(np.float64)
    end = 5 * N * C + N * H + B * NH * T  # after lse: xn1, xn2 with a norm
    xn1 = acts[end:end + N * C].reshape(B, T, C) if norm else x
    xn2 = acts[end + N * C:end + 2 * N * C].reshape(B, T, C) if norm else xmid
    if norm:
        assert_near(xn1, ref_rmsnorm(x.astype(np.float64), w[0]))
        assert_near(xn2, ref_rmsnorm(xmid, w[5]))
    for got, wi in ((q, 1), (k, 2), (v, 3)):
        assert_near(got, r(xn1) @ r(w[wi]))
    assert_near(att, ref_attention_bf16(q, k, v, NH))
    assert_near(xmid, x + r(att) @ r(w[4]))
    assert_near(hpre, r(xn2) @ r(w[6]))
    assert_near(out, xmid + r(ref_silu(hpre)) @ r(w[7]))


def assert_near(got, want, rtol=1e-6):
    """Within a few float32 ulps of the reference's scale."""
    got = np.asarray(got, np.float64)
    assert np.abs(got - want).max() <= rtol * np.abs(want).max()


@needs_bf16
def test_a_bf16_model_is_as_near_float64_as_pytorch_autocast_at_the_same_weights():
    """Logits, loss and every gradient of SIM(precision="bfloat16") against the float64
    PyTorch model, next to PyTorch's bf16 autocast of the same model: simcore's error is
    in the median over the tensors at most 1.25x autocast's (and no tensor's over 3x), and far
    above float32's (the rounding is really there)."""
    torch = pytest.importorskip("torch")
    import torch_reference as ref
    from test_model import PARITY_CONFIGS, random_tokens, randomize_weights
    cfg = PARITY_CONFIGS["small-like"]
    m16, m32 = simcore.SIM(cfg, seed=3, precision="bfloat16"), simcore.SIM(cfg, seed=3)
    randomize_weights(m16, seed=13)
    m32.params[...] = m16.params
    tokens = random_tokens(np.random.default_rng(5), 3, cfg.seq_len)
    weights = {n: w.copy() for n, w in m16.weights.items()}
    loss64, logits64, grads64 = ref.torch_grads(cfg, weights, tokens, dtype=torch.float64)
    model = ref.TorchSIM(cfg, weights, dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits_ac = model(tokens).float()
        loss_ac = model.loss_from_logits(logits_ac, tokens)
    loss_ac.backward()
    grads_ac = {n: p.grad.double().numpy() for n, p in model.params.items()}
    rel = lambda a, b: np.abs(a - b).max() / np.abs(b).max()  # noqa: E731
    for m, name in ((m16, "bf16"), (m32, "f32")):
        m.forward_backward(tokens)
    assert rel(m16.forward(tokens), logits64) <= 2 * rel(logits_ac.detach().double().numpy(), logits64)
    assert rel(m32.forward(tokens), logits64) < 0.01 * rel(m16.forward(tokens), logits64)
    ratios = {}
    for n in grads64:
        e16, eac = rel(m16.grads[n], grads64[n]), rel(grads_ac[n], grads64[n])
        ratios[n] = e16 / eac
        assert e16 < 0.05, (n, e16)
    # tensor by tensor the two roundings scatter (0.5x to 2.2x measured), as a whole alike
    assert np.median(list(ratios.values())) <= 1.25, ratios
    assert max(ratios.values()) <= 3, ratios


@needs_bf16
def test_bf16_gradients_follow_finite_differences_of_the_exact_loss():
    """Along three random directions u over all the weights, <bf16 gradient, u> is the
    central difference of the float64 loss (PyTorch reference, eps 1e-5) within 2%:
    bf16's rounding of the products costs 0.2-0.3% here, while the float32 gradient
    (checked alongside, so the differences themselves are sound) is within 1e-5."""
    torch = pytest.importorskip("torch")
    import torch_reference as ref
    from test_model import PARITY_CONFIGS, random_tokens, randomize_weights
    cfg = PARITY_CONFIGS["small-like"]
    m16, m32 = simcore.SIM(cfg, seed=3, precision="bfloat16"), simcore.SIM(cfg, seed=3)
    randomize_weights(m16, seed=17)
    m32.params[...] = m16.params
    tokens = random_tokens(np.random.default_rng(8), 2, cfg.seq_len)
    for m in (m16, m32):
        m.forward_backward(tokens)
    rng = np.random.default_rng(9)
    eps = 1e-5

    def loss(weights):
        return float(ref.torch_grads(cfg, weights, tokens, dtype=torch.float64)[0])

    for _ in range(3):
        u = {n: rng.standard_normal(w.shape) for n, w in m16.weights.items()}
        shifted = lambda sign: {n: w.astype(np.float64) + sign * eps * u[n]  # noqa: E731
                                for n, w in m16.weights.items()}
        fd = (loss(shifted(1)) - loss(shifted(-1))) / (2 * eps)
        slope = {p: sum(float((m.grads[n] * u[n]).sum()) for n in u) for p, m in (("bf16", m16), ("f32", m32))}
        assert abs(slope["f32"] - fd) <= 1e-5 * abs(fd), (slope, fd)
        assert abs(slope["bf16"] - fd) <= 0.02 * abs(fd), (slope, fd)


def test_precision_is_checked_and_auto_follows_the_cpu():
    cfg = simcore.Config(d_model=16, d_hidden=32, n_layers=1, n_heads=2, image_size=4)
    with pytest.raises(ValueError, match="precision must be one of float32, bfloat16, auto"):
        simcore.SIM(cfg, precision="fp8")
    assert simcore.SIM(cfg, precision="auto").precision == ("bfloat16" if K.bf16_supported() else "float32")
    assert simcore.SIM(cfg).precision == "float32"
    if not K.bf16_supported():
        with pytest.raises(ValueError, match="AVX512_BF16"):
            simcore.SIM(cfg, precision="bfloat16")


@needs_bf16
def test_a_bf16_model_learns_a_batch_as_a_float32_one_does():
    """Mixed precision trains: on one fixed batch the loss falls as in float32 (within a
    few percent after 30 steps), from the same weights."""
    from test_model import random_tokens
    cfg = simcore.Config(d_model=32, d_hidden=64, n_layers=2, n_heads=2, image_size=8)
    tokens = random_tokens(np.random.default_rng(0), 4, cfg.seq_len)
    tokens[:, 1:] //= 32  # a learnable batch: few pixel values
    losses = {}
    for p in ("float32", "bfloat16"):
        model = simcore.SIM(cfg, seed=1, precision=p)
        losses[p] = [model.train_step(tokens, lr=3e-3) for _ in range(30)]
    assert losses["bfloat16"][-1] < 0.5 * losses["bfloat16"][0]
    assert abs(losses["bfloat16"][-1] - losses["float32"][-1]) < 0.05 * losses["float32"][-1]


# ---- sampling: weights packed once, then every pixel's products ---------------------------

@needs_bf16
@pytest.mark.parametrize("Kd,N", [(1, 1), (7, 45), (128, 256), (513, 24)])
def test_bf16_pack_puts_each_pair_of_rows_in_one_word(Kd, N):
    """Word [p, j]: bf16(w[2p, j]) in the low half, bf16(w[2p+1, j]) in the high half, zero
    past an odd K."""
    w = np.random.default_rng(Kd + N).standard_normal((Kd, N)).astype(F32)
    out = np.empty(K.bf16_packed_shape(Kd, N), np.uint32)
    K.bf16_pack(out, w)
    bits = ref_round(np.concatenate([w, np.zeros((Kd % 2, N), F32)])).astype(np.uint32)
    np.testing.assert_array_equal(out, bits[0::2] | (bits[1::2] << 16))


@needs_bf16
@pytest.mark.parametrize("M,Kd,N", [(1, 1, 1), (13, 7, 45), (100, 128, 256), (9, 1030, 33)])
def test_the_packed_product_is_the_float64_one_of_the_rounded_operands(M, Kd, N):
    rng = np.random.default_rng(M + Kd + N)
    x, w, c = (rng.standard_normal(s).astype(F32) for s in ((M, Kd), (Kd, N), (M, N)))
    packed = np.empty(K.bf16_packed_shape(Kd, N), np.uint32)
    K.bf16_pack(packed, w)
    for beta in (0.0, 1.0):
        out = c.copy()
        K.linear_forward_packed(out, x, packed, beta)
        want = r(x) @ r(w) + beta * c
        scale = np.abs(r(x)) @ np.abs(r(w)) + np.abs(beta * c)
        assert (np.abs(out - want) <= 1e-6 * Kd ** 0.5 * scale + 1e-30).all()


@needs_bf16
def test_the_packed_product_checks_its_arguments():
    x, packed = np.zeros((4, 6), F32), np.zeros(K.bf16_packed_shape(6, 8), np.uint32)
    with pytest.raises(ValueError, match=r"packed: expected shape \[3, 5\]"):
        K.linear_forward_packed(np.zeros((4, 5), F32), x, packed)
    with pytest.raises(TypeError, match="packed: expected dtype uint32"):
        K.linear_forward_packed(np.zeros((4, 8), F32), x, packed.astype(np.int64))
    with pytest.raises(ValueError, match="beta must be 0 or 1"):
        K.linear_forward_packed(np.zeros((4, 8), F32), x, packed, 0.5)
    with pytest.raises(ValueError, match=r"out: expected shape \[3, 8\]"):
        K.bf16_pack(np.zeros((3, 9), np.uint32), np.zeros((6, 8), F32))


@needs_bf16
@pytest.mark.parametrize("norm", [True, False])
def test_bf16_decode_is_the_float64_block_with_rounded_products_one_position_at_a_time(norm):
    """block_decode with packed weights, position by position, against the float64 block
    whose projections and MLP take bf16 operands and whose attention is exact (the
    float32 cache's): within 2e-4 of the largest value (a rounding flipped by an ulp
    upstream moves a row by about 2^-9 of one term), where the unrounded block is 10x
    and more further off."""
    from test_block import block_weights
    B, T, C, H, NH = 3, 20, 16, 24, 2
    rng = np.random.default_rng(6)
    x, w = rng.standard_normal((B, T, C)).astype(F32), block_weights(rng, C, H, norm)
    packed = tuple(np.empty(K.bf16_packed_shape(*w[i].shape), np.uint32) for i in (1, 2, 3, 4, 6, 7))
    for p, i in zip(packed, (1, 2, 3, 4, 6, 7)):
        K.bf16_pack(p, w[i])
    kc, vc = (np.zeros(s, F32) for s in K.kv_cache_shapes(B, T, C, NH))
    scratch = np.empty(K.block_decode_scratch_size(B, C, H, kc.shape[2] * K.KV_BLOCK, K.get_num_threads()), F32)
    got = np.empty_like(x)
    for t in range(T):
        row = np.ascontiguousarray(x[:, t])
        K.block_decode(row, kc, vc, scratch, w, t, packed)
        got[:, t] = row
    from test_kernels import ref_attention  # exact, as sampling's attention over a float32 cache
    want = ref_block_bf16(x.astype(np.float64), w, NH, attention=lambda q, k, v, nh: ref_attention(q, k, v, nh)[0])
    err = np.abs(got - want).max() / np.abs(want).max()
    assert err <= 2e-4
    from test_block import f64, ref_block
    unrounded = ref_block(x.astype(np.float64), f64(w), NH)
    assert np.abs(got - unrounded).max() / np.abs(unrounded).max() >= 10 * max(err, 1e-6)
    with pytest.raises(TypeError, match="packed: expected a tuple of 6 arrays"):
        K.block_decode(row, kc, vc, scratch, w, 0, packed[:5])
    with pytest.raises(ValueError, match=r"packed w1: expected shape \[8, 24\]"):
        K.block_decode(row, kc, vc, scratch, w, 0, packed[:4] + (packed[5], packed[5]))


@needs_bf16
def test_sampling_takes_the_models_precision_unless_told_and_bf16_changes_the_draws():
    from test_model import randomize_weights
    cfg = simcore.Config(d_model=16, d_hidden=32, n_layers=2, n_heads=2, image_size=6, null_class=True)
    m32 = simcore.SIM(cfg, seed=1)
    randomize_weights(m32, seed=2)
    m16 = simcore.SIM(cfg, seed=1, precision="bfloat16")
    m16.params[...] = m32.params
    labels = [0, 3, 7, 9]
    own = m16.generate(labels, seed=4)
    np.testing.assert_array_equal(own, m32.generate(labels, seed=4, precision="bfloat16"))
    np.testing.assert_array_equal(m16.generate(labels, seed=4, precision="float32"), m32.generate(labels, seed=4))
    assert (own != m32.generate(labels, seed=4)).any()
    with pytest.raises(ValueError, match="precision must be one of"):
        m32.generate(labels, precision="half")


def test_generate_draws_in_bf16_from_the_command_line_or_names_what_is_missing(tmp_path, capsys):
    from simcore import generate
    npy = tmp_path / "d.npy"
    argv = ["--pretrained", "--classes", "3,7", "--per-class", "1", "--precision", "bfloat16",
            "--out", str(tmp_path / "d.png"), "--npy", str(npy)]
    if not K.bf16_supported():
        assert generate.main(argv) == 2
        assert "AVX512_BF16" in capsys.readouterr().err and not npy.exists()
        return
    assert generate.main(argv) == 0
    assert np.load(npy).shape == (2, 28, 28)
