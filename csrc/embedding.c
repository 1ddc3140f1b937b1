/* embedding.c: token embedding plus the fixed 2-D sinusoidal position encoding.
 *
 *   x[b,t,:] = wte[tokens[b,t], :] + pe[t, :]
 *   pe[t, 2i]          = sin(r * f_i)     pe[t, 2i+1]          = cos(r * f_i)
 *   pe[t, C/2 + 2i]    = sin(c * f_i)     pe[t, C/2 + 2i + 1]  = cos(c * f_i)
 *   with r = t / side, c = t % side, f_i = 10000^(-2i / (C/2)), i < C/4.
 *
 * Backward: dwte[tokens[b,t], :] += dx[b,t,:] (pe is fixed, it has no gradient).
 *
 * With Config.pixel_above, a second table adds the pixel directly above the one
 * position t predicts (pixel t+1, so pixel t+1-side, `shift` = side-1 positions back):
 *   x[b,t,:] += wab[tokens[b, t-shift], :]   for t >= shift (nothing above the first row)
 *   dwab[tokens[b, t-shift], :] += dx[b,t,:]
 *
 * With Config.class_everywhere, a table of n_classes rows adds each image's label
 * (its token 0; the caller passes a checked copy, labels[b] = tokens[b,0]) at every
 * position, not only through attention to position 0:
 *   x[b,t,:] += wcl[labels[b], :]        dwcl[labels[b], :] += sum_t dx[b,t,:]
 *
 * Sampling's one-position path, embedding_step, sums the same rows for position t of
 * N sequences at once, in the same order (token, position, pixel above, class), so
 * that it gives the training pass's values bit for bit.
 */
#include "simcore.h"
#include "parallel.h"
#include <math.h>

/* The arguments of the row-parallel loops below (each uses what it needs). */
typedef struct {
    float *out;
    const uint8_t *tokens; /* or the labels */
    const float *table, *pe;
    size_t shift, T, C;
} Rows;

/* pe: OUT [T, C]. C must be a multiple of 4 (checked by the caller). */
void posenc_init(float *pe, size_t T, size_t C, size_t side) {
    const size_t half = C / 2;
    for (size_t t = 0; t < T; t++) {
        const double pos[2] = {(double)(t / side), (double)(t % side)};
        float *row = pe + t * C;
        for (int part = 0; part < 2; part++) {
            for (size_t i = 0; i < half / 2; i++) {
                double f = pow(10000.0, -2.0 * (double)i / (double)half);
                row[part * half + 2 * i] = (float)sin(pos[part] * f);
                row[part * half + 2 * i + 1] = (float)cos(pos[part] * f);
            }
        }
    }
}

static void embedding_rows(void *ctx, size_t lo, size_t hi) {
    const Rows a = *(const Rows *)ctx;
    for (size_t bt = lo; bt < hi; bt++) {
        const float *e = a.table + (size_t)a.tokens[bt] * a.C;
        const float *p = a.pe + (bt % a.T) * a.C;
        float *o = a.out + bt * a.C;
        for (size_t c = 0; c < a.C; c++) o[c] = e[c] + p[c];
    }
}

/* out: OUT [B,T,C]; tokens: IN [B,T] (0..255); wte: IN [256,C]; pe: IN [T,C] */
void embedding_forward(float *out, const uint8_t *tokens, const float *wte,
                       const float *pe, size_t B, size_t T, size_t C) {
    Rows a = {out, tokens, wte, pe, 0, T, C};
    sc_parallel_for(B * T, threads_if(B * T * C > 65536), embedding_rows, &a);
}

/* dwte: INOUT [256,C]; dout: IN [B,T,C]; tokens: IN [B,T].
 * Serial: rows of dwte collide when tokens repeat (most pixels are 0). */
void embedding_backward(float *dwte, const float *dout, const uint8_t *tokens,
                        size_t B, size_t T, size_t C) {
    for (size_t bt = 0; bt < B * T; bt++) {
        float *d = dwte + (size_t)tokens[bt] * C;
        const float *g = dout + bt * C;
        for (size_t c = 0; c < C; c++) d[c] += g[c];
    }
}

static void embedding_above_rows(void *ctx, size_t lo, size_t hi) {
    const Rows a = *(const Rows *)ctx;
    for (size_t bt = lo; bt < hi; bt++) {
        if (bt % a.T < a.shift) continue;
        const float *e = a.table + (size_t)a.tokens[bt - a.shift] * a.C;
        float *o = a.out + bt * a.C;
        for (size_t c = 0; c < a.C; c++) o[c] += e[c];
    }
}

