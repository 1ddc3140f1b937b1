/* parallel.c: parallel regions (parallel.h) and the thread count, on OpenMP where the
 * compiler has it, else on a pool of our own over pthreads.
 *
 * The pool (built without OpenMP): threads 1..nt-1 are started at the first region
 * that needs them and kept; the calling thread is thread 0. A region is published
 * by bumping a generation number; each worker runs its share and counts itself
 * done; the caller runs share 0 and waits for the count. Between regions a worker
 * spins on the generation for a while (a training step opens a region every few
 * microseconds, and a futex wake-up costs tens) and then sleeps on a condition
 * variable, as libgomp's threads do (GOMP_SPINCOUNT); the caller waits the same
 * way. With more threads than CPUs no one spins: a spinning thread would take the
 * CPU from the one that has work. One region runs on the pool at a time: a second
 * thread that opens one meanwhile (two Python threads calling kernels) runs it
 * alone, on itself.
 */
#if defined(__linux__) && !defined(_GNU_SOURCE)
#define _GNU_SOURCE /* sched_getaffinity */
#endif
#include "parallel.h"
#include <limits.h>
#include <stdlib.h>
#include <string.h>

/* ---- the helpers on top of a region (either implementation) ------------------ */

/* Iterations [lo,hi) of n for thread t of nt: the first n % nt threads take one more.
 * libgomp's and libomp's schedule(static) split. */
static void static_range(size_t n, size_t t, size_t nt, size_t *lo, size_t *hi) {
    size_t q = n / nt, r = n % nt;
    if (t < r) {
        q++;
        r = 0;
    }
    *lo = q * t + r;
    *hi = *lo + q;
}

typedef struct {
    size_t n;
    sc_range_fn fn;
    sc_sum_fn sum;
    void *ctx;
    double *part; /* sum: one per thread */
} Loop;

static void loop_region(void *p, size_t t, size_t nt) {
    const Loop *a = p;
    size_t lo, hi;
    static_range(a->n, t, nt, &lo, &hi);
    if (a->sum) a->part[t] = a->sum(a->ctx, lo, hi);
    else if (lo < hi) a->fn(a->ctx, lo, hi);
}

void sc_parallel_for(size_t n, int nthreads, sc_range_fn fn, void *ctx) {
    if (n == 0) return;
    Loop a = {n, fn, NULL, ctx, NULL};
    sc_parallel(threads_for(n, nthreads), loop_region, &a);
}

double sc_parallel_sum(size_t n, int nthreads, sc_sum_fn fn, void *ctx) {
    if (n == 0) return 0.0;
    const int nt = threads_for(n, nthreads > 0 ? nthreads : 1);
    double part[nt]; /* at most MAX_THREADS (simcore/_kernels.pyx): 32 KB */
    for (int t = 0; t < nt; t++) part[t] = 0.0; /* a smaller team leaves some at 0 */
    Loop a = {n, NULL, fn, ctx, part};
    sc_parallel(nt, loop_region, &a);
    double s = 0.0;
    for (int t = 0; t < nt; t++) s += part[t];
    return s;
}

#ifdef _OPENMP
/* ---- OpenMP ---------------------------------------------------------------- */
#include <omp.h>

const char *sc_threading_layer(void) { return "openmp"; }

void sc_parallel(int nthreads, sc_region_fn fn, void *ctx) {
    if (nthreads <= 1 || omp_in_parallel()) {
        fn(ctx, 0, 1);
        return;
    }
#pragma omp parallel num_threads(nthreads)
    fn(ctx, (size_t)omp_get_thread_num(), (size_t)omp_get_num_threads());
}

int sc_in_parallel(void) { return omp_in_parallel(); }

/* The thread count is the process's, not one thread's: OpenMP keeps one per thread (a
 * Python thread other than the one that called simcore.set_threads starts at OpenMP's
 * default), and a product split into panels rounds a little differently by their
 * number, so every thread must split alike. 0: not set, OpenMP's default. */
