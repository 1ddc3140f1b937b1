# cython: language_level=3, boundscheck=False, wraparound=False
"""Checked Python entry points to the C kernels in csrc/.

The C never trusts Python: every wrapper checks that each array is a NumPy array
of the right dtype, C-contiguous, of the shape the sizes imply, writeable when
it is an output, and not overlapping an input it must not alias. Then it calls
the kernel with the GIL released. Sizes are taken from the inputs' shapes.
Forward kernels write their outputs, except those that say they add (the pixel-above
and class embeddings, a beta of 1); backward kernels add into gradients (+=).
"""
import numpy as np
from cpython.buffer cimport (PyBUF_RECORDS_RO, PyBuffer_IsContiguous,
                            PyBuffer_Release, PyObject_GetBuffer)
from libc.stdint cimport uint8_t, uint16_t, uint32_t
from simcore cimport _csimcore as c

_F32 = np.dtype(np.float32)
_U8 = np.dtype(np.uint8)
_F64 = np.dtype(np.float64)
_F16 = np.dtype(np.float16)
_U16 = np.dtype(np.uint16)
_U32 = np.dtype(np.uint32)


cdef size_t _addr(object a, str name, object dtype, tuple shape, bint out=False) except 0:
    """Validate one argument; return its data address (never 0 for valid arrays).

    Read through the buffer protocol: about 0.1 us per array, against 2 us for
    __array_interface__, which matters for sampling's thousands of small calls."""
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name}: expected a numpy.ndarray, got {type(a).__name__}")
    cdef Py_buffer view
    PyObject_GetBuffer(a, &view, PyBUF_RECORDS_RO)
    cdef char want = (b"f" if dtype is _F32 else b"d" if dtype is _F64 else b"e" if dtype is _F16
                      else b"H" if dtype is _U16 else b"I" if dtype is _U32 else b"B")
    cdef bint dtype_ok = view.format != NULL and view.format[0] == want and view.format[1] == 0
    cdef bint shape_ok = view.ndim == len(shape)
    cdef int i
    if shape_ok:
        for i in range(view.ndim):
            s = shape[i]
            if s is not None and <Py_ssize_t>s != view.shape[i]:
                shape_ok = False
    cdef bint contiguous = PyBuffer_IsContiguous(&view, b"C")
    cdef bint readonly = view.readonly
    cdef size_t p = <size_t>view.buf
    PyBuffer_Release(&view)
    if not dtype_ok:
        raise TypeError(f"{name}: expected dtype {dtype}, got {a.dtype}")
    if not shape_ok:
        want_s = "[" + ", ".join("?" if s is None else str(s) for s in shape) + "]"
        raise ValueError(f"{name}: expected shape {want_s}, got {list(a.shape)}")
    if not contiguous:
        raise ValueError(f"{name}: array must be C-contiguous (use numpy.ascontiguousarray)")
    if out and readonly:
        raise ValueError(f"{name}: output array is read-only")
    if p == 0:  # empty arrays may have a NULL pointer; give C a harmless one
        p = 1
    return p


cdef int _positive(str name, Py_ssize_t n) except -1:
    if n <= 0:
        raise ValueError(f"{name} must be positive, got {n}")
    return 0


cdef int _span(object a, size_t *lo, size_t *hi) except -1:
    """The bytes [lo, hi) of an array already checked C-contiguous by _addr
    (empty for None or an empty array)."""
    cdef Py_buffer view
    lo[0] = hi[0] = 0
    if a is not None:
        PyObject_GetBuffer(a, &view, PyBUF_RECORDS_RO)
        lo[0] = <size_t>view.buf
        hi[0] = lo[0] + <size_t>view.len
        PyBuffer_Release(&view)
    return 0


def _apart(outs, ins):
    """The one overlap check: raise unless every output (name, array) shares no byte
    with an input or with another output. The arrays were checked C-contiguous by
    _addr, so each one's bytes are one interval: the same answer as
    np.may_share_memory, at 0.1 us an array instead of 0.6 us a pair, which counts
    in sampling's per-pixel calls."""
    cdef size_t olo, ohi, ilo, ihi
    for j, (oname, o) in enumerate(outs):
        _span(o, &olo, &ohi)
        if olo == ohi:
            continue
        for iname, i in list(outs[j + 1:]) + list(ins):
            _span(i, &ilo, &ihi)
            if ilo < ihi and olo < ihi and ilo < ohi:
                raise ValueError(f"{oname} must not overlap {iname}")


cdef int _room(object a, str name, size_t need, str what) except -1:
    """The one size check of a scratch (work) buffer: at least `need` elements."""
    if <size_t>a.shape[0] < need:
        raise ValueError(f"{name}: needs {need} elements {what}, got {a.shape[0]}")
    return 0


cdef int _check_rc(int rc) except -1:
    if rc == c.SC_OK:
        return 0
    if rc == c.SC_ERR_NO_BLAS:
        raise RuntimeError("no BLAS sgemm registered: import simcore (it registers SciPy's "
                           "OpenBLAS) or call simcore.use_blas(path)")
    if rc == c.SC_ERR_TOO_LARGE:
        raise ValueError("a matrix dimension exceeds the BLAS 32-bit integer range")
    if rc == c.SC_ERR_THREADS:
        raise ValueError("a kernel was asked to run on fewer than 1 thread")
    if rc == c.SC_ERR_POSITION:
        raise ValueError("a position outside the key/value cache")
    if rc == c.SC_ERR_CACHE_LEN:
        raise ValueError(f"a cache length that is not a multiple of {KV_BLOCK}")
    if rc == c.SC_ERR_UNSUPPORTED:
        raise ValueError("this CPU does not run that vector level")
    if rc == c.SC_ERR_BAD_ARG:
        raise ValueError("an unknown BLAS interface, vector level or cache type")
    if rc == c.SC_ERR_RANGE:
        raise ValueError("a key or value that a float16 cache cannot hold (|x| >= 65520, or "
                         "not finite); sample with the float32 cache (kv_cache='float32')")
    if rc == c.SC_ERR_NO_MEMORY:
        raise MemoryError("a kernel could not allocate its packing buffer")
    raise RuntimeError(f"kernel failed with code {rc}")


# ---- BLAS and threads ------------------------------------------------------------

def blas_set(size_t fn, bint cblas):
    """Register an sgemm function pointer (Fortran sgemm_ or cblas_sgemm)."""
    if fn == 0:
        raise ValueError("null sgemm pointer")
    _check_rc(c.sc_blas_set(<void *>fn, c.SC_BLAS_CBLAS if cblas else c.SC_BLAS_F77))


# ---- vector level ------------------------------------------------------------------

ISA_NAMES = ("baseline", "avx2", "avx512", "neon")  # index = SC_ISA_* level
# the levels this build has (its target's), lowest first: ("baseline", "avx2", "avx512")
# on x86-64, ("neon",) on AArch64, ("baseline",) elsewhere
ISA_LEVELS = tuple(name for level, name in enumerate(ISA_NAMES) if c.sc_isa_built(level))


def isa_best():
    """The highest vector level this CPU runs, by name."""
    return ISA_NAMES[c.sc_isa_best()]


def isa_get():
    """The vector level the kernels run at, by name."""
    return ISA_NAMES[c.sc_isa_get()]


