"""The pixel transformer: parameters in flat arenas, C kernels for the math.

The model owns its memory. Parameters, gradients and the two AdamW moments are
each one flat float32 array; `weights` and `grads` are dicts of named views into
them (the names are the checkpoint's tensor names). Zeroing the gradients is one
fill and AdamW is one call per weight-decay group. Activation buffers are
allocated once per batch shape and reused.
"""
from __future__ import annotations

import contextlib
import functools
import math
import numbers
import threading
from collections import OrderedDict
from dataclasses import dataclass, fields

import numpy as np

from simcore import _kernels as kernels
from simcore.config import VOCAB, Config
from simcore.options import Option, check
from simcore.progress import Progress
from simcore.resources import check_fits
from simcore.sampling import KV_CACHE_DTYPES, check_completion_args, check_guidance, check_sampling_args, guide

F32 = np.float32


# ---- the architecture, described once ---------------------------------------------
#
# Every parameter of a block and of the head: its field in Block / Head, its name in
# checkpoints (after "layers.<l>." for a block), its shape, whether AdamW decays it,
# and its initialisation. param_specs (the arenas, checkpoints), _init_weights, the
# training pass and the sampler all read these two lists; a new model option is an
# entry here plus its kernel.

def _block_entries(cfg: Config):
    """(field, name, shape, decayed, init) of one block, in checkpoint order."""
    C, H, rms = cfg.d_model, cfg.d_hidden, cfg.norm == "rmsnorm"
    out = [("attn_norm", "attn_norm.weight", (C,), False, "one")] if rms else []
    out += [(w, f"attn.{w}", (C, C), True, "normal") for w in ("wq", "wk", "wv")]
    out += [("wo", "attn.wo", (C, C), True, "residual")]
    out += [("mlp_norm", "mlp_norm.weight", (C,), False, "one")] if rms else []
    out += [("w1", "mlp.w1", (C, H), True, "normal"), ("w2", "mlp.w2", (H, C), True, "residual")]
    return out


def _head_entries(cfg: Config):
    """(field, name, shape, decayed, init) of the head (final norm and projection to 256 logits)."""
    C, H = cfg.d_model, cfg.d_hidden
    out = [("norm", "head_norm.weight", (C,), False, "one")] if cfg.norm == "rmsnorm" else []
    if cfg.head == "linear":
        return out + [("w", "head.w", (C, VOCAB), True, "normal")]
    return out + [("w1", "head.w1", (C, H), True, "normal"), ("w2", "head.w2", (H, VOCAB), True, "normal")]


def _named_entries(cfg: Config):
    """(name, shape, decayed, init) of every parameter, in checkpoint order."""
    out = [("token_embedding", (VOCAB, cfg.d_model), True, "embedding")]
    if cfg.pixel_above:
        out += [("above_embedding", (VOCAB, cfg.d_model), True, "embedding")]
    for l in range(cfg.n_layers):
        out += [(f"layers.{l}.{name}", shape, dec, init) for _, name, shape, dec, init in _block_entries(cfg)]
    out += [(name, shape, dec, init) for _, name, shape, dec, init in _head_entries(cfg)]
    if cfg.class_everywhere:  # last, so that a seed draws the other tensors as without it
        out += [("class_embedding", (cfg.n_labels, cfg.d_model), True, "embedding")]
    return out


def param_specs(cfg: Config):
    """(name, shape, decayed) for every parameter, in a fixed, natural order."""
    return [(name, shape, dec) for name, shape, dec, _ in _named_entries(cfg)]


@dataclass
class Block:
    """One transformer block's tensors: views into an arena (weights or gradients).
    The norm gains are None without rmsnorm. Field order is the C's (kernels.BLOCK_TENSORS)."""
    attn_norm: np.ndarray | None
    wq: np.ndarray
    wk: np.ndarray
    wv: np.ndarray
    wo: np.ndarray
    mlp_norm: np.ndarray | None
    w1: np.ndarray
    w2: np.ndarray

    def as_tuple(self) -> tuple:
        """The tuple the block kernels take (kernels.BLOCK_TENSORS' order; no copies)."""
        return tuple(getattr(self, f.name) for f in fields(self))

    def packed(self) -> tuple:
        """Its products' weights packed for bfloat16 sampling (kernels.PACKED_TENSORS'
        order): copies, made once per generate call."""
        return tuple(_packed(getattr(self, name)) for name in kernels.PACKED_TENSORS)


def _packed(w: np.ndarray) -> np.ndarray:
    """w [K, N] packed for bf16 products with it (kernels.bf16_pack)."""
    out = np.empty(kernels.bf16_packed_shape(*w.shape), np.uint32)
    kernels.bf16_pack(out, w)
    return out


@dataclass
class Head:
    """The head's tensors: final norm gain (None without rmsnorm), then either the
    linear projection w or the MLP head's w1, w2."""
    norm: np.ndarray | None = None
    w: np.ndarray | None = None
    w1: np.ndarray | None = None
    w2: np.ndarray | None = None


def _blocks(cfg: Config, tensors: dict) -> list:
    """One Block per layer, of views into `tensors` (the weights or the gradients)."""
    absent = {f.name: None for f in fields(Block)}  # the norm gains without rmsnorm
    return [Block(**{**absent, **{field: tensors[f"layers.{l}.{name}"]
                                  for field, name, *_ in _block_entries(cfg)}})
            for l in range(cfg.n_layers)]


def _head(cfg: Config, tensors: dict) -> Head:
    return Head(**{field: tensors[name] for field, name, *_ in _head_entries(cfg)})


