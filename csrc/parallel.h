/* parallel.h: the one door to threads in csrc/ (implemented in parallel.c).
 *
 * sc_parallel(n, fn, ctx) is a parallel region: it runs fn(ctx, t, nt) once on each
 * of nt <= n threads (t = 0 .. nt-1, the calling thread is t = 0) and returns when
 * all have returned. Underneath it is OpenMP's `#pragma omp parallel` where the
 * compiler has OpenMP, and otherwise a small pool of our own on pthreads (Apple's
 * clang, Debian's clang without libomp), as ggml does; setup.py chooses, and
 * simcore.blas_info()["kernel_threading"] says which. Every parallel loop of csrc/
 * goes through this door, written once: a loop kept under `#pragma omp` with a
 * second, pool-driven copy beside it would be two bodies to keep in step, and a
 * build that tests one of them. What the door keeps of OpenMP: the same team (the
 * thread count of sc_set_num_threads, OMP_NUM_THREADS at start), the same split of
 * every loop (sc_parallel_for is schedule(static) as libgomp and LLVM's libomp cut
 * it), so a fixed-seed run gives the same bits as when the loops were pragmas; and
 * a region inside a region runs on the thread that opened it, as OpenMP's nested
 * regions do by default (so a GEMM called from a thread's share is not split again).
 */
#ifndef SIMCORE_PARALLEL_H
#define SIMCORE_PARALLEL_H
#include "simcore.h"
#include <stddef.h>

/* A region's body: thread t of nt. ctx carries the arguments (one struct per site). */
typedef void (*sc_region_fn)(void *ctx, size_t t, size_t nt);
void sc_parallel(int nthreads, sc_region_fn fn, void *ctx);

/* for (i = 0; i < n; i++) on nthreads threads, each taking one contiguous range
 * fn(ctx, lo, hi) of the iterations: OpenMP's schedule(static). */
typedef void (*sc_range_fn)(void *ctx, size_t lo, size_t hi);
void sc_parallel_for(size_t n, int nthreads, sc_range_fn fn, void *ctx);

/* The same loop returning a sum: each thread's range sums into a double of its own,
 * and the threads' sums are added in thread order (so at one and two threads the
 * result is what `reduction(+ : s)` gave, and at more it no longer depends on which
 * thread finished first). */
typedef double (*sc_sum_fn)(void *ctx, size_t lo, size_t hi);
double sc_parallel_sum(size_t n, int nthreads, sc_sum_fn fn, void *ctx);

/* Inside a region with more than one thread (a GEMM there runs on its caller alone). */
int sc_in_parallel(void);

/* schedule(dynamic, 1) inside a region: each call takes the next task number from
 * *next, shared by the team (start it at 0); a number >= the count means done. */
static inline size_t sc_next_task(size_t *next) {
    return __atomic_fetch_add(next, 1, __ATOMIC_RELAXED);
}

/* The thread count of a loop worth splitting only when big: OpenMP's if() clause. */
static inline int threads_if(int big) { return big ? sc_get_num_threads() : 1; }

/* never more threads than rows */
static inline int threads_for(size_t B, int nthreads) {
    return (size_t)nthreads < B ? nthreads : (int)B;
}

/* Thread t of nt's rows [b0,b1) of a batch of B, and its slot of a scratch with `per`
 * floats per thread. */
static inline float *thread_share(float *scratch, size_t per, size_t B, size_t t, size_t nt,
                                  size_t *b0, size_t *b1) {
    *b0 = B * t / nt;
    *b1 = B * (t + 1) / nt;
    return scratch + t * per;
}
#endif