static int g_threads = 0;

int sc_get_num_threads(void) {
    const int n = __atomic_load_n(&g_threads, __ATOMIC_RELAXED);
    return n > 0 ? n : omp_get_max_threads();
}

void sc_set_num_threads(int n) {
    if (n > 0) {
        __atomic_store_n(&g_threads, n, __ATOMIC_RELAXED);
        omp_set_num_threads(n);
    }
}

#else
/* ---- a pool on pthreads -------------------------------------------------------- */
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <time.h>
#include <unistd.h>

const char *sc_threading_layer(void) { return "pthreads"; }

static _Thread_local int in_region; /* this thread runs a share of a region of >1 threads */

static struct {
    pthread_mutex_t busy;            /* held by the thread whose region the pool runs */
    pthread_mutex_t lock;            /* for sleeping on wake (workers) and done (the caller) */
    pthread_cond_t wake, done;
    size_t workers;                  /* threads 1..workers started (read under busy) */
    atomic_int spin;                 /* no more threads than CPUs: spin before sleeping */
    atomic_uint gen;                 /* bumped to start a region */
    atomic_size_t pending;           /* workers yet to finish it */
    sc_region_fn fn;                 /* the region: written before gen is bumped */
    void *ctx;
    size_t nt;
} pool = {.busy = PTHREAD_MUTEX_INITIALIZER, .lock = PTHREAD_MUTEX_INITIALIZER,
          .wake = PTHREAD_COND_INITIALIZER, .done = PTHREAD_COND_INITIALIZER};

static int g_threads; /* the thread count; 0 until first asked */

static int cpu_count(void) {
#if defined(__linux__)
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0 && CPU_COUNT(&set) > 0) return CPU_COUNT(&set);
#endif
    const long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (n < INT_MAX ? (int)n : INT_MAX) : 1;
}

int sc_get_num_threads(void) {
    int n = __atomic_load_n(&g_threads, __ATOMIC_RELAXED);
    if (n > 0) return n;
    /* as OpenMP starts: OMP_NUM_THREADS (its first number), else one per CPU */
    const char *s = getenv("OMP_NUM_THREADS");
    char *end = NULL;
    const long v = s ? strtol(s, &end, 10) : 0;
    n = s && end != s && v > 0 ? (v < INT_MAX ? (int)v : INT_MAX) : cpu_count();
    __atomic_store_n(&g_threads, n, __ATOMIC_RELAXED);
    return n;
}

void sc_set_num_threads(int n) {
    if (n > 0) __atomic_store_n(&g_threads, n, __ATOMIC_RELAXED);
}

int sc_in_parallel(void) { return in_region; }

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__) || defined(__arm__)
    __asm__ __volatile__("yield");
#endif
}

static long long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

#define SPIN_NS 1000000 /* 1 ms: longer than the gaps between the regions of a step */

/* Spin until the generation moves past seen (or the spin time is up, or with more
 * threads than CPUs at once); then sleep until it does. Returns the new generation. */
static unsigned wait_for_region(unsigned seen) {
    unsigned g;
    if (atomic_load_explicit(&pool.spin, memory_order_relaxed)) {
        const long long until = now_ns() + SPIN_NS;
        for (unsigned i = 1;; i++) {
            if ((g = atomic_load_explicit(&pool.gen, memory_order_acquire)) != seen) return g;
            cpu_relax();
            if (i % 256 == 0 && now_ns() > until) break;
        }
    }
    pthread_mutex_lock(&pool.lock);
    while ((g = atomic_load_explicit(&pool.gen, memory_order_acquire)) == seen)
        pthread_cond_wait(&pool.wake, &pool.lock);
    pthread_mutex_unlock(&pool.lock);
    return g;
}