def _norm(out, rstd, x, gain):
    """out = rmsnorm(x) * gain, or x itself when there is no norm (gain None); returns it.
    (Without a norm the buffers alias: _Buffers makes out the same array as x.)"""
    if gain is None:
        return x
    kernels.rmsnorm_forward(out, rstd, x, gain)
    return out


@contextlib.contextmanager
def one_call(model: "SIM", what: str):
    """One call at a time per SIM. A model's activation buffers, gradients and weights are
    shared by all its calls, so two threads in one SIM would overwrite each other's work
    (wrong results, not a crash); a second concurrent call is refused instead. Calls
    from the thread already inside (train_step -> forward_backward) pass."""
    if not model._busy.acquire(blocking=False):
        raise RuntimeError(
            f"{what}: this model is already running a call in another thread; one SIM "
            "serves one call at a time (use one SIM per thread, e.g. each loaded from the "
            "same checkpoint)")
    try:
        yield
    finally:
        model._busy.release()


def _exclusive(method):
    """A SIM method under one_call."""
    @functools.wraps(method)
    def call(self, *args, **kwargs):
        with one_call(self, f"SIM.{method.__name__}"):
            return method(self, *args, **kwargs)
    return call


class _Buffers:
    """Activations and scratch for one (B, T), allocated once, reused every step.
    Sizes come from the C (block_acts_size, block_scratch_size): the layout of a
    block's activations is csrc/block.c's."""

    @staticmethod
    def _sizes(cfg: Config, B: int, T: int, threads: int) -> dict:
        """Floats of each buffer (per layer for `acts`)."""
        C, H, L, NH, N = cfg.d_model, cfg.d_hidden, cfg.n_layers, cfg.n_heads, B * T
        rms = cfg.norm == "rmsnorm"
        return dict(x=(L + 1) * N * C, acts=kernels.block_acts_size(rms, B, T, C, H, NH),
                    scratch=kernels.block_scratch_size(B, T, C, H, NH, threads),
                    head=N * (C * rms + 1 + H * (cfg.head == "mlp") + 2 * VOCAB + 1) + B * (T - 1),
                    dres=N * C)

    @staticmethod
    def nbytes(cfg: Config, B: int, T: int, threads: int) -> int:
        """What __init__ allocates, in bytes (checked against the RAM before it does)."""
        sizes = _Buffers._sizes(cfg, B, T, threads)
        return 4 * (sum(sizes.values()) + (cfg.n_layers - 1) * sizes["acts"])

    def __init__(self, cfg: Config, B: int, T: int, threads: int):
        C, H, L, N = cfg.d_model, cfg.d_hidden, cfg.n_layers, B * T
        rms = cfg.norm == "rmsnorm"
        check_fits(_Buffers.nbytes(cfg, B, T, threads), f"a batch of {B} sequences of {T} (activations)")
        sizes = _Buffers._sizes(cfg, B, T, threads)
        e = lambda *shape: np.empty(shape, F32)  # noqa: E731
        self.B, self.T, self.threads = B, T, threads
        self.x = [e(B, T, C) for _ in range(L + 1)]   # residual stream into layer l
        self.acts = [e(sizes["acts"]) for _ in range(L)]  # what block l's backward needs
        self.scratch = e(sizes["scratch"])           # shared by the blocks and the head
        # the head
        self.xnf = e(N, C) if rms else self.x[L].reshape(N, C)
        self.rstdf = e(N)
        self.hhead = e(N, H) if cfg.head == "mlp" else None
        self.logits = e(B, T, VOCAB)
        self.xlse = e(B, T)
        self.losses = e(B, T - 1)
        self.dlogits = e(B, T, VOCAB)
        self.dres = e(B, T, C)  # d loss / d the residual stream, from the head down
        # the head's scratch: slices of the blocks' (never in use at the same time)
        NC, NH_ = N * C, N * H
        self.dtmp = self.scratch[:NC].reshape(N, C)
        self.hact = self.scratch[NC:NC + NH_].reshape(N, H)
        self.dh = self.scratch[NC + NH_:NC + 2 * NH_].reshape(N, H)


def _number(name, val, low, strict, below=None):
    """val as a float, or ValueError unless it is a finite number >= low (> low if strict)
    and, if given, < below (simcore.options' checker, as every option's)."""
    bounds = f"{'(' if strict else '['}{low:g}, {'inf' if below is None else f'{below:g}'})"
    return float(check(name, val, Option(float, bounds=bounds)))


def _check_adamw_options(lr, weight_decay, betas, eps, clip):
    """Validate AdamW options before anything is touched; return them as floats. (The lr
    of one step may be 0, where a schedule ends; simcore.train's peak --lr may not.)"""
    lr = _number("lr", lr, 0.0, False)
    weight_decay = _number("weight_decay", weight_decay, 0.0, False)
    eps = _number("eps", eps, 0.0, True)
    if clip is not None:
        clip = _number("clip", clip, 0.0, True)
    if len(betas) != 2:
        raise ValueError(f"betas must be a pair, got {betas!r}")
    b1, b2 = (_number(f"betas[{i}]", b, 0.0, False, below=1.0) for i, b in enumerate(betas))
    return lr, weight_decay, (b1, b2), eps, clip


def _last(rows):
    """The last item a generator yields (the finished images of SIM._rows)."""
    item = None
    for item in rows:
        pass
    return item[1]


# Positions a completion's prefill takes through the model at once (images per chunk:
# this over the given positions): its activations are then about 60 MB for `small`.
PREFILL_POSITIONS = 8192


