"""The whole model: weight layout, gradients, PyTorch parity, AdamW and Muon, masking, errors.

Gradients are checked twice: against central finite differences of the model's
own float32 loss (needs nothing but NumPy), and against float64 PyTorch autograd
on the same weights (tests/torch_reference.py; those tests skip without torch,
and CI requires torch, so they run there). Sizes are tiny so the file stays fast.
"""
import itertools
import math
import os

import numpy as np
import pytest

import simcore
from simcore import SIM, Config

# every test here runs once per vector level this CPU supports (conftest.py), except
# those marked one_level (nothing they check depends on the level): they run once
pytestmark = pytest.mark.usefixtures("at_every_isa")

NORM_HEAD = list(itertools.product(("rmsnorm", "none"), ("linear", "mlp")))


# ---- helpers ----------------------------------------------------------------------------

def torch_ref():
    """tests/torch_reference.py, or skip the test when torch is not installed."""
    pytest.importorskip("torch")
    import torch_reference  # beside this file (pytest puts tests/ on sys.path)

    return torch_reference


def tiny_cfg(norm="rmsnorm", head="linear", **kw):
    sizes = dict(d_model=8, d_hidden=16, n_layers=2, n_heads=2, image_size=4)
    sizes.update(kw)
    return Config(norm=norm, head=head, **sizes)


def random_tokens(rng, B, T, n_classes=10):
    """uint8 [B, T]: random pixels, a valid class label in token 0."""
    tokens = rng.integers(0, 256, (B, T), dtype=np.uint8)
    tokens[:, 0] = rng.integers(0, n_classes, B)
    return tokens


def randomize_weights(model, seed):
    """Order-one weights: matrices N(0, 1/fan_in), norm gains 1 + N(0, 0.2^2).

    At the GPT-2 init wq/wk are so small that attention is nearly uniform and
    their gradients are tiny; with these weights attention is peaked and every
    tensor's gradient is far above float32 rounding noise. The token embedding
    keeps its unit-scale init.
    """
    rng = np.random.default_rng(seed)
    for name, w in model.weights.items():
        if name.endswith("norm.weight"):
            w[...] = 1.0 + 0.2 * rng.standard_normal(w.shape)
        elif name != "token_embedding":
            w[...] = rng.standard_normal(w.shape) / math.sqrt(w.shape[0])