def isa_set(str name):
    """Run the kernels at vector level `name` (one of ISA_LEVELS, not above isa_best())."""
    if name not in ISA_LEVELS:
        raise ValueError(f"unknown vector level {name!r}; choose from {list(ISA_LEVELS)}")
    _check_rc(c.sc_isa_set(ISA_NAMES.index(name)))


cdef int _gemm(int prec, out, a, b, bint trans_a, bint trans_b, float alpha, float beta) except -1:
    """out = alpha * op(a) @ op(b) + beta * out, row-major, at precision prec (sc_gemm)."""
    if not (isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and a.ndim == 2 and b.ndim == 2):
        raise TypeError("a and b must be 2-D numpy arrays")
    cdef size_t M = a.shape[1] if trans_a else a.shape[0]
    cdef size_t K = a.shape[0] if trans_a else a.shape[1]
    cdef size_t N = b.shape[0] if trans_b else b.shape[1]
    cdef size_t Kb = b.shape[1] if trans_b else b.shape[0]
    if K != Kb:
        raise ValueError(f"inner dimensions differ: {K} vs {Kb}")
    cdef float *pa = <float *>_addr(a, "a", _F32, (None, None))
    cdef float *pb = <float *>_addr(b, "b", _F32, (None, None))
    cdef float *pc = <float *>_addr(out, "out", _F32, (M, N), out=True)
    _apart([("out", out)], [("a", a), ("b", b)])
    cdef size_t lda = a.shape[1], ldb = b.shape[1]
    cdef int rc
    with nogil:
        rc = c.sc_gemm(prec, trans_a, trans_b, M, N, K, alpha, pa, lda, pb, ldb, beta, pc, N)
    return _check_rc(rc)


def sgemm(out, a, b, bint trans_a=False, bint trans_b=False, float alpha=1.0, float beta=0.0):
    """out = alpha * op(a) @ op(b) + beta * out, row-major, through the registered BLAS."""
    _gemm(c.SC_PREC_F32, out, a, b, trans_a, trans_b, alpha, beta)


# ---- bfloat16 (csrc/bf16.c) ---------------------------------------------------------

def bf16_supported():
    """Whether this CPU has the bfloat16 dot products (AVX512_BF16) the bf16 kernels need."""
    return bool(c.sc_bf16_supported())


cdef int _prec(bint bf16) except -1:
    """The operands' precision for a product kernel: SC_PREC_BF16 (the CPU checked) or F32."""
    if not bf16:
        return c.SC_PREC_F32
    if not c.sc_bf16_supported():
        raise RuntimeError("bfloat16 products need bfloat16 dot products (AVX512_BF16, at the avx512 "
                           "vector level): this CPU has none, or the level is capped below avx512")
    return c.SC_PREC_BF16


def bf16_round(out, x):
    """out (uint16, x's shape) = the bfloat16 bits of x rounded to nearest even; NaN stays
    a (quiet) NaN, subnormals round like other numbers. Runs on any CPU."""
    cdef float *px = <float *>_addr(x, "x", _F32, x.shape if isinstance(x, np.ndarray) else ())
    cdef uint16_t *po = <uint16_t *>_addr(out, "out", _U16, x.shape, out=True)
    _apart([("out", out)], [("x", x)])
    cdef size_t n = x.size
    with nogil:
        c.bf16_round(po, px, n)


def bgemm(out, a, b, bint trans_a=False, bint trans_b=False, float alpha=1.0, float beta=0.0):
    """out = alpha * bf16(op(a)) @ bf16(op(b)) + beta * out: the operands rounded to
    bfloat16 (nearest even), every sum in float32. Needs AVX512_BF16 (bf16_supported())."""
    if not c.sc_bf16_supported():
        raise RuntimeError("bgemm needs bfloat16 dot products (AVX512_BF16, at the avx512 vector level): "
                           "this CPU has none, or the level is capped below avx512")
    _gemm(c.SC_PREC_BF16, out, a, b, trans_a, trans_b, alpha, beta)