# The key/value caches of the sequences sampled together, at most (a group's, at their
# full length): larger batches go through in groups of images, each group from its first
# pixel to its last, so that its caches stay in the last-level cache while each step reads
# them all. One batch for all images would stream them from memory at every step (at 100
# images with guidance, `small`'s caches reach 320 MB in float16): sampling would be bound
# by memory, and each later pixel would cost more than an earlier one. Each group costs
# its own Python calls per pixel (~50 us a step), so groups should not be small either:
# 32 MB measured best of 16-64 MB at every vector level (100 images, guidance 2, AMD EPYC
# Zen 5 with 32 MB of L3: docs/guide.md, "Sampling in groups").
SAMPLE_CACHE_BYTES = 32 << 20


def resolve_kv_cache(kv_cache: str) -> str:
    """The cache's element type for generate's kv_cache argument (ValueError if unknown)."""
    if kv_cache not in ("auto", *KV_CACHE_DTYPES):
        raise ValueError(f"kv_cache must be one of {['auto', *KV_CACHE_DTYPES]}, got {kv_cache!r}")
    if kv_cache == "auto":
        return "float32" if kernels.isa_get() == "baseline" else "float16"
    return kv_cache


def packed_weights(model: "SIM", bf16: bool):
    """(each block's packed weights, the head's) for sampling in bfloat16, else (Nones, None)."""
    if not bf16:
        return [None] * len(model.layers), None
    head = model.head
    return ([blk.packed() for blk in model.layers],
            (_packed(head.w),) if head.w is not None else (_packed(head.w1), _packed(head.w2)))


