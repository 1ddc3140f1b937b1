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
                                    (130, 64, 256)])
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
def test_bgemm_does_not_depend_on_the_thread_count():
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((300, 700)).astype(F32), rng.standard_normal((700, 90)).astype(F32)
    outs = []
    before = simcore.get_threads()
    try:
        for n in (1, 2):
            simcore.set_threads(n)
            out = np.empty((300, 90), F32)
            K.bgemm(out, a, b)
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


def test_cpu_info_says_whether_the_cpu_has_bf16():
    assert simcore.cpu_info()["bf16"] is K.bf16_supported()
