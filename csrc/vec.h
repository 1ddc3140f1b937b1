/* vec.h: 16-float vectors for the hand-vectorised loops, and the build's CPU dispatch.
 *
 * We ship a baseline x86-64 build (no -march=native). Hot functions are marked
 * MULTIVERSION: GCC compiles them for AVX-512 (x86-64-v4), AVX2+FMA (x86-64-v3)
 * and the baseline, and picks one at load time for the CPU it runs on.
 */
#ifndef SIMCORE_VEC_H
#define SIMCORE_VEC_H
#include <math.h>
#include <stdint.h>
#include <string.h>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && \
    !defined(SIMCORE_NO_CLONES)
#define MULTIVERSION __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define MULTIVERSION
#endif

/* ---- 16-float vectors (GCC vector extensions) -------------------------------------
 * zmm registers in the AVX-512 clone, pairs of ymm for AVX2, SSE quads in the
 * baseline. The helpers are always inlined into the clones, so the vector ABI
 * note GCC emits for the baseline build does not apply. */
#pragma GCC diagnostic ignored "-Wpsabi"
typedef float v16 __attribute__((vector_size(64), aligned(4)));
typedef int32_t i16 __attribute__((vector_size(64), aligned(4)));
#define INLINE static inline __attribute__((always_inline))

INLINE v16 load16(const float *p) { v16 v; memcpy(&v, p, sizeof v); return v; }
INLINE void store16(float *p, v16 v) { memcpy(p, &v, sizeof v); }
INLINE void add16(float *p, v16 x) { store16(p, load16(p) + x); }
INLINE v16 splat(float x) { return (v16){0} + x; }
INLINE v16 select16(i16 mask, v16 a, v16 b) { return (v16)((mask & (i16)a) | (~mask & (i16)b)); }
INLINE v16 max16(v16 a, v16 b) { return select16(a > b, a, b); }
INLINE float hsum(v16 v) { float s = 0; for (int i = 0; i < 16; i++) s += v[i]; return s; }
INLINE float hmax(v16 v) { float m = v[0]; for (int i = 1; i < 16; i++) m = v[i] > m ? v[i] : m; return m; }

/* exp(x) for x <= 0 (scores minus their row max or log-sum-exp): 2^n * p(r) with
 * Cephes' degree-6 polynomial, ~1 ulp; x < -87 (and -inf, the causal mask)
 * gives exactly 0. n is rounded with the 1.5 * 2^23 trick so no floor() is
 * needed and the whole thing stays in vector registers. */
INLINE v16 exp16(v16 x) {
    const i16 dead = x < splat(-87.0f);
    x = max16(x, splat(-87.0f));
    const v16 magic = splat(12582912.0f);
    v16 n = (x * 1.44269504088896341f + magic) - magic;
    v16 r = x - n * 0.693359375f + n * 2.12194440e-4f;
    v16 p = splat(1.9875691500e-4f);
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    i16 e = (__builtin_convertvector(n, i16) + 127) << 23;
    return select16(dead, splat(0.0f), p * (v16)e);
}

INLINE float exp_neg(float x) { return exp16(splat(x))[0]; }

INLINE float dot(const float *a, const float *b, size_t d) {
    size_t e = 0;
    float s = 0.0f;
    if (d >= 16) {
        v16 acc = {0};
        for (; e + 16 <= d; e += 16) acc += load16(a + e) * load16(b + e);
        s = hsum(acc);
    }
    for (; e < d; e++) s += a[e] * b[e];
    return s;
}

/* sigmoid(x) = 1 / (1 + exp(-x)), built on exp(-|x|) so the exponent never
 * overflows; for x < 0 it is e / (1 + e). */
INLINE v16 sigmoid16(v16 x) {
    const i16 neg = x < splat(0.0f);
    const v16 e = exp16(select16(neg, x, -x));
    const v16 r = 1.0f / (1.0f + e);
    return select16(neg, e * r, r);
}

INLINE float sigmoidf_(float x) { return sigmoid16(splat(x))[0]; }

#endif