/* out: INOUT [B,T,C]; tokens: IN [B,T]; wab: IN [256,C]. Adds for t >= shift. */
void embedding_above_forward(float *out, const uint8_t *tokens, const float *wab, size_t shift,
                             size_t B, size_t T, size_t C) {
    Rows a = {out, tokens, wab, NULL, shift, T, C};
    sc_parallel_for(B * T, threads_if(B * T * C > 65536), embedding_above_rows, &a);
}

/* dwab: INOUT [256,C]; dout: IN [B,T,C]; tokens: IN [B,T]. Serial, like the above. */
void embedding_above_backward(float *dwab, const float *dout, const uint8_t *tokens, size_t shift,
                              size_t B, size_t T, size_t C) {
    for (size_t bt = 0; bt < B * T; bt++) {
        if (bt % T < shift) continue;
        float *d = dwab + (size_t)tokens[bt - shift] * C;
        const float *g = dout + bt * C;
        for (size_t c = 0; c < C; c++) d[c] += g[c];
    }
}

static void embedding_class_rows(void *ctx, size_t lo, size_t hi) {
    const Rows a = *(const Rows *)ctx;
    for (size_t bt = lo; bt < hi; bt++) {
        const float *e = a.table + (size_t)a.tokens[bt / a.T] * a.C;
        float *o = a.out + bt * a.C;
        for (size_t c = 0; c < a.C; c++) o[c] += e[c];
    }
}

/* out: INOUT [B,T,C]; labels: IN [B] (each < rows of wcl); wcl: IN [n_classes,C]. */
void embedding_class_forward(float *out, const uint8_t *labels, const float *wcl,
                             size_t B, size_t T, size_t C) {
    Rows a = {out, labels, wcl, NULL, 0, T, C};
    sc_parallel_for(B * T, threads_if(B * T * C > 65536), embedding_class_rows, &a);
}

typedef struct {
    float *dwcl;
    const float *dout;
    const uint8_t *labels;
    size_t B, T, C;
} ClassGrad;

#define CLASS_CHUNK 16 /* channels per task */

/* Channel chunks [lo,hi) of dwcl. */
static void embedding_class_grad_chunks(void *ctx, size_t lo, size_t hi) {
    const ClassGrad a = *(const ClassGrad *)ctx;
    for (size_t c0 = lo * CLASS_CHUNK; c0 < hi * CLASS_CHUNK && c0 < a.C; c0 += CLASS_CHUNK) {
        const size_t c1 = c0 + CLASS_CHUNK < a.C ? c0 + CLASS_CHUNK : a.C;
        for (size_t b = 0; b < a.B; b++) {
            float *d = a.dwcl + (size_t)a.labels[b] * a.C;
            for (size_t t = 0; t < a.T; t++) {
                const float *g = a.dout + (b * a.T + t) * a.C;
                for (size_t c = c0; c < c1; c++) d[c] += g[c];
            }
        }
    }
}

/* dwcl: INOUT [n_classes,C]; dout: IN [B,T,C]; labels: IN [B]. Channels are split
 * across threads (images may share a label, so their rows of dwcl collide). */
void embedding_class_backward(float *dwcl, const float *dout, const uint8_t *labels,
                              size_t B, size_t T, size_t C) {
    ClassGrad a = {dwcl, dout, labels, B, T, C};
    sc_parallel_for((C + CLASS_CHUNK - 1) / CLASS_CHUNK, threads_if(B * T * C > 65536),
                    embedding_class_grad_chunks, &a);
}

/* x: OUT [N,C]; tokens: IN [N] (position t of each sequence); above: IN [N] (the
 * pixel above the one t predicts) or NULL (none: pixel_above off, or the first row);
 * labels: IN [N] (each < rows of wcl) or NULL with wcl; wte: IN [256,C];
 * pe_t: IN [C] (row t of the position encoding); wab: IN [256,C] or NULL;
 * wcl: IN [n_classes,C] or NULL */
void embedding_step(float *x, const uint8_t *tokens, const uint8_t *above, const uint8_t *labels,
                    const float *wte, const float *pe_t, const float *wab, const float *wcl,
                    size_t N, size_t C) {
    for (size_t n = 0; n < N; n++) {
        const float *e = wte + (size_t)tokens[n] * C;
        float *o = x + n * C;
        for (size_t c = 0; c < C; c++) o[c] = e[c] + pe_t[c];
        if (above && wab) {
            const float *a = wab + (size_t)above[n] * C;
            for (size_t c = 0; c < C; c++) o[c] += a[c];
        }
        if (labels && wcl) {
            const float *l = wcl + (size_t)labels[n] * C;
            for (size_t c = 0; c < C; c++) o[c] += l[c];
        }
    }
}