def sampling_group(cfg: Config, n_out: int, copies: int, kv_cache: str) -> int:
    """Images sampled together: as many as keep their caches (each image `copies` times
    over) within SAMPLE_CACHE_BYTES, at least 1."""
    kshape, vshape = kernels.kv_cache_shapes(1, cfg.seq_len, cfg.d_model, cfg.n_heads)
    per_image = (copies * cfg.n_layers * KV_CACHE_DTYPES[resolve_kv_cache(kv_cache)].itemsize
                 * (math.prod(kshape) + math.prod(vshape)))
    return max(1, min(n_out, SAMPLE_CACHE_BYTES // per_image))


class _Sampler:
    """One sampling call's state: the key/value caches, the buffers of one position of
    every sequence, and the sequences themselves, position-major (seq [T, N]: each step
    reads and writes a row). With guidance the batch holds each image twice, with its
    label and then with the null class (copies = 2); draw keeps the copies equal."""

    def __init__(self, model: "SIM", labels: np.ndarray, guidance: float, kv_cache: str, bf16: bool,
                 packed=None):
        cfg, W = model.cfg, model.weights
        self.model, self.guidance, self.n_out = model, guidance, len(labels)
        self.copies = 1 if guidance == 1.0 else 2
        if self.copies == 2:  # the second half of the batch: the same images, label unknown
            labels = np.concatenate([labels, np.full(len(labels), cfg.n_classes, np.uint8)])
        dtype = KV_CACHE_DTYPES[resolve_kv_cache(kv_cache)]
        N, T, C, H = len(labels), cfg.seq_len, cfg.d_model, cfg.d_hidden
        kshape, vshape = kernels.kv_cache_shapes(N, T, C, cfg.n_heads)
        check_fits(dtype.itemsize * cfg.n_layers * (math.prod(kshape) + math.prod(vshape)),
                   f"sampling {self.n_out:,} images (key/value caches"
                   + (", twice over for guidance)" if N > self.n_out else ")"))
        self.caches = [(np.zeros(kshape, dtype), np.zeros(vshape, dtype)) for _ in range(cfg.n_layers)]
        self.blocks = [blk.as_tuple() for blk in model.layers]
        self.packed, self.head_packed = packed if packed is not None else packed_weights(model, bf16)
        self.scratch = np.empty(kernels.block_decode_scratch_size(N, C, H, vshape[2], kernels.get_num_threads()),
                                F32)
        self.x, self.h, self.rstd = np.empty((N, C), F32), np.empty((N, C), F32), np.empty(N, F32)
        self.hpre, self.hact, self.logits = np.empty((N, H), F32), np.empty((N, H), F32), np.empty((N, VOCAB), F32)
        self.work = np.empty(2 * VOCAB)
        self.seq = np.zeros((T, N), np.uint8)
        self.seq[0] = self.labels = labels
        self.above = cfg.image_size - 1
        self.wab = W["above_embedding"] if cfg.pixel_above else None
        self.wcl = W["class_embedding"] if cfg.class_everywhere else None

    def step(self, t: int) -> None:
        """x = the last residual stream at position t (token seq[t]), caches written at t."""
        m, seq = self.model, self.seq
        up = seq[t - self.above] if self.wab is not None and t >= self.above else None  # above pixel t+1
        kernels.embedding_step(self.x, seq[t], up, self.labels if self.wcl is not None else None,
                               m.weights["token_embedding"], m.pe[t], self.wab if up is not None else None, self.wcl)
        for (kc, vc), weights, wp in zip(self.caches, self.blocks, self.packed):
            kernels.block_decode(self.x, kc, vc, self.scratch, weights, t, wp)

    def prefill(self, P: int) -> None:
        """step(0) .. step(P-1) at once (block_prefill: the training pass over positions
        0..P-1, a chunk of sequences at a time): the caches hold positions 0..P-1 and x
        the last residual stream at P-1."""
        m, cfg, W = self.model, self.model.cfg, self.model.weights
        N, C, H, NH = self.seq.shape[1], cfg.d_model, cfg.d_hidden, cfg.n_heads
        tokens = np.ascontiguousarray(self.seq[:P].T)  # [N, P]
        n = max(1, min(N, PREFILL_POSITIONS // P))
        threads, rms = kernels.get_num_threads(), cfg.norm == "rmsnorm"
        sizes = (2 * n * P * C, kernels.block_acts_size(rms, n, P, C, H, NH),
                 kernels.block_scratch_size(n, P, C, H, NH, threads))
        check_fits(4 * sum(sizes), f"the prefill of {n} sequences of {P} positions")
        xs, acts, scratch = (np.empty(size, F32) for size in sizes)
        for b0 in range(0, N, n):
            b1 = min(N, b0 + n)
            tok = tokens[b0:b1]
            x0 = xs[:(b1 - b0) * P * C].reshape(b1 - b0, P, C)
            x1 = xs[n * P * C:(n + b1 - b0) * P * C].reshape(b1 - b0, P, C)
            kernels.embedding_forward(x0, tok, W["token_embedding"], m.pe)
            if self.wab is not None:
                kernels.embedding_above_forward(x0, tok, self.wab, self.above)
            if self.wcl is not None:
                kernels.embedding_class_forward(x0, tok, self.wcl)
            for (kc, vc), weights in zip(self.caches, self.blocks):
                kernels.block_prefill(x1, kc[b0:b1], vc[b0:b1], acts, scratch, x0, weights)
                x0, x1 = x1, x0
            self.x[b0:b1] = x0[:, P - 1]

    def draw(self, t: int, u: np.ndarray, temperature: float, top_k: int | None) -> None:
        """Pixel t+1 of every image (seq[t+1]) from x, the last residual stream at t; u: a
        uniform draw in [0, 1) per image (float64 [n_out], unread at temperature 0)."""
        self.model.head_logits(self.logits, self.x, self.h, self.rstd, self.hpre, self.hact,
                               packed=self.head_packed)
        n = self.n_out
        guide(self.logits, n, self.guidance)
        kernels.sample_tokens(self.seq[t + 1, :n], self.work, self.logits[:n], u, float(temperature),
                              top_k or 0)
        if self.copies == 2:
            self.seq[t + 1, n:] = self.seq[t + 1, :n]


PRECISIONS = ("float32", "bfloat16", "auto")


def resolve_precision(precision) -> str:
    """"float32" or "bfloat16" for SIM's precision argument ("auto": bfloat16 where the
    CPU has bfloat16 dot products); ValueError naming what is missing or wrong."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "auto":
        return "bfloat16" if kernels.bf16_supported() else "float32"
    if precision == "bfloat16" and not kernels.bf16_supported():
        raise ValueError("precision 'bfloat16' needs bfloat16 dot products (AVX512_BF16, at the avx512 "
                         "vector level: Intel Cooper Lake, Sapphire Rapids and later, AMD Zen 4 and later); "
                         f"this CPU has none, or the level is capped at {kernels.isa_get()} (SIMCORE_ISA): "
                         "use 'float32' or 'auto'")
    return precision


class SIM:
    """Class-conditional autoregressive pixel transformer.

    >>> model = SIM(Config.preset("sprint"), seed=0)
    >>> loss = model.train_step(tokens, lr=3e-3, muon_lr=0.02)   # tokens: uint8 [B, 784]

    precision: "float32", or "bfloat16" (mixed precision: the weights, the optimizer's
    state, norms, softmax and the loss stay float32; the operands of the projections',
    the MLP's, the head's and attention's products (QK^T, PV and their gradients),
    forward and backward, are rounded to bfloat16, nearest even, their sums float32),
    or "auto" (bfloat16 where the CPU has bfloat16 dot products). generate() samples at
    the model's precision unless told otherwise.
    """

    max_cached_shapes = 3

    def __init__(self, cfg: Config, seed: int | None = 0, precision: str = "float32"):
        if not isinstance(cfg, Config):
            raise TypeError(f"cfg must be a simcore.Config, got {type(cfg).__name__}")
        self.cfg = cfg
        self.set_precision(precision)
        specs = param_specs(cfg)
        # Decayed tensors first, then the norm gains: each group is one slice.
        ordered = [s for s in specs if s[2]] + [s for s in specs if not s[2]]
        offsets, n = {}, 0
        for name, shape, _ in ordered:
            offsets[name] = n
            n += math.prod(shape)
        self.n_params = n
        self.n_decay = sum(math.prod(s[1]) for s in specs if s[2])
        check_fits(4 * 4 * n, f"a model of {n:,} parameters (weights, gradients, AdamW moments)")
        self.params = np.zeros(n, F32)
        self.grad_arena = np.zeros(n, F32)
        # the optimizer's state: AdamW's moments m and v, or for the tensors Muon
        # updates its momentum in moment1 (moment2 unused there)
        self.moment1 = np.zeros(n, F32)
        self.moment2 = np.zeros(n, F32)
        view = lambda arena, name, shape: arena[offsets[name]:offsets[name] + math.prod(shape)].reshape(shape)  # noqa: E731
        self.weights = {name: view(self.params, name, shape) for name, shape, _ in specs}
        self.grads = {name: view(self.grad_arena, name, shape) for name, shape, _ in specs}
        # the same views by role: model.layers[l].wq, model.head.w (and their gradients)
        self.layers, self.layer_grads = _blocks(cfg, self.weights), _blocks(cfg, self.grads)
        self.head, self.head_grads = _head(cfg, self.weights), _head(cfg, self.grads)
        self.opt_step = 0  # optimizer steps taken (AdamW's bias correction counts them)
        # each tensor's (name, (start, end) in the arenas, decayed), and Muon's share
        self._slices = [(name, (offsets[name], offsets[name] + math.prod(shape)), dec)
                        for name, shape, dec in specs]
        self.muon_tensors = frozenset(name for name, shape, _ in specs
                                      if name.startswith("layers.") and len(shape) == 2)
        self._muon_scratch = None
        self.pe = np.empty((cfg.seq_len, cfg.d_model), F32)
        kernels.posenc(self.pe, cfg.image_size)
        self._buffers: OrderedDict = OrderedDict()
        self._busy = threading.RLock()
        self._init_weights(np.random.default_rng(seed))

    # SIM.pretrained(), the model shipped inside the package, is simcore.pretrained.load,
    # attached by simcore/__init__.py: it reads a checkpoint, and checkpoint.py imports this
    # module, so this module cannot import it.

    def set_precision(self, precision: str) -> None:
        """Train (and evaluate) from now on in `precision` (see the class's docstring);
        the weights stay float32, so a model changes precision at any time."""
        self.precision = resolve_precision(precision)
        self._bf16 = self.precision == "bfloat16"

    def _init_weights(self, rng: np.random.Generator) -> None:
        """GPT-2 style: N(0, 0.02), residual projections scaled by 1/sqrt(2L);
        the token embedding at unit scale, like the fixed position encoding it
        is added to; norm gains at 1. (Drawn in checkpoint order: a seed gives
        the same weights whatever else changes.)"""
        resid_std = 0.02 / math.sqrt(2 * self.cfg.n_layers)
        std = {"embedding": 1.0, "normal": 0.02, "residual": resid_std}
        for name, _, _, init in _named_entries(self.cfg):
            w = self.weights[name]
            if init == "one":
                w[...] = 1.0
            else:
                w[...] = rng.standard_normal(w.shape, dtype=F32) * F32(std[init])

    # ---- inputs and buffers -----------------------------------------------------

    def check_tokens(self, tokens, min_len: int = 1) -> np.ndarray:
        """Validate a token batch; return it as a C-contiguous uint8 array."""
        cfg = self.cfg
        arr = np.asarray(tokens)
        if arr.dtype != np.uint8:
            if not np.issubdtype(arr.dtype, np.integer):
                raise TypeError(f"tokens must be integers (uint8), got dtype {arr.dtype}")
            if arr.size and (arr.min() < 0 or arr.max() >= VOCAB):
                raise ValueError(f"token out of range: values must lie in 0..{VOCAB - 1}, "
                                 f"got {arr.min()}..{arr.max()}")
        if arr.ndim != 2:
            raise ValueError(f"tokens must have shape [B, T], got {list(arr.shape)}")
        B, T = arr.shape
        if B == 0:
            raise ValueError("empty batch: tokens has zero rows")
        if not min_len <= T <= cfg.seq_len:
            raise ValueError(f"sequence length {T} outside {min_len}..{cfg.seq_len} "
                             f"(image_size={cfg.image_size})")
        if arr[:, 0].max() >= cfg.n_labels:
            raise ValueError(f"token 0 is the class label and must be < {cfg.n_labels} (n_classes={cfg.n_classes}"
                             + (", then the null class" if cfg.null_class else "") + f"), got {int(arr[:, 0].max())}")
        return np.ascontiguousarray(arr, dtype=np.uint8)

    def _bufs(self, B: int, T: int) -> _Buffers:
        threads = kernels.get_num_threads()
        key = (B, T, threads)
        buf = self._buffers.get(key)
        if buf is None:
            buf = _Buffers(self.cfg, B, T, threads)
            self._buffers[key] = buf
            while len(self._buffers) > self.max_cached_shapes:
                self._buffers.popitem(last=False)
        self._buffers.move_to_end(key)
        return buf

    # ---- forward / backward -----------------------------------------------------

    def _forward(self, tokens: np.ndarray) -> _Buffers:
        cfg, W = self.cfg, self.weights
        B, T = tokens.shape
        a = self._bufs(B, T)
        kernels.embedding_forward(a.x[0], tokens, W["token_embedding"], self.pe)
        if cfg.pixel_above:
            kernels.embedding_above_forward(a.x[0], tokens, W["above_embedding"], cfg.image_size - 1)
        if cfg.class_everywhere:
            kernels.embedding_class_forward(a.x[0], tokens, W["class_embedding"])
        for l, blk in enumerate(self.layers):  # csrc/block.c: x[l] -> x[l+1]
            kernels.block_forward(a.x[l + 1], a.acts[l], a.scratch, a.x[l], blk.as_tuple(), cfg.n_heads,
                                  self._bf16)
        N = B * T
        self.head_logits(a.logits.reshape(N, VOCAB), a.x[cfg.n_layers].reshape(N, cfg.d_model),
                         a.xnf, a.rstdf, a.hhead, a.hact, self._bf16)
        return a

    def head_logits(self, logits, x, xn, rstd, hpre, hact, bf16: bool = False, packed=None) -> None:
        """logits [N,256] from the last residual stream x [N,C]: the head, for training
        and sampling alike. xn [N,C] and rstd [N] receive the final norm (xn may be x
        itself without one); hpre, hact [N,H] are the MLP head's scratch. packed: the
        head's weights packed for bfloat16 sampling (w, or w1 and w2), else None."""
        h = _norm(xn, rstd, x, self.head.norm)
        if packed is not None and self.head.w is not None:
            kernels.linear_forward_packed(logits, h, packed[0])
        elif packed is not None:  # mlp.c's steps on the packed weights
            kernels.linear_forward_packed(hpre, h, packed[0])
            kernels.silu_forward(hact, hpre)
            kernels.linear_forward_packed(logits, hact, packed[1])
        elif self.head.w is not None:
            kernels.linear_forward(logits, h, self.head.w, 0.0, bf16)
        else:
            kernels.mlp_forward(logits, hpre, hact, h, self.head.w1, self.head.w2, 0.0, bf16)

    def _backward(self, tokens: np.ndarray, a: _Buffers) -> None:
        """Add d(mean loss)/d(param) into self.grads (call after _loss)."""
        cfg, head, G = self.cfg, self.head, self.head_grads
        B, T = tokens.shape
        C, L, N = cfg.d_model, cfg.n_layers, B * T
        a.dlogits.fill(0.0)
        kernels.xent_backward(a.dlogits, a.logits, a.xlse, tokens, 1.0 / (B * (T - 1)))
        dlogits = a.dlogits.reshape(N, VOCAB)
        dres, dtmp = a.dres.reshape(N, C), a.dtmp
        dres.fill(0.0)
        dtmp.fill(0.0)
        if head.w is not None:
            kernels.linear_backward(dtmp, G.w, dlogits, a.xnf, head.w, self._bf16)
        else:
            kernels.mlp_backward(dtmp, G.w1, G.w2, a.dh, a.hact, dlogits, a.xnf, a.hhead, head.w1, head.w2,
                                 self._bf16)
        self._norm_backward(dres, dtmp, a.x[L].reshape(N, C), head.norm, G.norm, a.rstdf)
        for l in reversed(range(L)):  # csrc/block.c: d x[l+1] -> d x[l], grads +=
            kernels.block_backward(a.dres, self.layer_grads[l].as_tuple(), a.scratch, a.x[l], a.acts[l],
                                   self.layers[l].as_tuple(), cfg.n_heads, self._bf16)
        kernels.embedding_backward(self.grads["token_embedding"], a.dres, tokens)
        if cfg.pixel_above:
            kernels.embedding_above_backward(self.grads["above_embedding"], a.dres, tokens, cfg.image_size - 1)
        if cfg.class_everywhere:
            kernels.embedding_class_backward(self.grads["class_embedding"], a.dres, tokens)

    def _norm_backward(self, dres, dnormed, x, gain, dgain, rstd) -> None:
        """dres += d(norm(x))/dx applied to dnormed (identity without a norm gain)."""
        if gain is not None:
            kernels.rmsnorm_backward(dres, dgain, dnormed, x, gain, rstd)
        else:
            dres += dnormed

    def _loss(self, tokens: np.ndarray, a: _Buffers) -> float:
        kernels.xent_forward(a.losses, a.xlse, a.logits, tokens)
        return float(a.losses.mean(dtype=np.float64))

    # ---- public API ---------------------------------------------------------------

    def prepare(self, batch_size: int, seq_len: int | None = None) -> None:
        """Allocate the activation buffers for batches of `batch_size` sequences now (a
        training step would at its first call): raises MemoryError naming the size when
        they cannot fit, before any work is done."""
        if not isinstance(batch_size, numbers.Integral) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        self._bufs(int(batch_size), seq_len or self.cfg.seq_len)

    @_exclusive
    def forward(self, tokens) -> np.ndarray:
        """Logits float32 [B, T, 256]; position t predicts token t+1."""
        tokens = self.check_tokens(tokens)
        return self._forward(tokens).logits.copy()

    @_exclusive
    def loss(self, tokens) -> float:
        """Mean negative log-likelihood in nats over the T-1 predicted pixels."""
        tokens = self.check_tokens(tokens, min_len=2)
        return self._loss(tokens, self._forward(tokens))

    @_exclusive
    def nll_per_image(self, tokens) -> np.ndarray:
        """Total nats over the T-1 predicted pixels of each sequence: float64 [B]."""
        tokens = self.check_tokens(tokens, min_len=2)
        a = self._forward(tokens)
        kernels.xent_forward(a.losses, a.xlse, a.logits, tokens)
        return a.losses.sum(axis=1, dtype=np.float64)

    @_exclusive
    def forward_backward(self, tokens) -> float:
        """Zero the gradients, then fill self.grads with d(loss)/d(weights)."""
        tokens = self.check_tokens(tokens, min_len=2)
        a = self._forward(tokens)
        loss = self._loss(tokens, a)
        self.grad_arena.fill(0.0)
        self._backward(tokens, a)
        return loss

    def grad_norm(self) -> float:
        return math.sqrt(kernels.grad_sumsq(self.grad_arena))

    @_exclusive
    def train_step(self, tokens, lr: float = 1e-3, weight_decay: float = 0.01,
                   betas=(0.9, 0.95), eps: float = 1e-8, clip: float | None = 1.0,
                   muon_lr: float | None = None) -> float:
        """Forward, loss, backward and one optimizer step (apply_gradients: AdamW, or
        with muon_lr Muon for the blocks' matrices). Returns the loss (nats).

        Raises FloatingPointError, leaving the weights untouched, if the loss or
        the gradients are not finite.
        """
        opts = _check_adamw_options(lr, weight_decay, betas, eps, clip)
        loss = self.forward_backward(tokens)
        if not math.isfinite(loss):
            raise FloatingPointError(f"non-finite loss ({loss}); weights left unchanged")
        self.apply_gradients(*opts, muon_lr=muon_lr)
        return loss

    @_exclusive
    def apply_gradients(self, lr: float = 1e-3, weight_decay: float = 0.01,
                        betas=(0.9, 0.95), eps: float = 1e-8, clip: float | None = 1.0,
                        muon_lr: float | None = None, muon_momentum: float = 0.95) -> float:
        """One optimizer step with the gradients in self.grads (clipped to global norm
        `clip`). Returns the gradient norm before clipping. Raises
        FloatingPointError, leaving the weights untouched, if it is not finite.
        Data-parallel training sums the gradient arena across processes first.

        AdamW for every tensor, or with `muon_lr`, Muon for the blocks' matrices
        (`muon_tensors`: attention and MLP weights; csrc/muon.c) at that learning rate
        and AdamW at `lr` for the rest (embedding, head, norm gains), as the
        modded-nanogpt speedrun splits them. Muon keeps its momentum in the first-moment
        arena self.moment1 (so checkpoints carry it); weight_decay applies to both."""
        lr, weight_decay, (b1, b2), eps, clip = _check_adamw_options(lr, weight_decay, betas, eps, clip)
        if muon_lr is not None:
            muon_lr = _number("muon_lr", muon_lr, 0.0, False)
            _number("muon_momentum", muon_momentum, 0.0, False, below=1.0)
        norm = self.grad_norm()
        if not math.isfinite(norm):
            raise FloatingPointError(f"non-finite gradient norm ({norm}); weights left unchanged")
        scale = min(1.0, clip / (norm + 1e-6)) if clip is not None else 1.0
        self.opt_step += 1
        P, G, M, V = self.params, self.grad_arena, self.moment1, self.moment2
        if muon_lr is None:
            nd = self.n_decay
            kernels.adamw(P[:nd], M[:nd], V[:nd], G[:nd], lr, b1, b2, eps, weight_decay, scale, self.opt_step)
            if nd < self.n_params:
                kernels.adamw(P[nd:], M[nd:], V[nd:], G[nd:], lr, b1, b2, eps, 0.0, scale, self.opt_step)
        else:
            for name, (lo, hi), decayed in self._slices:
                if name in self.muon_tensors:
                    shape = self.weights[name].shape
                    if self._muon_scratch is None:
                        rows_cols = [self.weights[n].shape for n in self.muon_tensors]
                        self._muon_scratch = np.empty(max(kernels.muon_scratch_size(*rc) for rc in rows_cols), F32)
                    kernels.muon(P[lo:hi].reshape(shape), M[lo:hi].reshape(shape), G[lo:hi].reshape(shape),
                           self._muon_scratch, muon_lr, muon_momentum, weight_decay, scale)
                else:
                    kernels.adamw(P[lo:hi], M[lo:hi], V[lo:hi], G[lo:hi], lr, b1, b2, eps,
                            weight_decay if decayed else 0.0, scale, self.opt_step)
        self.last_grad_norm = norm
        return norm

    @_exclusive
    def generate(self, labels, temperature: float = 1.0, seed=None, top_k: int | None = None,
                 progress: bool = False, kv_cache: str = "auto", guidance: float | None = None,
                 precision: str | None = None) -> np.ndarray:
        """Sample one image per class label: uint8 [N, S, S], pixel 0 (the label) set to 0.

        All images advance together with a key/value cache: each new pixel costs one C
        call per block (csrc/decode.c: the block at one position of every image), one
        for the head (shared with training) and one for the sampler, never a forward
        pass over the prefix as the original did. temperature 0 is greedy; top_k keeps
        the k most likely values; seed makes the draws repeatable.

        kv_cache: "float16" stores keys and values in half precision, rounded to nearest
        (relative error at most 2^-11, all arithmetic float32), which halves the memory a
        step streams: sampling many images is bound by it. "float32" reproduces the
        training forward pass exactly (tests compare the two). "auto" (the default) is
        float16 where the CPU widens halves in hardware (F16C: the AVX2 and AVX-512
        levels; NEON) and float32 at the baseline level, where widening in software
        costs more than the bytes it saves (measured: benchmarks/results/*/baseline).

        guidance (classifier-free guidance, for a model with a null class): each image
        is drawn twice over, once with its label and once with the null class, and the
        pixel comes from the logits null + guidance * (label - null). 1 is the model's
        own distribution; above 1 leans further towards the asked class, at twice the
        cost. None (the default) is DEFAULT_GUIDANCE for a model with a null class, else 1.
        (simcore.train teaches the null class by label dropout; a model trained through
        train_step must put the null label, n_classes, in some of its batches itself.)

        precision: the products' operands, as SIM's precision: "float32", "bfloat16"
        (the projections', the MLP's and the head's operands rounded to bfloat16, their
        weights packed once per call; the attention over the cache stays at the cache's
        precision) or "auto"; None (the default) is the model's own precision.
        """
        labels, _, _, guidance = self._checked(labels, None, 0, temperature, top_k, guidance)
        return _last(self._rows(labels, None, 0, temperature, seed, top_k, progress, kv_cache, guidance,
                                precision, prefill=False))

    @_exclusive
    def complete(self, images, rows: int, labels=None, temperature: float = 1.0, guidance: float | None = None,
                 seed=None, top_k: int | None = None, progress: bool = False, kv_cache: str = "auto",
                 precision: str | None = None, prefill: bool = True) -> np.ndarray:
        """Finish images whose top `rows` rows are given: uint8 [N, S, S], whose first `rows`
        rows are those of `images` (uint8 [N, S, S]; only they are read) exactly, pixel 0
        included, and whose other rows are sampled as generate samples them.

        labels: a class id per image (or one for all), or None: no class (the model's null
        class; the model guesses the digit from the rows), which needs a model with a null
        class. guidance: as generate's, with labels only (None: the model's default; without
        labels 1). temperature, seed, top_k, kv_cache, precision: as generate's.

        prefill (the default): the given pixels go through the model in one training-style
        forward pass (float32) whose keys and values fill the cache at once
        (csrc/block.c's block_prefill), then sampling goes on pixel by pixel from there.
        prefill=False feeds them one pixel at a time through the sampler's steps, as
        generate does (slower; what the tests hold the prefill against).
        """
        labels, images, rows, guidance = self._checked(labels, images, rows, temperature, top_k, guidance)
        return _last(self._rows(labels, images, rows, temperature, seed, top_k, progress, kv_cache,
                                guidance, precision, prefill=bool(prefill)))

    def stream(self, labels=None, images=None, rows: int = 0, temperature: float = 1.0,
               guidance: float | None = None, seed=None, top_k: int | None = None, kv_cache: str = "auto",
               precision: str | None = None):
        """generate (images None) or complete (images and rows given), one row at a time: yields
        (r, partial) each time row r of every image is finished, partial uint8 [N, S, S] with
        rows 0..r final and zeros below; the last yield is generate's or complete's result.
        Stop iterating (or close the generator) to stop the work. The model is busy (one call
        at a time) from the first row until the generator is exhausted or closed."""
        if images is None and isinstance(labels, numbers.Integral) and not isinstance(labels, bool):
            labels = [labels]
        labels, images, rows, guidance = self._checked(labels, images, rows, temperature, top_k, guidance)
        with one_call(self, "SIM.stream"):
            yield from self._rows(labels, images, rows, temperature, seed, top_k, False, kv_cache, guidance,
                                  precision, prefill=images is not None)

    def _checked(self, labels, images, rows, temperature, top_k, guidance):
        """generate's (images None) or complete's arguments, checked: (labels uint8 [N] or
        None, images or None, rows, guidance)."""
        cfg = self.cfg
        if images is None:
            if rows:
                raise ValueError(f"rows={rows!r} needs images (the rows to complete)")
            labels = check_sampling_args(labels, temperature, top_k, cfg.n_classes)
            return labels, None, 0, check_guidance(guidance, cfg)
        images, rows, labels, guidance = check_completion_args(images, rows, labels, guidance, cfg)
        check_sampling_args([0], temperature, top_k, cfg.n_classes)
        return labels, images, rows, guidance

    def _rows(self, labels, images, rows, temperature, seed, top_k, progress, kv_cache, guidance,
              precision, prefill):
        """The sampler behind generate, complete and stream (arguments checked): yields (r,
        images so far) as each row r is finished. labels uint8 [N] or None (the null class);
        images uint8 [N, S, S] whose first `rows` rows are given, or None (rows 0)."""
        cfg = self.cfg
        S = cfg.image_size
        n_out = len(labels) if labels is not None else len(images)
        if labels is None:
            labels = np.full(n_out, cfg.n_classes, np.uint8)
        bf16 = resolve_precision(self.precision if precision is None else precision) == "bfloat16"
        kv_cache = resolve_kv_cache(kv_cache)  # checked before any work
        copies = 1 if guidance == 1.0 else 2
        known = 1 if rows == 0 else rows * S  # positions given: the label, then the pixels
        # every draw up front, step-major: the same numbers as one rng.random(n_out) per step,
        # so a seed gives the same images whatever the groups
        u = (np.random.default_rng(seed).random((cfg.seq_len - known, n_out)) if temperature > 0
             else np.zeros((cfg.seq_len - known, n_out)))
        packed = packed_weights(self, bf16)
        out = np.zeros((n_out, S, S), np.uint8)
        if rows:
            out[:, :rows] = images[:, :rows]
        n_groups = -(-n_out // sampling_group(cfg, n_out, copies, kv_cache))
        bounds = [n_out * i // n_groups for i in range(n_groups + 1)]  # groups of equal size, +-1
        bar = Progress((cfg.seq_len - known) * n_out, "sampling", "px", enabled=progress)
        for g0, g1 in zip(bounds, bounds[1:]):  # each group from its first pixel to its last
            last = g1 == n_out  # rows are yielded as the last group finishes them
            s = _Sampler(self, labels[g0:g1], guidance, kv_cache, bf16, packed)
            if rows:
                s.seq[1:known] = images[g0:g1].reshape(g1 - g0, S * S)[:, 1:known].T[
                    :, np.tile(np.arange(g1 - g0), s.copies)]
            if known > 1 and prefill:
                s.prefill(known)
            else:
                for t in range(known):
                    s.step(t)
            for r in range(rows if last else 0):
                yield r, self._so_far(out, r)
            for t in range(known - 1, cfg.seq_len - 1):
                if t >= known:
                    s.step(t)
                s.draw(t, u[t - known + 1, g0:g1], temperature, top_k)
                bar.update(g1 - g0)
                if (t + 2) % S == 0:  # pixel t+1 ends a row (every row past the given ones)
                    r = (t + 1) // S
                    out[g0:g1, r] = s.seq[r * S:(r + 1) * S, :g1 - g0].T
                    if r == 0:
                        out[g0:g1, 0, 0] = 0  # the label's place; MNIST's pixel 0 is 0
                    if last:
                        yield r, self._so_far(out, r)
        if progress:
            bar.close()

    @staticmethod
    def _so_far(out, r):
        """The images with rows 0..r final and zeros below (out: rows 0..r written)."""
        part = out.copy()
        part[:, r + 1:] = 0
        return part
