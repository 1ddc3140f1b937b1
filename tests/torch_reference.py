"""Plain-PyTorch reference implementation of the ``simcore`` pixel transformer.

This module is the ground truth that the C kernels are checked against in the
tests: logits, the cross-entropy loss, the gradient of every weight, and one
AdamW optimizer step.  It is deliberately written with ordinary PyTorch ops
(autograd does the backward pass) and contains no randomness; every function is
a pure function of the config, the weights and the tokens it is given.

Model (V = 256 tokens, T_max = image_size ** 2):

    x = token_embedding[tokens] + pe[:T]          # fixed 2-D sinusoidal pe
    x[:, t] += above_embedding[tokens[:, t - S + 1]]  for t >= S - 1, S = image_size
                                                  # (only with cfg.pixel_above)
    x[b, t] += class_embedding[tokens[b, 0]]      # every t (only with cfg.class_everywhere)
    for each layer:
        x = x + Attn(Norm1(x))                    # causal MHA, no biases
        x = x + MLP(Norm2(x))                     # silu(h @ w1) @ w2
    h = Norm_head(x)                              # only for norm == "rmsnorm"
    logits = h @ head.w                           # head == "linear"
           | silu(h @ head.w1) @ head.w2          # head == "mlp"
    loss = mean CE(logits[:, :-1], tokens[:, 1:]) # nats

All weight matrices are used as ``x @ W`` (input dimension first).

Public API
----------
position_encoding(T, d, image_size) -> np.ndarray float32 [T, d]
param_shapes(cfg) -> dict name -> shape (canonical order)
manual_attention(q, k, v) -> explicit masked-softmax attention (for checking SDPA)
TorchSIM(cfg, weights, dtype=torch.float32, attention="sdpa")
    .params: dict name -> nn.Parameter; .forward(tokens) -> logits; .loss(tokens)
torch_grads(cfg, weights, tokens, dtype=torch.float64) -> (loss, logits, grads)
torch_adamw_step(cfg, weights, tokens, lr, betas, eps, weight_decay, clip) -> new weights
torch_muon_steps(cfg, weights, token_batches, lr, muon_lr, ...) -> new weights
"""

import math

import numpy as np
import torch
import torch.nn.functional as F

VOCAB = 256
RMS_EPS = 1e-5


# --------------------------------------------------------------------------- #
# Config helpers
# --------------------------------------------------------------------------- #
def _uses_rmsnorm(cfg):
    norm = str(cfg.norm)
    if norm not in ("rmsnorm", "none"):
        raise ValueError(f"unknown norm {norm!r} (expected 'rmsnorm' or 'none')")
    return norm == "rmsnorm"


def _head_kind(cfg):
    head = str(cfg.head)
    if head not in ("linear", "mlp"):
        raise ValueError(f"unknown head {head!r} (expected 'linear' or 'mlp')")
    return head


def param_shapes(cfg):
    """Name -> shape of every weight tensor, in canonical order."""
    d, dh = int(cfg.d_model), int(cfg.d_hidden)
    rms = _uses_rmsnorm(cfg)
    shapes = {"token_embedding": (VOCAB, d)}
    if getattr(cfg, "pixel_above", False):
        shapes["above_embedding"] = (VOCAB, d)
    for i in range(int(cfg.n_layers)):
        p = f"layers.{i}."
        if rms:
            shapes[p + "attn_norm.weight"] = (d,)
        for w in ("wq", "wk", "wv", "wo"):
            shapes[p + "attn." + w] = (d, d)
        if rms:
            shapes[p + "mlp_norm.weight"] = (d,)
        shapes[p + "mlp.w1"] = (d, dh)
        shapes[p + "mlp.w2"] = (dh, d)
    if rms:
        shapes["head_norm.weight"] = (d,)
    if _head_kind(cfg) == "linear":
        shapes["head.w"] = (d, VOCAB)
    else:
        shapes["head.w1"] = (d, dh)
        shapes["head.w2"] = (dh, VOCAB)
    if getattr(cfg, "class_everywhere", False):
        # a row per class, then one for the null class (label dropout, guidance)
        shapes["class_embedding"] = (int(cfg.n_classes) + bool(getattr(cfg, "null_class", False)), d)
    return shapes


