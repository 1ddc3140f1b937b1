/* sample.c: the next pixel of every sequence from its logits.
 *
 * The C twin of simcore.generate.sample_from_logits (the reference the tests
 * hold it to), so that sampling does no per-pixel NumPy work. Row b:
 *   temperature == 0: out[b] = argmax logits[b] (the first maximum)
 *   else:             z = logits[b] / temperature, in double
 *                     top_k < V: z[i] = -inf where z[i] < the k-th largest z
 *                     p = exp(z - max z),  c = cumsum(p)
 *                     out[b] = #{i : c[i] <= u[b] * c[V-1]}  (at most V-1)
 * u[b] in [0,1) are the caller's uniform draws, one per row, so the random
 * stream (NumPy's Generator) stays in Python and seeds mean the same as before.
 */
#include "simcore.h"
#include <math.h>
#include <stddef.h>

/* The k-th largest of a[0..n) (1 <= k <= n); reorders a. Quickselect with
 * Hoare's partition, in descending order. */
static double kth_largest(double *a, size_t n, size_t k) {
    ptrdiff_t lo = 0, hi = (ptrdiff_t)n - 1;
    const ptrdiff_t want = (ptrdiff_t)k - 1;
    while (lo < hi) {
        const double pivot = a[lo + (hi - lo) / 2];
        ptrdiff_t i = lo, j = hi;
        while (i <= j) {
            while (a[i] > pivot) i++;
            while (a[j] < pivot) j--;
            if (i <= j) {
                const double t = a[i];
                a[i++] = a[j];
                a[j--] = t;
            }
        }
        /* a[lo..j] >= pivot >= a[i..hi], and a[j+1..i-1] == pivot */
        if (want <= j)
            hi = j;
        else if (want >= i)
            lo = i;
        else
            return a[want];
    }
    return a[want];
}

/* out: OUT [B]; work: scratch [2V]; logits: IN [B,V]; u: IN [B] in [0,1);
 * temperature >= 0 */
void sample_tokens(uint8_t *out, double *work, const float *logits, const double *u,
                   double temperature, int top_k, size_t B, size_t V) {
    double *p = work + V;
    for (size_t b = 0; b < B; b++) {
        const float *z = logits + b * V;
        if (temperature == 0.0) {
            size_t best = 0;
            for (size_t i = 1; i < V; i++)
                if (z[i] > z[best]) best = i;
            out[b] = (uint8_t)best;
            continue;
        }
        double cut = -INFINITY, mx = -INFINITY;
        for (size_t i = 0; i < V; i++) p[i] = (double)z[i] / temperature;
        if (top_k > 0 && (size_t)top_k < V) {
            for (size_t i = 0; i < V; i++) work[i] = p[i];
            cut = kth_largest(work, V, (size_t)top_k);
        }
        for (size_t i = 0; i < V; i++)
            if (p[i] >= cut && p[i] > mx) mx = p[i];
        double c = 0.0;
        for (size_t i = 0; i < V; i++) {
            c += p[i] >= cut ? exp(p[i] - mx) : 0.0;
            p[i] = c; /* p becomes the running sum */
        }
        const double target = u[b] * c;
        size_t count = 0;
        for (size_t i = 0; i < V; i++) count += p[i] <= target;
        out[b] = (uint8_t)(count < V ? count : V - 1);
    }
}
