/* parallel.h: which share of a parallel region's work the calling thread takes.
 * Compiled without OpenMP, every region has one thread and it takes all. */
#ifndef SIMCORE_PARALLEL_H
#define SIMCORE_PARALLEL_H
#include <stddef.h>
#ifdef _OPENMP
#include <omp.h>
#endif

static inline size_t thread_index(void) {
#ifdef _OPENMP
    return (size_t)omp_get_thread_num();
#else
    return 0;
#endif
}

static inline size_t thread_count(void) {
#ifdef _OPENMP
    return (size_t)omp_get_num_threads();
#else
    return 1;
#endif
}

/* The calling thread's rows [b0,b1) of a batch of B, cut into one slice per thread
 * of the current team, and its slot of a scratch with `per` floats per thread. */
static inline float *thread_share(float *scratch, size_t per, size_t B, size_t *b0, size_t *b1) {
    const size_t t = thread_index(), nt = thread_count();
    *b0 = B * t / nt;
    *b1 = B * (t + 1) / nt;
    return scratch + t * per;
}

/* never more threads than rows */
static inline int threads_for(size_t B, int nthreads) {
    return (size_t)nthreads < B ? nthreads : (int)B;
}
#endif
