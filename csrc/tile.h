/* tile.h: the register-tiled micro-kernel for small products, shared by
 * attention.c (the 64 x 64 blocks of flash attention) and linear.c (sampling's
 * projections of a few rows, where a BLAS call would spend most of its time
 * packing the weights it then reads once).
 *
 * Included by files compiled once per vector level: VW and the tile follow the
 * level (vec.h).
 */
#ifndef SIMCORE_TILE_H
#define SIMCORE_TILE_H
#include "vec.h"
#include <stddef.h>
#include <string.h>

/* Cm[M,N] += op(A)[M,K] @ Bm[K,N], row-major. op(A)[i,k] = A[i*si + k*sk], so
 * the same kernel does A (si = lda, sk = 1) and A^T (si = 1, sk = lda) without
 * a transposed copy. The register tile is MR rows x NR = 2 vectors of Cm: the
 * kernel streams one row of Bm (two vector loads) and MR broadcast scalars of
 * op(A) per k. Tiles are sized in vectors, so the register budget is the same
 * at every level: AVX-512 and the baseline take 4 x 2 accumulators (of 32 zmm,
 * of 16 xmm); AVX2 takes 6 x 2 (12 of its 16 ymm, plus two loads and one
 * broadcast), BLIS's Haswell shape, which keeps both FMA ports busier than
 * 4 x 2 does. NEON takes 8 x 2 (16 of its 32 q registers, plus two loads and
 * the 8 scalars of op(A), which its by-element FMA multiplies from a register
 * lane without a broadcast: 26): 16 independent FMAs, what cores with four
 * FMA pipes of 4 cycles (Neoverse V1/V2, Apple's) need in flight. Narrower
 * edges take a one-vector and then a scalar path. overwrite: Cm = instead of +=. */
#if VW == 8 /* measured: MR 4, 6, 8 -> 1.0, 1.13, 0.75 (8 spills) */
#define MR 6
#elif defined(__aarch64__) /* not timed on hardware: by the register count (no spill, GCC 12) */
#define MR 8
#else /* AVX-512: MR 4, 6, 8 -> 1.0, 0.93, 0.98 (64 = 10 x 6 + 4 leaves a slow edge) */
#define MR 4
#endif
#define NR (2 * VW)
INLINE void put(float *p, vf x, int overwrite) { vstore(p, overwrite ? x : vload(p) + x); }

/* R (<= MR, a constant after inlining) rows of Cm starting at c, against op(A)
 * rows starting at a. */
INLINE void mm_rows(float *restrict c, size_t ldc, const float *restrict a, size_t si,
                    size_t sk, const float *restrict Bm, size_t ldb, size_t N, size_t K,
                    int overwrite, const int R) {
    size_t j = 0;
    for (; j + NR <= N; j += NR) {
        vf x[MR], y[MR];
        UNROLL for (int r = 0; r < R; r++) x[r] = y[r] = (vf){0};
        for (size_t k = 0; k < K; k++) {
            const vf bx = vload(Bm + k * ldb + j), by = vload(Bm + k * ldb + j + VW);
            const float *ak = a + k * sk;
            UNROLL for (int r = 0; r < R; r++) {
                const float ar = ak[r * si];
                x[r] += ar * bx;
                y[r] += ar * by;
            }
        }
        UNROLL for (int r = 0; r < R; r++) {
            put(c + r * ldc + j, x[r], overwrite);
            put(c + r * ldc + j + VW, y[r], overwrite);
        }
    }
    for (; j + VW <= N; j += VW) {
        vf x[MR];
        UNROLL for (int r = 0; r < R; r++) x[r] = (vf){0};
        for (size_t k = 0; k < K; k++) {
            const vf bx = vload(Bm + k * ldb + j);
            UNROLL for (int r = 0; r < R; r++) x[r] += a[r * si + k * sk] * bx;
        }
        UNROLL for (int r = 0; r < R; r++) put(c + r * ldc + j, x[r], overwrite);
    }
    for (; j < N; j++)
        UNROLL for (int r = 0; r < R; r++) {
            float s = 0;
            for (size_t k = 0; k < K; k++) s += a[r * si + k * sk] * Bm[k * ldb + j];
            c[r * ldc + j] = overwrite ? s : c[r * ldc + j] + s;
        }
}

INLINE void tile_mm(float *restrict Cm, size_t ldc, const float *restrict A, size_t si,
                   size_t sk, const float *restrict Bm, size_t ldb, size_t M, size_t N,
                   size_t K, int overwrite) {
    size_t i = 0;
    for (; i + MR <= M; i += MR)
        mm_rows(Cm + i * ldc, ldc, A + i * si, si, sk, Bm, ldb, N, K, overwrite, MR);
#if MR > 4
    for (; i + 4 <= M; i += 4) /* 64 = 10 x 6 + 4; with MR 8 a tail of 4..7 rows */
        mm_rows(Cm + i * ldc, ldc, A + i * si, si, sk, Bm, ldb, N, K, overwrite, 4);
#endif
    for (; i < M; i++)
        mm_rows(Cm + i * ldc, ldc, A + i * si, si, sk, Bm, ldb, N, K, overwrite, 1);
}

#endif