def max_rel_err(got, want):
    """max |got - want| / max |want| (the error relative to the reference's scale)."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape, (got.shape, want.shape)
    return float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-30))


# ---- layout -------------------------------------------------------------------------------

@pytest.mark.one_level
@pytest.mark.parametrize("norm,head", NORM_HEAD)
def test_weight_names_and_shapes_match_the_spec(norm, head):
    ref = torch_ref()
    cfg = tiny_cfg(norm, head, d_model=12, d_hidden=20, n_heads=3)
    model = SIM(cfg, seed=0)
    want = {name: tuple(shape) for name, shape in ref.param_shapes(cfg).items()}

    assert list(model.weights) == list(want)          # same names, same canonical order
    assert {n: w.shape for n, w in model.weights.items()} == want
    assert {n: g.shape for n, g in model.grads.items()} == want
    assert all(w.dtype == np.float32 for w in model.weights.values())
    assert model.n_params == sum(math.prod(s) for s in want.values())


# ---- gradients ----------------------------------------------------------------------------

FD_EPS = 1e-2    # step along a *unit* direction: each element moves ~FD_EPS / sqrt(size)
FD_RTOL = 2e-2
FD_ATOL = 1e-5   # float32 loss noise / (2 eps) measured at ~4e-6; truncation is ~1e-3 relative


@pytest.mark.parametrize("norm,head,options", [(n, h, {}) for n, h in NORM_HEAD]
                         + [("rmsnorm", "linear", {"pixel_above": True, "class_everywhere": True})])
def test_gradient_of_every_weight_matches_finite_differences(norm, head, options):
    """d/d eps of loss(w + eps u) for a random unit u, per tensor, equals sum(grad * u).

    u is redrawn (up to 5 times) until sum(grad * u) is at least 20x the
    absolute tolerance, so no tensor passes merely by having a tiny projection.

    The model's loss is float32 per position, averaged in float64. With eps=1e-3
    the rounding noise (~4e-5 after dividing by 2 eps) swamps the directional
    derivative of the weaker tensors, hence eps=1e-2, where truncation error is
    still ~1e-3 relative.
    """
    cfg = tiny_cfg(norm, head, **options)
    model = SIM(cfg, seed=1)
    randomize_weights(model, seed=11)
    rng = np.random.default_rng(21)
    tokens = random_tokens(rng, 3, cfg.seq_len)
    model.forward_backward(tokens)
    grads = {name: g.astype(np.float64) for name, g in model.grads.items()}

    failures = []
    for name, w in model.weights.items():
        for _ in range(5):  # a direction along which the derivative is measurable
            u = rng.standard_normal(w.shape)
            u /= np.linalg.norm(u)
            analytic = float(np.sum(grads[name] * u))
            if abs(analytic) > 20 * FD_ATOL:
                break
        assert abs(analytic) > 20 * FD_ATOL, f"{name}: gradient {analytic:.2e} too small to test"
        w0 = w.copy()
        w[...] = w0 + FD_EPS * u
        up = model.loss(tokens)
        w[...] = w0 - FD_EPS * u
        down = model.loss(tokens)
        w[...] = w0
        numeric = (up - down) / (2 * FD_EPS)
        if abs(numeric - analytic) > FD_RTOL * abs(analytic) + FD_ATOL:
            failures.append(f"{name}: analytic {analytic:.6e} vs numeric {numeric:.6e}")
    assert not failures, "\n".join(failures)


PARITY_CONFIGS = {
    # several heads, d_head=12 (not a power of two), T=81 spans two 64-row blocks
    "small-like": Config(d_model=24, d_hidden=48, n_layers=2, n_heads=2, norm="rmsnorm",
                         head="linear", image_size=9),
    # the original program's shape: one head, no norm, MLP head
    "original-like": Config(d_model=16, d_hidden=32, n_layers=2, n_heads=1, norm="none",
                            head="mlp", image_size=9),
    # with the embedding of the pixel above (8 positions back at image_size 9)
    "pixel-above": Config(d_model=24, d_hidden=48, n_layers=2, n_heads=2, norm="rmsnorm",
                          head="linear", image_size=9, pixel_above=True),
    # with the class embedding at every position too
    "class-everywhere": Config(d_model=24, d_hidden=48, n_layers=2, n_heads=2, norm="rmsnorm",
                               head="linear", image_size=9, pixel_above=True, class_everywhere=True),
    # with a null class (its own row of the class table; token 0 of some images holds it)
    "null-class": Config(d_model=24, d_hidden=48, n_layers=2, n_heads=2, norm="rmsnorm", head="linear",
                         image_size=9, class_everywhere=True, null_class=True),
}


@pytest.mark.parametrize("weights", ["init", "random"])
@pytest.mark.parametrize("name", list(PARITY_CONFIGS))
def test_logits_loss_and_gradients_match_pytorch_float64(name, weights):
    torch = pytest.importorskip("torch")
    ref = torch_ref()
    cfg = PARITY_CONFIGS[name]
    model = SIM(cfg, seed=2)
    if weights == "random":
        randomize_weights(model, seed=12)
    tokens = random_tokens(np.random.default_rng(22), 3, cfg.seq_len)
    if cfg.null_class:
        tokens[1, 0] = cfg.n_classes  # the null class is a label like the others

    logits = model.forward(tokens)
    loss = model.forward_backward(tokens)
    ref_loss, ref_logits, ref_grads = ref.torch_grads(cfg, model.weights, tokens,
                                                      dtype=torch.float64)

    errs = {"logits": max_rel_err(logits, ref_logits),
            "loss": abs(loss - ref_loss) / abs(ref_loss)}
    errs.update({f"grad {n}": max_rel_err(model.grads[n], g) for n, g in ref_grads.items()})
    worst = max((k for k in errs if k.startswith("grad")), key=errs.get)
    print(f"\n[{name}/{weights}] max rel err: logits {errs['logits']:.2e}, "
          f"loss {errs['loss']:.2e}, grads {errs[worst]:.2e} ({worst[5:]})")
    assert set(ref_grads) == set(model.grads)
    bad = {k: v for k, v in errs.items() if v >= 1e-4}
    assert not bad, f"relative errors >= 1e-4: {bad}"


# ---- optimizer ----------------------------------------------------------------------------

ADAMW = dict(betas=(0.9, 0.95), eps=1e-8, weight_decay=0.01)


@pytest.mark.parametrize("clip", [None, 0.005])
@pytest.mark.parametrize("name", list(PARITY_CONFIGS))
def test_one_adamw_step_matches_torch_optim_adamw(name, clip):
    """Both groups (decayed matrices, undecayed norm gains), optional global-norm clip.

    Tolerance is relative to lr, the size of a first Adam step. Where |grad| is
    near eps=1e-8, the step grad/(|grad|+eps) turns float32 rounding of the
    gradient into an O(lr) difference (up to 3e-3 lr seen, depending on the
    vector level's summation order), so those elements (|grad| < 1e-6) are only
    held to the step's bound; all others must agree to 1e-3 lr.
    """
    ref = torch_ref()
    cfg = PARITY_CONFIGS[name]
    lr = 1e-2
    model = SIM(cfg, seed=3)
    before = {n: w.copy() for n, w in model.weights.items()}
    tokens = random_tokens(np.random.default_rng(23), 3, cfg.seq_len)

    want = ref.torch_adamw_step(cfg, before, tokens, lr=lr, clip=clip, **ADAMW)
    model.train_step(tokens, lr=lr, clip=clip, **ADAMW)

    conditioned = {n: np.abs(model.grads[n]) > 1e-6 for n in want}
    err = max(np.abs(model.weights[n] - want[n])[conditioned[n]].max(initial=0) for n in want) / lr
    err_tiny = max(np.abs(model.weights[n] - want[n])[~conditioned[n]].max(initial=0)
                   for n in want) / lr
    assert err_tiny < 2.5     # a first step moves a weight by at most ~lr
    err_scale = max(max_rel_err(model.weights[n], want[n]) for n in want)
    print(f"\n[{name}, clip={clip}] adamw max |w - ref| = {err:.2e} lr "
          f"(max rel err to weight scale {err_scale:.2e})")
    moved = max(np.abs(want[n] - before[n]).max() for n in want) / lr
    assert moved > 0.5      # the step is about lr per element, so lr is the scale
    assert err < 1e-3
    # The norm gains are well conditioned (|grad| >> eps) and must not be decayed:
    # decaying them would shift them by lr * weight_decay * 1 = 1e-2 lr.
    gains = [n for n in want if n.endswith("norm.weight")]
    assert all(np.abs(model.weights[n] - want[n]).max() / lr < 1e-4 for n in gains)
    if clip is not None:
        # The clip is active and changes the result far beyond the tolerance.
        assert model.last_grad_norm > 2 * clip
        unclipped = ref.torch_adamw_step(cfg, before, tokens, lr=lr, clip=None, **ADAMW)
        assert max(np.abs(unclipped[n] - want[n]).max() for n in want) / lr > 20 * 3e-3


@pytest.mark.parametrize("name", list(PARITY_CONFIGS))
def test_two_muon_steps_match_pytorch_muon_and_adamw(name):
    """Muon for the blocks' matrices (Nesterov momentum, Newton-Schulz, decoupled decay,
    the fan-out scale), AdamW for embedding, head and gains, the clip active: two steps
    against the float64 PyTorch reference (tests/torch_reference.py)."""
    ref = torch_ref()
    cfg = PARITY_CONFIGS[name]
    model = SIM(cfg, seed=3)
    randomize_weights(model, seed=13)
    before = {n: w.copy() for n, w in model.weights.items()}
    rng = np.random.default_rng(25)
    batches = [random_tokens(rng, 3, cfg.seq_len) for _ in range(2)]
    lr, muon_lr, clip = 1e-3, 0.02, 0.05
    want = ref.torch_muon_steps(cfg, before, batches, lr=lr, muon_lr=muon_lr, clip=clip, **ADAMW)
    tiny = {n: False for n in want}  # an element whose gradient was tiny at either step
    for tokens in batches:
        model.forward_backward(tokens)
        tiny = {n: tiny[n] | (np.abs(model.grads[n]) < 1e-6) for n in want}
        model.apply_gradients(lr=lr, muon_lr=muon_lr, clip=clip, **ADAMW)
    assert model.last_grad_norm > 2 * clip
    assert model.muon_tensors == {n for n in want if ref.is_muon_matrix(n)}
    for n in want:
        err = np.abs(model.weights[n] - want[n])
        if n in model.muon_tensors:
            # every element moves by about muon_lr * scale / sqrt(size): the error is
            # measured against the step itself
            step = np.abs(want[n] - before[n]).max()
            assert step > 1e-3 * muon_lr, n
            assert err.max() < 1e-3 * step, (n, err.max(), step)
        else:  # as in the AdamW test: tiny-gradient elements only held to the step's bound
            # (a gradient of 1e-8, clipped, is below eps: the first step's update then
            # turns float32's relative error in it into a large part of the step)
            assert err[~tiny[n]].max(initial=0) < 2e-3 * lr, (n, err[~tiny[n]].max())
            assert err[tiny[n]].max(initial=0) < 5 * lr, n


# ---- masking and batching -----------------------------------------------------------------

def test_logits_at_a_position_do_not_depend_on_later_tokens():
    cfg = Config(d_model=16, d_hidden=32, n_layers=2, n_heads=2, image_size=12)  # T=144
    model = SIM(cfg, seed=4)
    randomize_weights(model, seed=14)
    rng = np.random.default_rng(24)
    tokens = random_tokens(rng, 2, cfg.seq_len)
    logits = model.forward(tokens)
    for t in (0, 1, 62, 63, 64, 65, 127, 128, 142):
        changed = tokens.copy()
        changed[:, t + 1:] = rng.integers(0, 256, changed[:, t + 1:].shape)
        got = model.forward(changed)
        np.testing.assert_allclose(got[:, :t + 1], logits[:, :t + 1], rtol=0, atol=1e-6,
                                   err_msg=f"logits up to position {t} changed")
        assert not np.allclose(got[:, t + 1:], logits[:, t + 1:])  # later ones did change


def test_logits_of_a_prefix_equal_the_prefix_of_the_logits():
    cfg = Config(d_model=16, d_hidden=32, n_layers=2, n_heads=2, image_size=12)
    model = SIM(cfg, seed=5)
    randomize_weights(model, seed=15)
    tokens = random_tokens(np.random.default_rng(25), 2, cfg.seq_len)
    full = model.forward(tokens)
    for T in (1, 2, 63, 64, 65, 100):
        np.testing.assert_allclose(model.forward(tokens[:, :T]), full[:, :T], rtol=0, atol=1e-5,
                                   err_msg=f"prefix of length {T}")


def test_logits_of_a_row_do_not_depend_on_other_rows():
    cfg = tiny_cfg(image_size=9)
    model = SIM(cfg, seed=6)
    randomize_weights(model, seed=16)
    rng = np.random.default_rng(26)
    tokens = random_tokens(rng, 3, cfg.seq_len)
    logits = model.forward(tokens)
    others = tokens.copy()
    others[[0, 2]] = random_tokens(rng, 2, cfg.seq_len)
    np.testing.assert_allclose(model.forward(others)[1], logits[1], rtol=0, atol=1e-5)
    np.testing.assert_allclose(model.forward(tokens[1:2])[0], logits[1], rtol=0, atol=1e-5)


def test_batch_size_can_change_between_calls():
    """B=1, 3, 1 again (and more shapes than the buffer cache holds): same logits per row."""
    cfg = tiny_cfg(image_size=9)
    model = SIM(cfg, seed=7)
    randomize_weights(model, seed=17)
    tokens = random_tokens(np.random.default_rng(27), 4, cfg.seq_len)
    alone = [model.forward(tokens[i:i + 1])[0] for i in range(4)]
    for batch in ([0], [0, 1, 2], [0], [3, 1], [2, 3, 0, 1], [1, 2, 3], [2]):
        got = model.forward(tokens[batch])
        for row, i in enumerate(batch):
            np.testing.assert_allclose(got[row], alone[i], rtol=0, atol=1e-5,
                                       err_msg=f"row {i} in batch {batch}")


@pytest.mark.one_level
def test_non_contiguous_and_integer_token_arrays_are_accepted():
    cfg = tiny_cfg()
    model = SIM(cfg, seed=8)
    tokens = random_tokens(np.random.default_rng(28), 3, cfg.seq_len)
    want = model.forward(tokens)
    wide = np.zeros((3, 2 * cfg.seq_len), np.uint8)
    wide[:, ::2] = tokens
    np.testing.assert_array_equal(model.forward(wide[:, ::2]), want)
    np.testing.assert_array_equal(model.forward(np.asfortranarray(tokens)), want)
    np.testing.assert_array_equal(model.forward(tokens.astype(np.int64)), want)
    np.testing.assert_array_equal(model.forward(tokens.tolist()), want)


# ---- learning -----------------------------------------------------------------------------

@pytest.mark.one_level
@pytest.mark.slow
def test_tiny_model_overfits_eight_mnist_images():
    """Memorising 8 real digits drives the loss far below 1 bit per pixel.

    The digits are 2x2 max-pooled to 14x14: at 28x28 one step of even this tiny
    model costs ~0.6 s on a CPU core (attention is quadratic in T=784), too slow
    for a unit test. Measured: ~0.14 bits/dim after 100 steps, ~12 s under load.
    """
    if not os.environ.get("SIMCORE_DATA"):
        pytest.skip("set SIMCORE_DATA=<folder with the MNIST IDX files> to run")
    from simcore import data

    images, labels = data.load_split("mnist", "test", download=False)
    small = images[:8].reshape(8, 14, 2, 14, 2).max(axis=(2, 4))
    tokens = data.to_tokens(small, labels[:8])
    cfg = Config(d_model=32, d_hidden=64, n_layers=2, n_heads=2, image_size=14)
    model = SIM(cfg, seed=0)
    first = model.loss(tokens) / math.log(2)
    for _ in range(100):
        model.train_step(tokens, lr=1e-2, clip=1.0, **ADAMW)
    bits = model.loss(tokens) / math.log(2)
    print(f"\noverfit: {first:.3f} -> {bits:.3f} bits/dim")
    assert first > 7.0      # starts near log2(256) = 8
    assert bits < 0.5


# ---- bad arguments ------------------------------------------------------------------------

def _model():
    return SIM(tiny_cfg(), seed=0)   # image_size=4: T <= 16


def _ok_tokens(T=16):
    return random_tokens(np.random.default_rng(0), 2, T)


def _with(tokens, idx, value):
    tokens = tokens.astype(np.int64)
    tokens[idx] = value
    return tokens


BAD_TOKENS = [
    ("float dtype", _ok_tokens().astype(np.float32), TypeError, "integers"),
    ("bool dtype", _ok_tokens() > 0, TypeError, "integers"),
    ("1-d", _ok_tokens()[0], ValueError, "shape"),
    ("3-d", _ok_tokens()[None], ValueError, "shape"),
    ("token 300", _with(_ok_tokens(), (1, 5), 300), ValueError, "out of range"),
    ("token -1", _with(_ok_tokens(), (0, 3), -1), ValueError, "out of range"),
    ("label >= n_classes", _with(_ok_tokens(), (1, 0), 10), ValueError, "class label"),
    ("zero batch", np.zeros((0, 16), np.uint8), ValueError, "empty batch"),
    ("sequence too long", _ok_tokens(17), ValueError, "sequence length 17"),
]


@pytest.mark.one_level
@pytest.mark.parametrize("what,tokens,exc,match", BAD_TOKENS, ids=[b[0] for b in BAD_TOKENS])
@pytest.mark.parametrize("method", ["forward", "loss", "forward_backward", "train_step"])
def test_bad_tokens_raise_clear_errors(method, what, tokens, exc, match):
    model = _model()
    before = model.params.copy()
    with pytest.raises(exc, match=match):
        getattr(model, method)(tokens)
    np.testing.assert_array_equal(model.params, before)


@pytest.mark.one_level
@pytest.mark.parametrize("method", ["loss", "forward_backward", "train_step"])
def test_loss_needs_at_least_two_tokens(method):
    with pytest.raises(ValueError, match="sequence length 1"):
        getattr(_model(), method)(_ok_tokens(1))


BAD_STEP_ARGS = [
    dict(lr=float("nan")), dict(lr=-1e-3), dict(lr=float("inf")), dict(lr="0.001"),
    dict(weight_decay=-0.1), dict(eps=float("nan")), dict(clip=0.0), dict(clip=-1.0),
    dict(clip=float("nan")), dict(betas=(1.0, 0.95)), dict(betas=(0.9, -0.1)),
]


@pytest.mark.one_level
@pytest.mark.parametrize("kwargs", BAD_STEP_ARGS, ids=[repr(k) for k in BAD_STEP_ARGS])
def test_bad_optimizer_arguments_raise_value_error_and_change_nothing(kwargs):
    model = _model()
    before = model.params.copy()
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        model.train_step(_ok_tokens(), **kwargs)
    np.testing.assert_array_equal(model.params, before)


@pytest.mark.one_level
def test_rejected_betas_do_not_advance_the_optimizer_step():
    tokens = _ok_tokens()
    a, b = _model(), _model()
    with pytest.raises(ValueError, match="betas"):
        b.train_step(tokens, lr=1e-2, betas=(1.0, 0.95))
    assert b.opt_step == 0
    a.train_step(tokens, lr=1e-2)
    b.train_step(tokens, lr=1e-2)
    np.testing.assert_array_equal(a.params, b.params)


@pytest.mark.one_level
def test_model_needs_a_config():
    with pytest.raises(TypeError, match="Config"):
        SIM(dict(d_model=8), seed=0)
    with pytest.raises(TypeError, match="Config"):
        SIM("small", seed=0)


BAD_CONFIGS = [
    ("d_model % n_heads", dict(d_model=12, n_heads=5), ValueError, "divisible"),
    ("d_model % 4", dict(d_model=6, n_heads=1), ValueError, "multiple of 4"),
    ("unknown norm", dict(norm="layernorm"), ValueError, "norm"),
    ("unknown head", dict(head="conv"), ValueError, "head"),
    ("zero layers", dict(n_layers=0), ValueError, "n_layers"),
    ("negative size", dict(image_size=-3), ValueError, "image_size"),
    ("too many classes", dict(n_classes=257), ValueError, "n_classes"),
    ("str size", dict(d_model="128"), TypeError, "d_model"),
    ("float size", dict(d_hidden=512.0), TypeError, "d_hidden"),
    ("bool size", dict(n_layers=True), TypeError, "n_layers"),
    ("norm not a str", dict(norm=None), TypeError, "norm"),
]


@pytest.mark.one_level
@pytest.mark.parametrize("what,fields,exc,match", BAD_CONFIGS, ids=[b[0] for b in BAD_CONFIGS])
def test_bad_config_fields_raise(what, fields, exc, match):
    with pytest.raises(exc, match=match):
        Config(**fields)
    with pytest.raises(exc, match=match):
        Config.preset("small", **fields)


@pytest.mark.one_level
def test_unknown_preset_and_unknown_override_name_raise():
    with pytest.raises(ValueError, match="unknown preset 'tiny'"):
        Config.preset("tiny")
    with pytest.raises(TypeError, match="d_modle"):
        Config.preset("small", d_modle=64)
    with pytest.raises(TypeError, match="d_modle"):
        Config().replace(d_modle=64)


# ---- non-finite values --------------------------------------------------------------------

@pytest.mark.parametrize("name", ["layers.0.attn.wq", "head.w", "layers.1.mlp_norm.weight"])
def test_nan_weight_makes_train_step_raise_and_leaves_state_unchanged(name):
    model = _model()
    tokens = _ok_tokens()
    model.train_step(tokens, lr=1e-2)               # non-zero moments to protect
    model.weights[name].flat[0] = np.nan
    state = [a.copy() for a in (model.params, model.moment1, model.moment2)]
    step = model.opt_step
    with pytest.raises(FloatingPointError, match="non-finite"):
        model.train_step(tokens, lr=1e-2)
    for a, b in zip((model.params, model.moment1, model.moment2), state):
        np.testing.assert_array_equal(a, b)          # NaN compares equal here
    assert model.opt_step == step


# ---- presets and determinism --------------------------------------------------------------

@pytest.mark.one_level
def test_presets_have_the_specified_sizes():
    small, original = Config.preset("small"), Config.preset("original")
    assert (small.d_model, small.d_hidden, small.n_layers, small.n_heads, small.norm,
            small.head) == (128, 512, 4, 4, "rmsnorm", "linear")
    assert (original.d_model, original.d_hidden, original.n_layers, original.n_heads,
            original.norm, original.head) == (512, 2048, 12, 1, "none", "mlp")
    sprint = Config.preset("sprint")
    assert sprint == small.replace(pixel_above=True)
    for cfg in (small, original, sprint):
        assert (cfg.image_size, cfg.n_classes, cfg.seq_len) == (28, 10, 784)
    assert not small.pixel_above and not original.pixel_above
    assert not any(cfg.class_everywhere for cfg in (small, original, sprint))
    assert not any(cfg.null_class for cfg in (small, original, sprint))
    guided = Config.preset("guided")
    assert guided == sprint.replace(class_everywhere=True, null_class=True)
    assert set(simcore.PRESETS) == {"small", "original", "sprint", "guided"}


@pytest.mark.one_level
def test_the_null_class_is_one_more_label_after_the_classes():
    cfg = Config(n_classes=10, null_class=True, class_everywhere=True)
    assert (cfg.n_labels, Config(n_classes=10).n_labels) == (11, 10)
    model = SIM(cfg.replace(d_model=16, d_hidden=16, n_layers=1, image_size=4), seed=0)
    assert model.weights["class_embedding"].shape == (11, 16)
    tokens = np.zeros((1, 16), np.uint8)
    tokens[0, 0] = 10
    assert np.isfinite(model.loss(tokens))
    tokens[0, 0] = 11
    with pytest.raises(ValueError, match=r"must be < 11 \(n_classes=10, then the null class\), got 11"):
        model.loss(tokens)
    with pytest.raises(ValueError, match="plus the null class exceeds the 256 token values"):
        Config(n_classes=256, null_class=True)


@pytest.mark.one_level
def test_preset_overrides_change_only_the_named_fields():
    cfg = Config.preset("original", image_size=9, n_layers=2)
    assert cfg == Config(d_model=512, d_hidden=2048, n_layers=2, n_heads=1, norm="none",
                         head="mlp", image_size=9)
    assert Config.from_dict(cfg.to_dict()) == cfg


def test_same_seed_gives_identical_training_and_different_seeds_differ():
    cfg = tiny_cfg(image_size=9)
    tokens = random_tokens(np.random.default_rng(29), 3, cfg.seq_len)
    a, b, c = SIM(cfg, seed=42), SIM(cfg, seed=42), SIM(cfg, seed=43)
    np.testing.assert_array_equal(a.params, b.params)
    assert not np.array_equal(a.params, c.params)
    losses = [[m.train_step(tokens, lr=1e-2, **ADAMW) for _ in range(3)] for m in (a, b, c)]
    assert losses[0] == losses[1]
    np.testing.assert_array_equal(a.params, b.params)
    assert losses[0] != losses[2]


@pytest.mark.parametrize("threads", [2, 3])
def test_a_training_step_on_more_threads_matches_one_thread(threads):
    # sizes at which every parallel loop splits (csrc/parallel.h: OpenMP's threads, or
    # simcore's own pthread pool in a build without OpenMP): one thread's loss and
    # gradients up to the rounding of sums split across threads, one thread's step up
    # to what that rounding moves an AdamW update (the first step's m / sqrt(v) is
    # +-1 except for gradients near eps), and the same bits twice on `threads`
    cfg = Config(d_model=64, d_hidden=128, n_layers=1, n_heads=2, image_size=28)
    tokens = random_tokens(np.random.default_rng(3), 4, cfg.seq_len)
    lr = 1e-2
    before = simcore.get_threads()
    runs = []
    try:
        for n in (1, threads, threads):
            simcore.set_threads(n)
            model = SIM(cfg, seed=0)
            loss = model.forward_backward(tokens)
            grads = model.grad_arena.copy()
            model.train_step(tokens, lr=lr)
            runs.append((loss, grads, model.params.copy()))
    finally:
        simcore.set_threads(before)
    (loss1, grads1, params1), (loss, grads, params), again = runs
    assert loss == again[0]
    np.testing.assert_array_equal(grads, again[1])
    np.testing.assert_array_equal(params, again[2])
    assert abs(loss - loss1) < 1e-6 * abs(loss1)
    np.testing.assert_allclose(grads, grads1, rtol=0, atol=1e-5 * np.abs(grads1).max())
    np.testing.assert_allclose(params, params1, rtol=0, atol=1e-2 * lr)