def is_norm_gain(name):
    """True for RMSNorm gains (excluded from weight decay)."""
    return name.endswith("norm.weight")


# --------------------------------------------------------------------------- #
# Building blocks
# --------------------------------------------------------------------------- #
def position_encoding(T, d, image_size):
    """Fixed 2-D sinusoidal position encoding, float32 [T, d].

    Position t -> (row, col) = divmod(t, image_size); half = d // 2; for
    i < half // 2 with freq_i = 10000 ** (-2 i / half):
        pe[t, 2i]          = sin(row * freq_i)
        pe[t, 2i + 1]      = cos(row * freq_i)
        pe[t, half + 2i]   = sin(col * freq_i)
        pe[t, half + 2i+1] = cos(col * freq_i)
    Any remaining channels are zero.  Computed in float64, cast to float32.
    """
    T, d, image_size = int(T), int(d), int(image_size)
    pe = np.zeros((T, d), dtype=np.float64)
    half = d // 2
    t = np.arange(T, dtype=np.int64)
    row = (t // image_size).astype(np.float64)
    col = (t % image_size).astype(np.float64)
    for i in range(half // 2):
        freq = 10000.0 ** (-2.0 * i / half)
        pe[:, 2 * i] = np.sin(row * freq)
        pe[:, 2 * i + 1] = np.cos(row * freq)
        pe[:, half + 2 * i] = np.sin(col * freq)
        pe[:, half + 2 * i + 1] = np.cos(col * freq)
    return pe.astype(np.float32)


def rmsnorm(x, weight):
    return x / torch.sqrt(x.pow(2).mean(dim=-1, keepdim=True) + RMS_EPS) * weight


def manual_attention(q, k, v):
    """Causal attention with an explicit masked softmax; q, k, v: [B, H, T, dh]."""
    T, dh = q.shape[-2], q.shape[-1]
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(dh)
    mask = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
    scores = scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


def sdpa_attention(q, k, v):
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)


def _as_tokens(tokens):
    t = torch.as_tensor(np.asarray(tokens) if not torch.is_tensor(tokens) else tokens)
    t = t.to(torch.long)
    if t.dim() == 1:
        t = t.unsqueeze(0)
    if t.dim() != 2:
        raise ValueError(f"tokens must be [B, T], got shape {tuple(t.shape)}")
    return t


# --------------------------------------------------------------------------- #
# Model
# --------------------------------------------------------------------------- #
class TorchSIM(torch.nn.Module):
    """Reference model.  ``self.params`` maps the canonical weight names to
    ``nn.Parameter``s (copies of the given numpy weights, cast to ``dtype``)."""

    def __init__(self, cfg, weights, dtype=torch.float32, attention="sdpa"):
        super().__init__()
        self.cfg = cfg
        self.dtype = dtype
        self.d_model = int(cfg.d_model)
        self.d_hidden = int(cfg.d_hidden)
        self.n_layers = int(cfg.n_layers)
        self.n_heads = int(cfg.n_heads)
        self.image_size = int(cfg.image_size)
        self.t_max = self.image_size ** 2
        self.rms = _uses_rmsnorm(cfg)
        self.head_kind = _head_kind(cfg)
        if self.d_model % self.n_heads != 0:
            raise ValueError("d_model must be divisible by n_heads")
        self.d_head = self.d_model // self.n_heads
        if attention == "sdpa":
            self._attend = sdpa_attention
        elif attention == "manual":
            self._attend = manual_attention
        else:
            raise ValueError(f"unknown attention impl {attention!r}")

        shapes = param_shapes(cfg)
        missing = [n for n in shapes if n not in weights]
        extra = [n for n in weights if n not in shapes]
        if missing or extra:
            raise KeyError(f"weights mismatch: missing={missing} unexpected={extra}")
        self.params = {}
        for name, shape in shapes.items():
            w = np.asarray(weights[name])
            if tuple(w.shape) != tuple(shape):
                raise ValueError(f"{name}: shape {w.shape} != expected {shape}")
            p = torch.nn.Parameter(torch.tensor(w, dtype=dtype))
            # ParameterDict keys cannot contain '.', so register under a mangled
            # name; self.params keeps the canonical names.
            self.register_parameter(name.replace(".", "__"), p)
            self.params[name] = p

        pe = position_encoding(self.t_max, self.d_model, self.image_size)
        self.register_buffer("pe", torch.tensor(pe).to(dtype), persistent=False)

    def _norm(self, x, name):
        return rmsnorm(x, self.params[name]) if self.rms else x

    def _attn(self, h, i):
        P = self.params
        p = f"layers.{i}.attn."
        B, T, d = h.shape
        H, dh = self.n_heads, self.d_head

        def split(z):  # [B, T, d] -> [B, H, T, dh]
            return z.view(B, T, H, dh).transpose(1, 2)

        q = split(h @ P[p + "wq"])
        k = split(h @ P[p + "wk"])
        v = split(h @ P[p + "wv"])
        o = self._attend(q, k, v)
        o = o.transpose(1, 2).reshape(B, T, d)
        return o @ P[p + "wo"]

    def _mlp(self, h, i):
        P = self.params
        p = f"layers.{i}.mlp."
        return F.silu(h @ P[p + "w1"]) @ P[p + "w2"]

    def forward(self, tokens):
        tokens = _as_tokens(tokens)
        B, T = tokens.shape
        if T > self.t_max:
            raise ValueError(f"sequence length {T} > T_max {self.t_max}")
        P = self.params
        x = P["token_embedding"][tokens] + self.pe[:T]
        if "above_embedding" in P and T >= self.image_size:
            shift = self.image_size - 1  # position t predicts pixel t+1; above it: t+1-S
            above = P["above_embedding"][tokens[:, :T - shift]]
            x = x + F.pad(above, (0, 0, shift, 0))
        if "class_embedding" in P:
            x = x + P["class_embedding"][tokens[:, 0]].unsqueeze(1)  # the label, at every position
        for i in range(self.n_layers):
            x = x + self._attn(self._norm(x, f"layers.{i}.attn_norm.weight"), i)
            x = x + self._mlp(self._norm(x, f"layers.{i}.mlp_norm.weight"), i)
        h = self._norm(x, "head_norm.weight")
        if self.head_kind == "linear":
            return h @ P["head.w"]
        return F.silu(h @ P["head.w1"]) @ P["head.w2"]

    def loss_from_logits(self, logits, tokens):
        tokens = _as_tokens(tokens)
        pred = logits[:, :-1, :].reshape(-1, VOCAB)
        target = tokens[:, 1:].reshape(-1)
        return F.cross_entropy(pred, target, reduction="mean")

    def loss(self, tokens):
        return self.loss_from_logits(self.forward(tokens), tokens)


# --------------------------------------------------------------------------- #
# Drivers used by the tests
# --------------------------------------------------------------------------- #
def torch_grads(cfg, weights, tokens, dtype=torch.float64, attention="sdpa"):
    """One forward + backward.

    Returns (loss: float, logits: float64 np [B, T, 256], grads: dict name ->
    float64 np array with the same shape as the weight)."""
    model = TorchSIM(cfg, weights, dtype=dtype, attention=attention)
    logits = model(tokens)
    loss = model.loss_from_logits(logits, tokens)
    loss.backward()
    grads = {}
    for name, p in model.params.items():
        g = p.grad if p.grad is not None else torch.zeros_like(p)
        grads[name] = g.detach().to(torch.float64).numpy().copy()
    return (float(loss.item()),
            logits.detach().to(torch.float64).numpy().copy(),
            grads)


def torch_adamw_step(cfg, weights, tokens, lr, betas=(0.9, 0.95), eps=1e-8,
                     weight_decay=0.01, clip=None, dtype=torch.float32):
    """One torch.optim.AdamW step from fresh optimizer state.

    Two param groups: ``weight_decay`` on every parameter except the norm gains
    (names ending in "norm.weight"), 0 on the norm gains.  If ``clip`` is not
    None, ``clip_grad_norm_(all params, clip)`` runs before the step.
    Returns the updated weights as float32 numpy arrays (same names)."""
    model = TorchSIM(cfg, weights, dtype=dtype)
    decay = [p for n, p in model.params.items() if not is_norm_gain(n)]
    no_decay = [p for n, p in model.params.items() if is_norm_gain(n)]
    groups = [{"params": decay, "weight_decay": float(weight_decay)}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    opt = torch.optim.AdamW(groups, lr=float(lr), betas=tuple(betas),
                            eps=float(eps), foreach=False)
    opt.zero_grad(set_to_none=True)
    loss = model.loss(tokens)
    loss.backward()
    if clip is not None:
        torch.nn.utils.clip_grad_norm_(list(model.params.values()), float(clip))
    opt.step()
    return {n: p.detach().to(torch.float32).numpy().copy()
            for n, p in model.params.items()}


def is_muon_matrix(name):
    """The blocks' matrices (attention and MLP weights): the tensors Muon updates."""
    return name.startswith("layers.") and not is_norm_gain(name)


def newton_schulz5(g, steps=5):
    """Keller Jordan's quintic Newton-Schulz iteration towards g's nearest
    semi-orthogonal matrix (on the wide orientation)."""
    a, b, c = 3.4445, -4.7750, 2.0315
    x = g / (g.norm() + 1e-7)
    tall = x.shape[0] > x.shape[1]
    if tall:
        x = x.T
    for _ in range(steps):
        s = x @ x.T
        x = a * x + (b * s + c * s @ s) @ x
    return x.T if tall else x


def torch_muon_steps(cfg, weights, token_batches, lr, muon_lr, momentum=0.95,
                     betas=(0.9, 0.95), eps=1e-8, weight_decay=0.01, clip=None,
                     dtype=torch.float64):
    """Steps of Muon (the blocks' matrices) + torch.optim.AdamW (the rest, norm gains
    undecayed), from fresh state, one per batch of tokens. Muon: Nesterov momentum,
    Newton-Schulz, decoupled weight decay lr * weight_decay, step scaled by
    sqrt(max(1, fan_out / fan_in)) (weights are [in, out] here).
    Returns the updated weights as float32 numpy arrays (same names)."""
    model = TorchSIM(cfg, weights, dtype=dtype)
    muon = {n: p for n, p in model.params.items() if is_muon_matrix(n)}
    rest = [(n, p) for n, p in model.params.items() if n not in muon]
    groups = [{"params": [p for n, p in rest if not is_norm_gain(n)], "weight_decay": float(weight_decay)},
              {"params": [p for n, p in rest if is_norm_gain(n)], "weight_decay": 0.0}]
    opt = torch.optim.AdamW([g for g in groups if g["params"]], lr=float(lr), betas=tuple(betas),
                            eps=float(eps), foreach=False)
    bufs = {n: torch.zeros_like(p) for n, p in muon.items()}
    for tokens in token_batches:
        opt.zero_grad(set_to_none=True)
        for p in muon.values():
            p.grad = None
        model.loss(tokens).backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(list(model.params.values()), float(clip))
        opt.step()
        with torch.no_grad():
            for n, p in muon.items():
                bufs[n].mul_(momentum).add_(p.grad)
                x = newton_schulz5(p.grad + momentum * bufs[n])
                p.mul_(1 - muon_lr * weight_decay)
                p.sub_(muon_lr * math.sqrt(max(1.0, p.shape[1] / p.shape[0])) * x)
    return {n: p.detach().to(torch.float32).numpy().copy()
            for n, p in model.params.items()}


# --------------------------------------------------------------------------- #
# Sampling with a key/value cache (for benchmarks against simcore.generate)
# --------------------------------------------------------------------------- #
def generate_kv(model_or_weights, cfg, labels, temperature=1.0, seed=None, guidance=None):
    """Sample one image per class label with a key/value cache: uint8 [N, S, S].

    The PyTorch counterpart of ``SIM.generate``: all images advance
    together; each new pixel runs one position per image through the layers,
    appends its key and value to per-layer caches [N, H, T, dh], and attends
    over the cache with ``scaled_dot_product_attention`` (one query, every
    cached position, so no mask). ``model_or_weights`` is a TorchSIM or a
    weights dict (then a float32 TorchSIM is built). Sampling uses a
    ``torch.Generator`` seeded with ``seed``, so images differ from simcore's
    for the same seed; temperature 0 is greedy. Pixel 0 holds the label while
    sampling and is 0 in the returned images, as in simcore. guidance other than
    1 (a model with a null class) draws each image twice over, with its label and
    with the null class n_classes, from the logits null + guidance * (label - null);
    None is 2 for a model with a null class, else 1 (as in simcore).
    """
    if isinstance(model_or_weights, TorchSIM):
        model = model_or_weights
    else:
        model = TorchSIM(cfg, model_or_weights)
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.size == 0 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError("labels must be a non-empty 1-D sequence of class ids")
    if labels.min() < 0 or labels.max() >= int(cfg.n_classes):
        raise ValueError(f"labels must lie in 0..{int(cfg.n_classes) - 1}")
    temperature = float(temperature)
    if not (math.isfinite(temperature) and temperature >= 0):
        raise ValueError(f"temperature must be a finite number >= 0, got {temperature!r}")
    # the arguments are simcore's, so their checks and default are simcore's own
    # (simcore/sampling.py); the sampling below is this file's
    from simcore.sampling import check_guidance
    guidance = check_guidance(guidance, cfg)
    n_out = len(labels)
    if guidance != 1.0:
        labels = np.concatenate([labels, np.full(n_out, int(cfg.n_classes))])
    gen = torch.Generator()
    if seed is None:
        gen.seed()
    else:
        gen.manual_seed(int(seed))

    P = model.params
    N, T, d = len(labels), model.t_max, model.d_model
    H, dh, L = model.n_heads, model.d_head, model.n_layers
    with torch.inference_mode():
        tokens = torch.zeros(N, T, dtype=torch.long)
        tokens[:, 0] = torch.as_tensor(labels, dtype=torch.long)
        kc = [torch.empty(N, H, T, dh, dtype=model.dtype) for _ in range(L)]
        vc = [torch.empty(N, H, T, dh, dtype=model.dtype) for _ in range(L)]
        for t in range(T - 1):
            x = P["token_embedding"][tokens[:, t]] + model.pe[t]          # [N, d]
            shift = model.image_size - 1
            if "above_embedding" in P and t >= shift:                     # the pixel above t+1
                x = x + P["above_embedding"][tokens[:, t - shift]]
            if "class_embedding" in P:
                x = x + P["class_embedding"][tokens[:, 0]]
            for i in range(L):
                p = f"layers.{i}."
                h = model._norm(x, p + "attn_norm.weight")
                q = (h @ P[p + "attn.wq"]).view(N, H, 1, dh)
                kc[i][:, :, t] = (h @ P[p + "attn.wk"]).view(N, H, dh)
                vc[i][:, :, t] = (h @ P[p + "attn.wv"]).view(N, H, dh)
                o = F.scaled_dot_product_attention(q, kc[i][:, :, :t + 1], vc[i][:, :, :t + 1])
                x = x + o.reshape(N, d) @ P[p + "attn.wo"]
                x = x + model._mlp(model._norm(x, p + "mlp_norm.weight"), i)
            h = model._norm(x, "head_norm.weight")
            if model.head_kind == "linear":
                logits = h @ P["head.w"]
            else:
                logits = F.silu(h @ P["head.w1"]) @ P["head.w2"]
            if guidance != 1.0:
                null = logits[n_out:]
                logits = null + (logits[:n_out] - null) * guidance
            if temperature == 0:
                new = logits.argmax(dim=-1)
            else:
                probs = torch.softmax(logits.double() / temperature, dim=-1)
                new = torch.multinomial(probs, 1, generator=gen).squeeze(1)
            tokens[:, t + 1] = new.repeat(N // n_out)
        images = tokens[:n_out].to(torch.uint8).view(n_out, model.image_size, model.image_size).numpy().copy()
    images[:, 0, 0] = 0
    return images