def bf16_packed_shape(size_t K, size_t N):
    """The shape (uint32) of a weight [K, N] packed by bf16_pack: [K/2 rounded up, N]."""
    return ((K + 1) // 2, N)


def bf16_pack(out, w):
    """out (uint32, bf16_packed_shape(*w.shape)) = w [K, N] packed once for many bf16
    products with it (sampling): its rows in pairs, word [p, j] holding bf16(w[2p, j])
    in its low half and bf16(w[2p+1, j]) in its high half (zero past an odd K)."""
    _prec(True)
    cdef float *pw = <float *>_addr(w, "w", _F32, (None, None))
    cdef size_t K = w.shape[0], N = w.shape[1]
    cdef uint32_t *po = <uint32_t *>_addr(out, "out", _U32, bf16_packed_shape(K, N), out=True)
    _apart([("out", out)], [("w", w)])
    cdef int rc
    with nogil:
        rc = c.sc_bf16_pack(po, pw, K, N)
    _check_rc(rc)


cdef const uint32_t *_packed(object packed, str name, size_t K, size_t N) except NULL:
    """The words of a weight [K, N] packed by bf16_pack, its shape checked."""
    return <const uint32_t *>_addr(packed, name, _U32, bf16_packed_shape(K, N))


def linear_forward_packed(out, x, packed, float beta=0.0):
    """out [N, Cout] = bf16(x) [N, Cin] @ bf16(w) + beta * out (beta 0 or 1), float32
    sums, with w [Cin, Cout] packed by bf16_pack (of a w with x's and out's widths), on
    the calling thread."""
    _prec(True)
    if beta != 0.0 and beta != 1.0:
        raise ValueError(f"beta must be 0 or 1, got {beta}")
    cdef float *px = <float *>_addr(x, "x", _F32, (None, None))
    cdef size_t N = x.shape[0], Cin = x.shape[1]
    cdef float *po = <float *>_addr(out, "out", _F32, (N, None), out=True)
    cdef size_t Cout = out.shape[1]
    cdef const uint32_t *pp = _packed(packed, "packed", Cin, Cout)
    _apart([("out", out)], [("x", x), ("packed", packed)])
    cdef int rc
    with nogil:
        rc = c.sc_bf16_gemm_packed(po, px, pp, beta, N, Cout, Cin)
    _check_rc(rc)


def get_num_threads():
    """Threads our own loops use."""
    return c.sc_get_num_threads()


def threading_layer():
    """What runs our loops' threads: "openmp", or "pthreads" (simcore's own pool, in a
    build whose compiler had no OpenMP; see csrc/parallel.c)."""
    return c.sc_threading_layer().decode()


MAX_THREADS = 4096  # a hard ceiling here; simcore.set_threads applies the machine's own


def set_num_threads(int n):
    _positive("threads", n)
    if n > MAX_THREADS:
        raise ValueError(f"threads must be at most {MAX_THREADS}, got {n}")
    c.sc_set_num_threads(n)


# ---- embedding -------------------------------------------------------------------

def posenc(pe, size_t side):
    """pe[T, C] = the fixed 2-D sinusoidal position encoding (C % 4 == 0)."""
    cdef float *p = <float *>_addr(pe, "pe", _F32, (None, None), out=True)
    cdef size_t T = pe.shape[0], C = pe.shape[1]
    if C % 4 or C == 0:
        raise ValueError(f"position encoding width must be a positive multiple of 4, got {C}")
    _positive("side", side)
    with nogil:
        c.posenc_init(p, T, C, side)


def embedding_forward(out, tokens, wte, pe):
    cdef float *pw = <float *>_addr(wte, "wte", _F32, (256, None))
    cdef size_t C = wte.shape[1]
    cdef uint8_t *pt = <uint8_t *>_addr(tokens, "tokens", _U8, (None, None))
    cdef size_t B = tokens.shape[0], T = tokens.shape[1]
    _positive("batch size", B); _positive("sequence length", T)
    cdef float *pp = <float *>_addr(pe, "pe", _F32, (None, C))
    if pe.shape[0] < T:
        raise ValueError(f"pe: has {pe.shape[0]} positions, tokens need {T}")
    cdef float *po = <float *>_addr(out, "out", _F32, (B, T, C), out=True)
    _apart([("out", out)], [("wte", wte), ("pe", pe)])
    with nogil:
        c.embedding_forward(po, pt, pw, pp, B, T, C)


def embedding_backward(dwte, dout, tokens):
    cdef float *pd = <float *>_addr(dwte, "dwte", _F32, (256, None), out=True)
    cdef size_t C = dwte.shape[1]
    cdef uint8_t *pt = <uint8_t *>_addr(tokens, "tokens", _U8, (None, None))
    cdef size_t B = tokens.shape[0], T = tokens.shape[1]
    cdef float *pg = <float *>_addr(dout, "dout", _F32, (B, T, C))
    _apart([("dwte", dwte)], [("dout", dout)])
    with nogil:
        c.embedding_backward(pd, pg, pt, B, T, C)


def embedding_above_forward(out, tokens, wab, size_t shift):
    """out[b, t] += wab[tokens[b, t - shift]] for t >= shift."""
    cdef float *pw = <float *>_addr(wab, "wab", _F32, (256, None))
    cdef size_t C = wab.shape[1]
    cdef uint8_t *pt = <uint8_t *>_addr(tokens, "tokens", _U8, (None, None))
    cdef size_t B = tokens.shape[0], T = tokens.shape[1]
    _positive("batch size", B); _positive("sequence length", T)
    cdef float *po = <float *>_addr(out, "out", _F32, (B, T, C), out=True)
    _apart([("out", out)], [("wab", wab)])
    with nogil:
        c.embedding_above_forward(po, pt, pw, shift, B, T, C)


def embedding_above_backward(dwab, dout, tokens, size_t shift):
    """dwab[tokens[b, t - shift]] += dout[b, t] for t >= shift."""
    cdef float *pd = <float *>_addr(dwab, "dwab", _F32, (256, None), out=True)
    cdef size_t C = dwab.shape[1]
    cdef uint8_t *pt = <uint8_t *>_addr(tokens, "tokens", _U8, (None, None))
    cdef size_t B = tokens.shape[0], T = tokens.shape[1]
    cdef float *pg = <float *>_addr(dout, "dout", _F32, (B, T, C))
    _apart([("dwab", dwab)], [("dout", dout)])
    with nogil:
        c.embedding_above_backward(pd, pg, pt, shift, B, T, C)


def _labels(labels, size_t rows, str name="labels"):
    """A private copy of labels (1-D: every image's label, token 0 of its row), each
    checked to be a row of the class table. The kernel reads the copy: no output it
    writes and no other thread can change a label it indexes by."""
    labels = np.array(labels, dtype=np.uint8)  # a new array, owned here
    bad = np.flatnonzero(labels >= rows)
    if bad.size:
        where = f"tokens[{bad[0]}, 0]" if name == "tokens" else f"{name}[{bad[0]}]"
        raise ValueError(f"{where} = {labels[bad[0]]} is not a class of the "
                         f"{rows}-row class table")
    return labels


def embedding_class_forward(out, tokens, wcl):
    """out[b, t] += wcl[tokens[b, 0]] at every t."""
    cdef float *pw = <float *>_addr(wcl, "wcl", _F32, (None, None))
    cdef size_t R = wcl.shape[0], C = wcl.shape[1]
    _addr(tokens, "tokens", _U8, (None, None))
    cdef size_t B = tokens.shape[0], T = tokens.shape[1]
    _positive("batch size", B); _positive("sequence length", T)
    labels = _labels(tokens[:, 0], R, "tokens")
    cdef uint8_t *pl = <uint8_t *>_addr(labels, "labels", _U8, (B,))
    cdef float *po = <float *>_addr(out, "out", _F32, (B, T, C), out=True)
    _apart([("out", out)], [("wcl", wcl)])
    with nogil:
        c.embedding_class_forward(po, pl, pw, B, T, C)


def embedding_class_backward(dwcl, dout, tokens):
    """dwcl[tokens[b, 0]] += dout[b, t] summed over t."""
    cdef float *pd = <float *>_addr(dwcl, "dwcl", _F32, (None, None), out=True)
    cdef size_t R = dwcl.shape[0], C = dwcl.shape[1]
    _addr(tokens, "tokens", _U8, (None, None))
    cdef size_t B = tokens.shape[0], T = tokens.shape[1]
    _positive("batch size", B); _positive("sequence length", T)
    labels = _labels(tokens[:, 0], R, "tokens")
    cdef uint8_t *pl = <uint8_t *>_addr(labels, "labels", _U8, (B,))
    cdef float *pg = <float *>_addr(dout, "dout", _F32, (B, T, C))
    _apart([("dwcl", dwcl)], [("dout", dout)])
    with nogil:
        c.embedding_class_backward(pd, pg, pl, B, T, C)


def embedding_step(x, tokens, above, labels, wte, pe_t, wab, wcl):
    """Sampling's one-position embedding: x[n] = wte[tokens[n]] + pe_t (+ wab[above[n]])
    (+ wcl[labels[n]]), the sum the training pass makes at that position. above and wab,
    labels and wcl: both arrays or both None."""
    cdef float *pw = <float *>_addr(wte, "wte", _F32, (256, None))
    cdef size_t C = wte.shape[1]
    cdef uint8_t *pt = <uint8_t *>_addr(tokens, "tokens", _U8, (None,))
    cdef size_t N = tokens.shape[0]
    _positive("batch size", N)
    cdef float *pp = <float *>_addr(pe_t, "pe_t", _F32, (C,))
    cdef float *po = <float *>_addr(x, "x", _F32, (N, C), out=True)
    if (above is None) != (wab is None):
        raise ValueError("above and wab: both arrays or both None")
    if (labels is None) != (wcl is None):
        raise ValueError("labels and wcl: both arrays or both None")
    cdef uint8_t *pa = NULL
    cdef uint8_t *pl = NULL
    cdef float *pab = NULL
    cdef float *pcl = NULL
    if wab is not None:
        pab = <float *>_addr(wab, "wab", _F32, (256, C))
        pa = <uint8_t *>_addr(above, "above", _U8, (N,))
    if wcl is not None:
        pcl = <float *>_addr(wcl, "wcl", _F32, (None, C))
        _addr(labels, "labels", _U8, (N,))
        labels = _labels(labels, wcl.shape[0])
        pl = <uint8_t *>_addr(labels, "labels", _U8, (N,))
    _apart([("x", x)], [("wte", wte), ("pe_t", pe_t), ("wab", wab), ("wcl", wcl)])
    with nogil:
        c.embedding_step(po, pt, pa, pl, pw, pp, pab, pcl, N, C)


# ---- rmsnorm ---------------------------------------------------------------------

def rmsnorm_forward(out, rstd, x, w):
    cdef float *px = <float *>_addr(x, "x", _F32, (None, None))
    cdef size_t N = x.shape[0], C = x.shape[1]
    cdef float *pw = <float *>_addr(w, "w", _F32, (C,))
    cdef float *po = <float *>_addr(out, "out", _F32, (N, C), out=True)
    cdef float *pr = <float *>_addr(rstd, "rstd", _F32, (N,), out=True)
    _apart([("out", out), ("rstd", rstd)], [("x", x), ("w", w)])
    with nogil:
        c.rmsnorm_forward(po, pr, px, pw, N, C)


def rmsnorm_backward(dx, dw, dout, x, w, rstd):
    cdef float *px = <float *>_addr(x, "x", _F32, (None, None))
    cdef size_t N = x.shape[0], C = x.shape[1]
    cdef float *pw = <float *>_addr(w, "w", _F32, (C,))
    cdef float *pr = <float *>_addr(rstd, "rstd", _F32, (N,))
    cdef float *pg = <float *>_addr(dout, "dout", _F32, (N, C))
    cdef float *pdx = <float *>_addr(dx, "dx", _F32, (N, C), out=True)
    cdef float *pdw = <float *>_addr(dw, "dw", _F32, (C,), out=True)
    _apart([("dx", dx), ("dw", dw)], [("dout", dout), ("x", x), ("w", w), ("rstd", rstd)])
    with nogil:
        c.rmsnorm_backward(pdx, pdw, pg, px, pw, pr, N, C)


# ---- linear ----------------------------------------------------------------------

def linear_forward(out, x, w, float beta=0.0, bint bf16=False):
    """out = x @ w + beta * out (bf16: the operands rounded to bfloat16, float32 sums)"""
    cdef float *px = <float *>_addr(x, "x", _F32, (None, None))
    cdef size_t N = x.shape[0], Cin = x.shape[1]
    cdef float *pw = <float *>_addr(w, "w", _F32, (Cin, None))
    cdef size_t Cout = w.shape[1]
    cdef float *po = <float *>_addr(out, "out", _F32, (N, Cout), out=True)
    _apart([("out", out)], [("x", x), ("w", w)])
    cdef int prec = _prec(bf16)
    cdef int rc
    with nogil:
        rc = c.linear_forward(po, px, pw, beta, prec, N, Cin, Cout)
    _check_rc(rc)


def linear_backward(dx, dw, dout, x, w, bint bf16=False):
    """dx += dout @ w.T (skipped when dx is None); dw += x.T @ dout"""
    cdef float *px = <float *>_addr(x, "x", _F32, (None, None))
    cdef size_t N = x.shape[0], Cin = x.shape[1]
    cdef float *pw = <float *>_addr(w, "w", _F32, (Cin, None))
    cdef size_t Cout = w.shape[1]
    cdef float *pg = <float *>_addr(dout, "dout", _F32, (N, Cout))
    cdef float *pdx = NULL
    if dx is not None:
        pdx = <float *>_addr(dx, "dx", _F32, (N, Cin), out=True)
    cdef float *pdw = <float *>_addr(dw, "dw", _F32, (Cin, Cout), out=True)
    _apart([("dx", dx), ("dw", dw)], [("dout", dout), ("x", x), ("w", w)])
    cdef int prec = _prec(bf16)
    cdef int rc
    with nogil:
        rc = c.linear_backward(pdx, pdw, pg, px, pw, prec, N, Cin, Cout)
    _check_rc(rc)


# ---- SiLU and MLP ----------------------------------------------------------------

def silu_forward(out, x):
    cdef float *px = <float *>_addr(x, "x", _F32, x.shape if isinstance(x, np.ndarray) else ())
    cdef float *po = <float *>_addr(out, "out", _F32, x.shape, out=True)
    cdef size_t n = x.size
    with nogil:
        c.silu_forward(po, px, n)


def silu_backward(dx, dout, x):
    cdef float *px = <float *>_addr(x, "x", _F32, x.shape if isinstance(x, np.ndarray) else ())
    cdef float *pg = <float *>_addr(dout, "dout", _F32, x.shape)
    cdef float *pd = <float *>_addr(dx, "dx", _F32, x.shape, out=True)
    _apart([("dx", dx)], [("dout", dout), ("x", x)])
    cdef size_t n = x.size
    with nogil:
        c.silu_backward(pd, pg, px, n)


def mlp_forward(out, h_pre, h_act, x, w1, w2, float beta=0.0, bint bf16=False):
    """h_pre = x @ w1; h_act = silu(h_pre); out = h_act @ w2 + beta * out"""
    cdef float *px = <float *>_addr(x, "x", _F32, (None, None))
    cdef size_t N = x.shape[0], C = x.shape[1]
    cdef float *pw1 = <float *>_addr(w1, "w1", _F32, (C, None))
    cdef size_t H = w1.shape[1]
    cdef float *pw2 = <float *>_addr(w2, "w2", _F32, (H, None))
    cdef size_t Cout = w2.shape[1]
    cdef float *ph = <float *>_addr(h_pre, "h_pre", _F32, (N, H), out=True)
    cdef float *pa = <float *>_addr(h_act, "h_act", _F32, (N, H), out=True)
    cdef float *po = <float *>_addr(out, "out", _F32, (N, Cout), out=True)
    _apart([("out", out), ("h_pre", h_pre), ("h_act", h_act)],
                [("x", x), ("w1", w1), ("w2", w2), ("h_pre", None)])
    cdef int prec = _prec(bf16)
    cdef int rc
    with nogil:
        rc = c.mlp_forward(po, ph, pa, px, pw1, pw2, beta, prec, N, C, H, Cout)
    _check_rc(rc)


def mlp_backward(dx, dw1, dw2, dh, h_act, dout, x, h_pre, w1, w2, bint bf16=False):
    """dx += ..., dw1 += ..., dw2 += ...; dh and h_act are [N, H] scratch."""
    cdef float *px = <float *>_addr(x, "x", _F32, (None, None))
    cdef size_t N = x.shape[0], C = x.shape[1]
    cdef float *pw1 = <float *>_addr(w1, "w1", _F32, (C, None))
    cdef size_t H = w1.shape[1]
    cdef float *pw2 = <float *>_addr(w2, "w2", _F32, (H, None))
    cdef size_t Cout = w2.shape[1]
    cdef float *php = <float *>_addr(h_pre, "h_pre", _F32, (N, H))
    cdef float *pg = <float *>_addr(dout, "dout", _F32, (N, Cout))
    cdef float *pdx = <float *>_addr(dx, "dx", _F32, (N, C), out=True)
    cdef float *pdw1 = <float *>_addr(dw1, "dw1", _F32, (C, H), out=True)
    cdef float *pdw2 = <float *>_addr(dw2, "dw2", _F32, (H, Cout), out=True)
    cdef float *pdh = <float *>_addr(dh, "dh", _F32, (N, H), out=True)
    cdef float *pa = <float *>_addr(h_act, "h_act", _F32, (N, H), out=True)
    outs = [("dx", dx), ("dw1", dw1), ("dw2", dw2), ("dh", dh), ("h_act", h_act)]
    _apart(outs, [("dout", dout), ("x", x), ("h_pre", h_pre), ("w1", w1), ("w2", w2)])
    cdef int prec = _prec(bf16)
    cdef int rc
    with nogil:
        rc = c.mlp_backward(pdx, pdw1, pdw2, pdh, pa, pg, px, php, pw1, pw2, prec, N, C, H, Cout)
    _check_rc(rc)


# ---- attention -------------------------------------------------------------------

def attention_scratch_size(size_t T, size_t C, size_t n_heads, int threads):
    """Floats of scratch attention_forward/backward need for `threads` threads."""
    return c.attention_scratch_floats(T, C, n_heads) * threads


cdef tuple _attn_sizes(q, int n_heads):
    _addr(q, "q", _F32, (None, None, None))
    cdef size_t B = q.shape[0], T = q.shape[1], C = q.shape[2]
    _positive("batch size", B); _positive("sequence length", T); _positive("n_heads", n_heads)
    if C % n_heads:
        raise ValueError(f"width {C} is not divisible by n_heads={n_heads}")
    return B, T, C


def attention_forward(out, lse, scratch, q, k, v, int n_heads, bint bf16=False):
    """Causal attention: out[B,T,C], lse[B,NH,T] from q, k, v [B,T,C]."""
    cdef size_t B, T, C
    B, T, C = _attn_sizes(q, n_heads)
    cdef float *pq = <float *>_addr(q, "q", _F32, (B, T, C))
    cdef float *pk = <float *>_addr(k, "k", _F32, (B, T, C))
    cdef float *pv = <float *>_addr(v, "v", _F32, (B, T, C))
    cdef float *po = <float *>_addr(out, "out", _F32, (B, T, C), out=True)
    cdef float *pl = <float *>_addr(lse, "lse", _F32, (B, n_heads, T), out=True)
    cdef float *ps = <float *>_addr(scratch, "scratch", _F32, (None,), out=True)
    cdef size_t per = c.attention_scratch_floats(T, C, n_heads)
    _room(scratch, "scratch", per, "(one thread's share)")
    cdef int threads = min(c.sc_get_num_threads(), scratch.shape[0] // per)
    _apart([("out", out), ("lse", lse), ("scratch", scratch)],
                [("q", q), ("k", k), ("v", v)])
    cdef int prec = _prec(bf16)
    cdef int rc
    with nogil:
        rc = c.attention_forward(po, pl, ps, pq, pk, pv, prec, B, T, C, n_heads, threads)
    _check_rc(rc)


def attention_backward(dq, dk, dv, scratch, dout, q, k, v, out, lse, int n_heads, bint bf16=False):
    """dq, dk, dv += gradients of causal attention (lse from the forward pass)."""
    cdef size_t B, T, C
    B, T, C = _attn_sizes(q, n_heads)
    shape = (B, T, C)
    cdef float *pq = <float *>_addr(q, "q", _F32, shape)
    cdef float *pk = <float *>_addr(k, "k", _F32, shape)
    cdef float *pv = <float *>_addr(v, "v", _F32, shape)
    cdef float *po = <float *>_addr(out, "out", _F32, shape)
    cdef float *pg = <float *>_addr(dout, "dout", _F32, shape)
    cdef float *pl = <float *>_addr(lse, "lse", _F32, (B, n_heads, T))
    cdef float *pdq = <float *>_addr(dq, "dq", _F32, shape, out=True)
    cdef float *pdk = <float *>_addr(dk, "dk", _F32, shape, out=True)
    cdef float *pdv = <float *>_addr(dv, "dv", _F32, shape, out=True)
    cdef float *ps = <float *>_addr(scratch, "scratch", _F32, (None,), out=True)
    cdef size_t per = c.attention_scratch_floats(T, C, n_heads)
    _room(scratch, "scratch", per, "(one thread's share)")
    cdef int threads = min(c.sc_get_num_threads(), scratch.shape[0] // per)
    outs = [("dq", dq), ("dk", dk), ("dv", dv), ("scratch", scratch)]
    _apart(outs, [("dout", dout), ("q", q), ("k", k), ("v", v), ("out", out), ("lse", lse)])
    cdef int prec = _prec(bf16)
    cdef int rc
    with nogil:
        rc = c.attention_backward(pdq, pdk, pdv, ps, pg, pq, pk, pv, po, pl, prec, B, T, C, n_heads, threads)
    _check_rc(rc)


# ---- sampling: one position at a time with a key/value cache (csrc/decode.c) ------

KV_BLOCK = c.SC_KV_BLOCK  # positions per key block; cache lengths are multiples of it


def kv_cache_shapes(size_t B, size_t Tmax, size_t C, size_t NH):
    """Shapes of one layer's (kcache, vcache) for B sequences of up to Tmax positions
    (Tmax is rounded up to a multiple of KV_BLOCK)."""
    _positive("batch size", B); _positive("n_heads", NH); _positive("Tmax", Tmax)
    if C % NH:
        raise ValueError(f"C={C} is not divisible by n_heads={NH}")
    cdef size_t nb = (Tmax + KV_BLOCK - 1) // KV_BLOCK, d = C // NH
    return (B, NH, nb, d, KV_BLOCK), (B, NH, nb * KV_BLOCK, d)


cdef size_t _cache_len(kcache, vcache, size_t pos, size_t *B, size_t *NH, size_t *C,
                       void **pk, void **pv, int *kv_type) except 0:
    """Check a (kcache, vcache) pair against each other and position pos against
    them (the one position check); return Tmax, and the caches' addresses and
    element type (float32, or float16: both the same)."""
    half = isinstance(vcache, np.ndarray) and vcache.dtype == _F16
    dt = _F16 if half else _F32
    kv_type[0] = c.SC_KV_F16 if half else c.SC_KV_F32
    pv[0] = <void *>_addr(vcache, "vcache", dt, (None, None, None, None), out=True)
    B[0], NH[0] = vcache.shape[0], vcache.shape[1]
    cdef size_t Tmax = vcache.shape[2], d = vcache.shape[3]
    C[0] = NH[0] * d
    _positive("batch size", B[0]); _positive("n_heads", NH[0]); _positive("head width", d)
    if Tmax == 0 or Tmax % KV_BLOCK:
        raise ValueError(f"vcache: the cache length must be a positive multiple of {KV_BLOCK}, got {Tmax}")
    pk[0] = <void *>_addr(kcache, "kcache", dt, (B[0], NH[0], Tmax // KV_BLOCK, d, KV_BLOCK), out=True)
    _apart([("kcache", kcache), ("vcache", vcache)], [])
    if pos >= Tmax:
        raise ValueError(f"pos={pos} outside the cache of {Tmax} positions")
    return Tmax


def kv_cache_write(kcache, vcache, k, v, size_t pos):
    """Store k, v [B, C] as position pos of the caches (shapes: kv_cache_shapes;
    float32, or float16: rounded to nearest even)."""
    cdef size_t B, NH, C
    cdef void *pkc
    cdef void *pvc
    cdef int kt, rc
    cdef size_t Tmax = _cache_len(kcache, vcache, pos, &B, &NH, &C, &pkc, &pvc, &kt)
    cdef float *pk = <float *>_addr(k, "k", _F32, (B, C))
    cdef float *pv = <float *>_addr(v, "v", _F32, (B, C))
    _apart([("kcache", kcache), ("vcache", vcache)], [("k", k), ("v", v)])
    with nogil:
        rc = c.kv_cache_write(pkc, pvc, kt, pk, pv, pos, B, Tmax, C, NH)
    _check_rc(rc)


cdef size_t _prefix_len(kcache, vcache, k, size_t *B, size_t *NH, size_t *C,
                       void **pk, void **pv, int *kv_type) except 0:
    """Check caches for a prefix k [B, T, C] (the one check of a prefill): the caches'
    sequences and width are k's, and T fits in them; return T."""
    _addr(k, "k", _F32, (None, None, None))
    cdef size_t T = k.shape[1]
    _positive("prefix length", T)
    _cache_len(kcache, vcache, T - 1, B, NH, C, pk, pv, kv_type)
    _addr(k, "k", _F32, (B[0], T, C[0]))
    return T


def kv_cache_fill(kcache, vcache, k, v):
    """Store k, v [B, T, C] (the training pass's layout) as positions 0..T-1 of the caches
    at once: the same elements as T calls of kv_cache_write; ValueError (nothing stored)
    if a float16 cache cannot hold a value."""
    cdef size_t B, NH, C
    cdef void *pkc
    cdef void *pvc
    cdef int kt, rc
    cdef size_t T = _prefix_len(kcache, vcache, k, &B, &NH, &C, &pkc, &pvc, &kt)
    cdef size_t Tmax = vcache.shape[2]
    cdef float *pk = <float *>_addr(k, "k", _F32, (B, T, C))
    cdef float *pv = <float *>_addr(v, "v", _F32, (B, T, C))
    _apart([("kcache", kcache), ("vcache", vcache)], [("k", k), ("v", v)])
    with nogil:
        rc = c.kv_cache_fill(pkc, pvc, kt, pk, pv, T, B, Tmax, C, NH)
    _check_rc(rc)


def attention_decode_scratch_size(size_t T, int threads):
    return c.attention_decode_scratch_floats(T) * threads


def attention_decode(out, scratch, q, kcache, vcache, size_t pos):
    """One query per sequence against cached keys/values of positions 0..pos.

    q, out: [B, C]; kcache, vcache: see kv_cache_shapes; C = NH * d.
    """
    cdef size_t B, NH, C
    cdef void *pkc
    cdef void *pvc
    cdef int kt
    cdef size_t Tmax = _cache_len(kcache, vcache, pos, &B, &NH, &C, &pkc, &pvc, &kt)
    cdef float *pq = <float *>_addr(q, "q", _F32, (B, C))
    cdef float *po = <float *>_addr(out, "out", _F32, (B, C), out=True)
    cdef float *ps = <float *>_addr(scratch, "scratch", _F32, (None,), out=True)
    _room(scratch, "scratch", Tmax, "(one thread's share)")
    cdef int threads = min(c.sc_get_num_threads(), scratch.shape[0] // Tmax)
    _apart([("out", out), ("scratch", scratch)], [("q", q), ("kcache", kcache), ("vcache", vcache)])
    cdef int rc
    with nogil:
        rc = c.attention_decode(po, ps, pq, pkc, pvc, kt, pos, B, Tmax, C, NH, threads)
    _check_rc(rc)


# ---- one transformer block (csrc/block.c) ------------------------------------------

BLOCK_TENSORS = ("attn_norm", "wq", "wk", "wv", "wo", "mlp_norm", "w1", "w2")


cdef size_t _block_weights(c.BlockWeights *w, object weights, size_t C) except 0:
    """Fill w from weights (a tuple in BLOCK_TENSORS' order, the norm gains both None
    without a norm), each checked against the width C; return the hidden width H."""
    if not isinstance(weights, tuple) or len(weights) != 8:
        raise TypeError(f"weights: expected a tuple of 8 arrays {BLOCK_TENSORS}")
    attn_norm, wq, wk, wv, wo, mlp_norm, w1, w2 = weights
    if (attn_norm is None) != (mlp_norm is None):
        raise ValueError("weights: attn_norm and mlp_norm must both be arrays or both None")
    w.attn_norm = NULL if attn_norm is None else <float *>_addr(attn_norm, "attn_norm", _F32, (C,))
    w.mlp_norm = NULL if mlp_norm is None else <float *>_addr(mlp_norm, "mlp_norm", _F32, (C,))
    w.wq = <float *>_addr(wq, "wq", _F32, (C, C))
    w.wk = <float *>_addr(wk, "wk", _F32, (C, C))
    w.wv = <float *>_addr(wv, "wv", _F32, (C, C))
    w.wo = <float *>_addr(wo, "wo", _F32, (C, C))
    w.w1 = <float *>_addr(w1, "w1", _F32, (C, None))
    cdef size_t H = w1.shape[1]
    _positive("hidden width", H)
    w.w2 = <float *>_addr(w2, "w2", _F32, (H, C))
    return H


cdef int _block_grads(c.BlockGrads *g, object grads, object weights, size_t C, size_t H) except -1:
    """Fill g from grads (BLOCK_TENSORS' order), each the shape of its weight."""
    if not isinstance(grads, tuple) or len(grads) != 8:
        raise TypeError(f"grads: expected a tuple of 8 arrays {BLOCK_TENSORS}")
    attn_norm, wq, wk, wv, wo, mlp_norm, w1, w2 = grads
    if (attn_norm is None) != (weights[0] is None) or (mlp_norm is None) != (weights[5] is None):
        raise ValueError("grads: the norm gains' gradients must be arrays exactly when the gains are")
    g.attn_norm = NULL if attn_norm is None else <float *>_addr(attn_norm, "d attn_norm", _F32, (C,), out=True)
    g.mlp_norm = NULL if mlp_norm is None else <float *>_addr(mlp_norm, "d mlp_norm", _F32, (C,), out=True)
    g.wq = <float *>_addr(wq, "d wq", _F32, (C, C), out=True)
    g.wk = <float *>_addr(wk, "d wk", _F32, (C, C), out=True)
    g.wv = <float *>_addr(wv, "d wv", _F32, (C, C), out=True)
    g.wo = <float *>_addr(wo, "d wo", _F32, (C, C), out=True)
    g.w1 = <float *>_addr(w1, "d w1", _F32, (C, H), out=True)
    g.w2 = <float *>_addr(w2, "d w2", _F32, (H, C), out=True)
    return 0


def block_acts_size(bint has_norm, size_t B, size_t T, size_t C, size_t H, size_t n_heads):
    """Floats of one block's activations (block_forward's acts) for B x T positions."""
    return c.block_acts_floats(has_norm, B, T, C, H, n_heads)


def block_scratch_size(size_t B, size_t T, size_t C, size_t H, size_t n_heads, int threads):
    """Floats of scratch block_forward/backward need for `threads` threads."""
    _positive("threads", threads)
    return c.block_scratch_floats(B, T, C, H, n_heads, threads)


cdef tuple _block_sizes(x, weights, int n_heads, c.BlockWeights *w):
    cdef size_t B, T, C
    B, T, C = _attn_sizes(x, n_heads)
    cdef size_t H = _block_weights(w, weights, C)
    return B, T, C, H


def block_forward(xout, acts, scratch, x, weights, int n_heads, bint bf16=False):
    """One block over all positions: xout [B,T,C] from x [B,T,C]; acts (block_acts_size
    floats) keeps what block_backward needs; weights: BLOCK_TENSORS' tuple."""
    cdef c.BlockWeights w
    cdef size_t B, T, C, H
    B, T, C, H = _block_sizes(x, weights, n_heads, &w)
    cdef float *px = <float *>_addr(x, "x", _F32, (B, T, C))
    cdef float *po = <float *>_addr(xout, "xout", _F32, (B, T, C), out=True)
    cdef float *pa = <float *>_addr(acts, "acts", _F32, (c.block_acts_floats(w.attn_norm != NULL, B, T, C, H, n_heads),),
                                    out=True)
    cdef float *ps = <float *>_addr(scratch, "scratch", _F32, (None,), out=True)
    cdef int threads = c.sc_get_num_threads()
    _room(scratch, "scratch", c.block_scratch_floats(B, T, C, H, n_heads, threads), f"for {threads} threads")
    _apart([("xout", xout), ("acts", acts), ("scratch", scratch)],
           [("x", x)] + list(zip(BLOCK_TENSORS, weights)))
    cdef int prec = _prec(bf16)
    cdef int rc
    with nogil:
        rc = c.block_forward(po, pa, ps, px, &w, prec, B, T, C, H, n_heads, threads)
    _check_rc(rc)


def block_backward(dx, grads, scratch, x, acts, weights, int n_heads, bint bf16=False):
    """dx [B,T,C]: d loss / d xout in, d loss / d x out; grads (BLOCK_TENSORS' order)
    += the weights' gradients. x, acts: block_forward's input and activations."""
    cdef c.BlockWeights w
    cdef c.BlockGrads g
    cdef size_t B, T, C, H
    B, T, C, H = _block_sizes(x, weights, n_heads, &w)
    _block_grads(&g, grads, weights, C, H)
    cdef float *px = <float *>_addr(x, "x", _F32, (B, T, C))
    cdef float *pd = <float *>_addr(dx, "dx", _F32, (B, T, C), out=True)
    cdef float *pa = <float *>_addr(acts, "acts", _F32, (c.block_acts_floats(w.attn_norm != NULL, B, T, C, H, n_heads),))
    cdef float *ps = <float *>_addr(scratch, "scratch", _F32, (None,), out=True)
    cdef int threads = c.sc_get_num_threads()
    _room(scratch, "scratch", c.block_scratch_floats(B, T, C, H, n_heads, threads), f"for {threads} threads")
    outs = [("dx", dx), ("scratch", scratch)] + [(f"d {n}", a) for n, a in zip(BLOCK_TENSORS, grads)]
    _apart(outs, [("x", x), ("acts", acts)] + list(zip(BLOCK_TENSORS, weights)))
    cdef int prec = _prec(bf16)
    cdef int rc
    with nogil:
        rc = c.block_backward(pd, &g, ps, px, pa, &w, prec, B, T, C, H, n_heads, threads)
    _check_rc(rc)


def block_decode_scratch_size(size_t B, size_t C, size_t H, size_t Tmax, int threads):
    _positive("threads", threads)
    return c.block_decode_scratch_floats(B, C, H, Tmax, threads)


def block_prefill(xout, kcache, vcache, acts, scratch, x, weights):
    """Completion's prefill: the block over positions 0..T-1 of every sequence, xout
    [B,T,C] from x [B,T,C] (block_forward in float32), its keys and values stored as
    positions 0..T-1 of this block's caches (kv_cache_shapes; T at most their length).
    acts and scratch: block_acts_size and block_scratch_size floats (scratch only);
    weights: BLOCK_TENSORS' tuple."""
    cdef size_t B, NH, C
    cdef void *pkc
    cdef void *pvc
    cdef int kt
    cdef size_t T = _prefix_len(kcache, vcache, x, &B, &NH, &C, &pkc, &pvc, &kt)
    cdef size_t Tmax = vcache.shape[2]
    cdef c.BlockWeights w
    cdef size_t H = _block_weights(&w, weights, C)
    cdef float *px = <float *>_addr(x, "x", _F32, (B, T, C))
    cdef float *po = <float *>_addr(xout, "xout", _F32, (B, T, C), out=True)
    cdef float *pa = <float *>_addr(acts, "acts", _F32, (None,), out=True)
    _room(acts, "acts", c.block_acts_floats(w.attn_norm != NULL, B, T, C, H, NH), f"for {B} x {T} positions")
    cdef float *ps = <float *>_addr(scratch, "scratch", _F32, (None,), out=True)
    cdef int threads = c.sc_get_num_threads()
    _room(scratch, "scratch", c.block_scratch_floats(B, T, C, H, NH, threads), f"for {threads} threads")
    _apart([("xout", xout), ("kcache", kcache), ("vcache", vcache), ("acts", acts), ("scratch", scratch)],
           [("x", x)] + list(zip(BLOCK_TENSORS, weights)))
    cdef int rc
    with nogil:
        rc = c.block_prefill(po, pkc, pvc, kt, pa, ps, px, &w, B, T, Tmax, C, H, NH, threads)
    _check_rc(rc)


PACKED_TENSORS = ("wq", "wk", "wv", "wo", "w1", "w2")  # block_decode's packed weights


def block_decode(x, kcache, vcache, scratch, weights, size_t pos, packed=None):
    """One transformer block for position pos of every sequence, with the cache.

    x: [B, C], updated in place; kcache, vcache: this block's caches (see
    kv_cache_shapes), positions 0..pos-1 filled, pos written here; scratch:
    block_decode_scratch_size floats for the current thread count; weights:
    BLOCK_TENSORS' tuple, the norm gains None when the model has none. packed: None
    (float32 products), or the tuple of PACKED_TENSORS packed by bf16_pack (the
    projections and the MLP with bfloat16 operands; the attention over the cache stays
    at the cache's precision).
    """
    cdef size_t B, NH, C
    cdef void *pkc
    cdef void *pvc
    cdef int kt
    cdef size_t Tmax = _cache_len(kcache, vcache, pos, &B, &NH, &C, &pkc, &pvc, &kt)
    cdef c.BlockWeights w
    cdef size_t H = _block_weights(&w, weights, C)
    cdef c.BlockPacked p
    cdef c.BlockPacked *pp = NULL
    if packed is not None:
        _prec(True)
        if not isinstance(packed, tuple) or len(packed) != 6:
            raise TypeError(f"packed: expected a tuple of 6 arrays {PACKED_TENSORS}")
        p.wq = _packed(packed[0], "packed wq", C, C)
        p.wk = _packed(packed[1], "packed wk", C, C)
        p.wv = _packed(packed[2], "packed wv", C, C)
        p.wo = _packed(packed[3], "packed wo", C, C)
        p.w1 = _packed(packed[4], "packed w1", C, H)
        p.w2 = _packed(packed[5], "packed w2", H, C)
        pp = &p
    cdef float *px = <float *>_addr(x, "x", _F32, (B, C), out=True)
    cdef float *ps = <float *>_addr(scratch, "scratch", _F32, (None,), out=True)
    cdef int threads = c.sc_get_num_threads()
    cdef size_t need = c.block_decode_scratch_floats(B, C, H, Tmax, threads)
    _room(scratch, "scratch", need, f"for {threads} threads")
    outs = [("x", x), ("kcache", kcache), ("vcache", vcache), ("scratch", scratch)]
    _apart(outs, list(zip(BLOCK_TENSORS, weights))
           + ([] if packed is None else list(zip(PACKED_TENSORS, packed))))
    cdef int rc
    with nogil:
        rc = c.block_decode(px, pkc, pvc, kt, ps, &w, pp, pos, B, Tmax, C, H, NH, threads)
    _check_rc(rc)


def sample_tokens(out, work, logits, u, double temperature, int top_k=0):
    """out[b] = a token drawn from softmax(logits[b] / temperature) with the uniform
    u[b] in [0,1) (argmax when temperature == 0; top_k > 0 keeps the k largest).
    The C twin of simcore.generate.sample_from_logits. work: float64 [2 * V]."""
    cdef float *pz = <float *>_addr(logits, "logits", _F32, (None, None))
    cdef size_t B = logits.shape[0], V = logits.shape[1]
    _positive("batch size", B)
    if V == 0 or V > 256:
        raise ValueError(f"logits: expected 1..256 classes, got {V}")
    if not (temperature >= 0 and temperature < float("inf")):
        raise ValueError(f"temperature must be a finite number >= 0, got {temperature}")
    if top_k < 0:
        raise ValueError(f"top_k must be >= 0 (0 = all), got {top_k}")
    cdef uint8_t *po = <uint8_t *>_addr(out, "out", _U8, (B,), out=True)
    cdef double *pu = <double *>_addr(u, "u", _F64, (B,))
    cdef double *pw = <double *>_addr(work, "work", _F64, (None,), out=True)
    _room(work, "work", 2 * V, f"for {V} classes")
    _apart([("out", out), ("work", work)], [("logits", logits), ("u", u)])
    with nogil:
        c.sample_tokens(po, pw, pz, pu, temperature, top_k, B, V)


# ---- cross-entropy ---------------------------------------------------------------

def xent_forward(losses, lse, logits, tokens):
    """losses[B,T-1] = -log softmax(logits[:, :-1])[next token]; lse[B,T] kept for backward."""
    cdef float *pz = <float *>_addr(logits, "logits", _F32, (None, None, None))
    cdef size_t B = logits.shape[0], T = logits.shape[1], V = logits.shape[2]
    _positive("batch size", B); _positive("sequence length", T)
    if V != 256:
        raise ValueError(f"logits: expected 256 classes in the last axis, got {V}")
    cdef uint8_t *pt = <uint8_t *>_addr(tokens, "tokens", _U8, (B, T))
    cdef float *pl = <float *>_addr(losses, "losses", _F32, (B, T - 1), out=True)
    cdef float *pe = <float *>_addr(lse, "lse", _F32, (B, T), out=True)
    _apart([("losses", losses), ("lse", lse)], [("logits", logits)])
    with nogil:
        c.xent_forward(pl, pe, pz, pt, B, T, V)


def xent_backward(dlogits, logits, lse, tokens, float scale):
    cdef float *pz = <float *>_addr(logits, "logits", _F32, (None, None, 256))
    cdef size_t B = logits.shape[0], T = logits.shape[1], V = 256
    cdef uint8_t *pt = <uint8_t *>_addr(tokens, "tokens", _U8, (B, T))
    cdef float *pe = <float *>_addr(lse, "lse", _F32, (B, T))
    cdef float *pd = <float *>_addr(dlogits, "dlogits", _F32, (B, T, V), out=True)
    _apart([("dlogits", dlogits)], [("logits", logits), ("lse", lse)])
    with nogil:
        c.xent_backward(pd, pz, pe, pt, scale, B, T, V)


# ---- AdamW -----------------------------------------------------------------------

def grad_sumsq(g):
    """Sum of squares of a float32 array (float64 accumulation)."""
    cdef float *p = <float *>_addr(g, "g", _F32, g.shape if isinstance(g, np.ndarray) else ())
    cdef size_t n = g.size
    cdef double s
    with nogil:
        s = c.grad_sumsq(p, n)
    return s


def adamw(params, m, v, grads, float lr, float beta1, float beta2, float eps,
          float weight_decay, float grad_scale, long step):
    """One AdamW step over flat float32 arrays (step is 1-based)."""
    cdef float *pp = <float *>_addr(params, "params", _F32, (None,), out=True)
    cdef size_t n = params.shape[0]
    cdef float *pm = <float *>_addr(m, "m", _F32, (n,), out=True)
    cdef float *pv = <float *>_addr(v, "v", _F32, (n,), out=True)
    cdef float *pg = <float *>_addr(grads, "grads", _F32, (n,))
    if step < 1:
        raise ValueError(f"step must be >= 1, got {step}")
    if not (0.0 <= beta1 < 1.0 and 0.0 <= beta2 < 1.0):
        raise ValueError(f"betas must lie in [0, 1), got ({beta1}, {beta2})")
    outs = [("params", params), ("m", m), ("v", v)]
    _apart(outs, [("grads", grads)])
    with nogil:
        c.adamw_update(pp, pm, pv, pg, lr, beta1, beta2, eps, weight_decay, grad_scale, step, n)


# ---- Muon ------------------------------------------------------------------------

def muon_scratch_size(size_t rows, size_t cols):
    """Floats of scratch one `muon` call on a [rows, cols] matrix needs."""
    return c.muon_scratch_floats(rows, cols)


def muon(params, buf, grads, scratch, float lr, float momentum, float weight_decay,
         float grad_scale, int ns_steps=5):
    """One Muon step on a float32 matrix [R, Cc]: buf (the momentum) and params updated
    in place, the Nesterov direction orthogonalised by ns_steps Newton-Schulz iterations."""
    cdef float *pp = <float *>_addr(params, "params", _F32, (None, None), out=True)
    cdef size_t R = params.shape[0], Cc = params.shape[1]
    _positive("params rows", R)
    _positive("params columns", Cc)
    cdef float *pb = <float *>_addr(buf, "buf", _F32, (R, Cc), out=True)
    cdef float *pg = <float *>_addr(grads, "grads", _F32, (R, Cc))
    cdef float *ps = <float *>_addr(scratch, "scratch", _F32, (None,), out=True)
    _room(scratch, "scratch", c.muon_scratch_floats(R, Cc), f"for a {R} x {Cc} matrix")
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"momentum must lie in [0, 1), got {momentum}")
    for name, val in (("lr", lr), ("weight_decay", weight_decay), ("grad_scale", grad_scale)):
        if not (val >= 0.0 and val < float("inf")):
            raise ValueError(f"{name} must be a finite number >= 0, got {val}")
    if not 0 <= ns_steps <= 100:
        raise ValueError(f"ns_steps must lie in 0..100, got {ns_steps}")
    _apart([("params", params), ("buf", buf), ("scratch", scratch)], [("grads", grads)])
    cdef int rc
    with nogil:
        rc = c.muon_update(pp, pb, pg, ps, R, Cc, lr, momentum, weight_decay, grad_scale, ns_steps)
    _check_rc(rc)
