/* dispatch.c: the vector level in use, and the public name of every kernel in
 * kernels.def, calling that level's build of it.
 *
 * Each file of per-level kernels is compiled once per level (setup.py), for the
 * levels of the target the compiler builds for: on x86-64, AVX-512 (x86-64-v4: F,
 * BW, DQ, VL, CD), AVX2 + FMA + F16C (x86-64-v3) and the baseline (SSE2); on
 * AArch64, NEON (Advanced SIMD, which every AArch64 CPU has); elsewhere the
 * baseline alone. Each level has its own flags and its own register tiles (vec.h,
 * tile.h), as PyTorch builds a kernel once per CPU_CAPABILITY. At load time the
 * level is the best this CPU runs; sc_isa_set lowers it (SIMCORE_ISA,
 * simcore.set_isa), so one machine can run and measure every path. Never higher
 * than the CPU has: that would be an illegal instruction, not a slow path.
 *
 * The level is a process-wide setting of csrc/ (with the BLAS and the thread count):
 * like the BLAS it is a property of the process, and changing it while a
 * kernel runs in another thread is the caller's race to avoid.
 */
#include "simcore.h"
#if defined(SC_X86_LEVELS) && (defined(__x86_64__) || defined(__i386__)) && defined(__clang__)
#include <cpuid.h>
#endif

/* The levels built, one row each, lowest first: SC_LEVELS(X, ...) calls X(SC_ISA_ enum,
 * symbol suffix, ...) per level. setup.py says which target it built for
 * (SC_X86_LEVELS, SC_NEON_LEVEL); a level not built has no entry in the tables. */
#if defined(SC_X86_LEVELS) && (defined(__x86_64__) || defined(__i386__))
#define SC_LEVELS(X, ...)                                                               \
    X(SC_ISA_BASELINE, _baseline, __VA_ARGS__)                                          \
    X(SC_ISA_AVX2, _avx2, __VA_ARGS__)                                                  \
    X(SC_ISA_AVX512, _avx512, __VA_ARGS__)
#elif defined(SC_NEON_LEVEL) && defined(__aarch64__)
#define SC_LEVELS(X, ...) X(SC_ISA_NEON, _neon, __VA_ARGS__)
#else
#define SC_LEVELS(X, ...) X(SC_ISA_BASELINE, _baseline, __VA_ARGS__)
#endif

#define SC_BUILT(level, suffix, unused) [level] = 1,
static const char sc_built[SC_ISA_COUNT] = {SC_LEVELS(SC_BUILT, 0)};

static int sc_isa = -1; /* -1: not yet chosen; the first call takes the best level */

#if defined(SC_X86_LEVELS) && (defined(__x86_64__) || defined(__i386__))
/* F16C: clang before 16 has no "f16c" for __builtin_cpu_supports, so there CPUID
 * says (leaf 1, ECX bit 29; the OS's support for the registers is AVX2's, checked
 * beside it). */
static int has_f16c(void) {
#if defined(__clang__)
    unsigned a, b, c, d;
    return __get_cpuid(1, &a, &b, &c, &d) && (c & bit_F16C);
#else
    return __builtin_cpu_supports("f16c");
#endif
}
#endif

/* The best level this CPU and its operating system run (libgcc checks that the
 * OS saves the AVX / AVX-512 registers, not only the CPUID bits). */
int sc_isa_best(void) {
#if defined(SC_X86_LEVELS) && (defined(__x86_64__) || defined(__i386__))
    __builtin_cpu_init();
    const int v3 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                   __builtin_cpu_supports("bmi") && __builtin_cpu_supports("bmi2") &&
                   has_f16c();
    const int v4 = v3 && __builtin_cpu_supports("avx512f") &&
                   __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq") &&
                   __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512cd");
    return v4 ? SC_ISA_AVX512 : v3 ? SC_ISA_AVX2 : SC_ISA_BASELINE;
#elif defined(SC_NEON_LEVEL) && defined(__aarch64__)
    return SC_ISA_NEON;
#else
    return SC_ISA_BASELINE;
#endif
}

int sc_isa_built(int level) { return level >= 0 && level < SC_ISA_COUNT && sc_built[level]; }

int sc_isa_get(void) {
    if (sc_isa < 0) sc_isa = sc_isa_best();
    return sc_isa;
}

int sc_isa_set(int level) {
    if (level < 0 || level >= SC_ISA_COUNT) return SC_ERR_BAD_ARG;
    if (!sc_built[level] || level > sc_isa_best()) return SC_ERR_UNSUPPORTED;
    sc_isa = level;
    return SC_OK;
}

/* The level for this call (sc_isa_get inlined: one load and a predictable branch). */
#define LEVEL (sc_isa >= 0 ? sc_isa : sc_isa_get())

/* For each kernel of kernels.def: the declarations of its per-level builds, a table
 * of them indexed by level, and the public function, which calls the entry of the
 * level in use. (A kernel returning nothing gets a body without `return`.) */
#define SC_DECLARE_AT(level, suffix, ret, name, params) ret name##suffix params;
#define SC_ENTRY(level, suffix, name) [level] = name##suffix,
#define SC_TABLE(ret, name, params)                                                     \
    SC_LEVELS(SC_DECLARE_AT, ret, name, params)                                         \
    static ret(*const name##_at[SC_ISA_COUNT]) params = {SC_LEVELS(SC_ENTRY, name)};
#define SC_KERNEL(ret, name, params, args)                                              \
    SC_TABLE(ret, name, params)                                                         \
    ret name params { return name##_at[LEVEL] args; }
#define SC_PROC(name, params, args)                                                     \
    SC_TABLE(void, name, params)                                                        \
    void name params { name##_at[LEVEL] args; }
#include "kernels.def"