/* The caller's wait for the workers, spinning and then sleeping the same way. */
static void wait_for_workers(void) {
    if (atomic_load_explicit(&pool.spin, memory_order_relaxed)) {
        const long long until = now_ns() + SPIN_NS;
        for (unsigned i = 1;; i++) {
            if (atomic_load_explicit(&pool.pending, memory_order_acquire) == 0) return;
            cpu_relax();
            if (i % 256 == 0 && now_ns() > until) break;
        }
    }
    pthread_mutex_lock(&pool.lock);
    while (atomic_load_explicit(&pool.pending, memory_order_acquire) != 0)
        pthread_cond_wait(&pool.done, &pool.lock);
    pthread_mutex_unlock(&pool.lock);
}

typedef struct {
    size_t t;     /* this worker's thread number */
    unsigned gen; /* the generation when it was started: the next region is its first */
} Start;

static void *worker(void *arg) {
    Start s = *(Start *)arg;
    free(arg);
    in_region = 1;
    for (unsigned seen = s.gen;;) {
        seen = wait_for_region(seen);
        if (s.t < pool.nt) pool.fn(pool.ctx, s.t, pool.nt);
        /* every worker counts itself done, those without a share too: then none can
         * still be reading pool.fn when the caller writes the next region's */
        if (atomic_fetch_sub_explicit(&pool.pending, 1, memory_order_acq_rel) == 1) {
            pthread_mutex_lock(&pool.lock);
            pthread_cond_signal(&pool.done);
            pthread_mutex_unlock(&pool.lock);
        }
    }
    return NULL;
}

/* In a child process after fork() the workers do not exist: start afresh. */
static void pool_after_fork(void) {
    pthread_mutex_init(&pool.busy, NULL);
    pthread_mutex_init(&pool.lock, NULL);
    pthread_cond_init(&pool.wake, NULL);
    pthread_cond_init(&pool.done, NULL);
    pool.workers = 0;
    atomic_store(&pool.pending, 0);
    in_region = 0;
}

/* Start workers until there are n (fewer if the system refuses); with pool.busy held. */
static void start_workers(size_t n) {
    static int registered;
    if (!registered) registered = pthread_atfork(NULL, NULL, pool_after_fork) == 0;
    pthread_attr_t attr;
    if (pthread_attr_init(&attr)) return;
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    /* macOS gives other threads 512 KB; libgomp's workers get the main thread's limit */
    pthread_attr_setstacksize(&attr, (size_t)8 << 20);
    while (pool.workers < n) {
        Start *s = malloc(sizeof *s);
        if (!s) break;
        s->t = pool.workers + 1;
        s->gen = atomic_load(&pool.gen);
        pthread_t id;
        if (pthread_create(&id, &attr, worker, s)) {
            free(s);
            break;
        }
        pool.workers++;
    }
    pthread_attr_destroy(&attr);
    atomic_store(&pool.spin, pool.workers + 1 <= (size_t)cpu_count());
}

void sc_parallel(int nthreads, sc_region_fn fn, void *ctx) {
    if (nthreads <= 1 || in_region || pthread_mutex_trylock(&pool.busy)) {
        fn(ctx, 0, 1);
        return;
    }
    if (pool.workers < (size_t)nthreads - 1) start_workers((size_t)nthreads - 1);
    const size_t nt = (size_t)nthreads <= pool.workers + 1 ? (size_t)nthreads : pool.workers + 1;
    if (nt <= 1) { /* no worker could be started */
        pthread_mutex_unlock(&pool.busy);
        fn(ctx, 0, 1);
        return;
    }
    pool.fn = fn;
    pool.ctx = ctx;
    pool.nt = nt;
    atomic_store_explicit(&pool.pending, pool.workers, memory_order_relaxed);
    pthread_mutex_lock(&pool.lock); /* so that no worker sleeps through the bump */
    atomic_fetch_add_explicit(&pool.gen, 1, memory_order_release);
    pthread_cond_broadcast(&pool.wake);
    pthread_mutex_unlock(&pool.lock);
    in_region = 1;
    fn(ctx, 0, nt);
    in_region = 0;
    wait_for_workers();
    pthread_mutex_unlock(&pool.busy);
}
#endif
