"""Completion: the given rows in one pass into the key/value cache (prefill), then the
sampler from there; held against the one-pixel-at-a-time path and full forward passes."""
import io
import threading

import numpy as np
import pytest
from PIL import Image

import simcore
from simcore import _kernels as K
from simcore import generate, images
from simcore.generate import generate_full
from simcore.model import _Sampler

# every test here runs once per vector level this CPU supports (conftest.py), except
# those marked one_level
pytestmark = pytest.mark.usefixtures("at_every_isa")

F32 = np.float32
S = 9  # the tiny models' images are 9 x 9


def tiny_model(norm="rmsnorm", head="linear", pixel_above=True, class_everywhere=True, null_class=True, seed=0):
    cfg = simcore.Config(d_model=16, d_hidden=24, n_layers=2, n_heads=2, norm=norm, head=head, image_size=S,
                         pixel_above=pixel_above, class_everywhere=class_everywhere, null_class=null_class)
    model = simcore.SIM(cfg, seed=seed)
    for name, w in model.weights.items():  # spread the logits: no near-ties to argmax over
        if name.startswith("head.") or name.endswith("attn.wq"):
            w *= 20
    return model


def some_images(n, seed=1):
    return np.random.default_rng(seed).integers(0, 256, (n, S, S), dtype=np.uint8)


# ---- the kernels: kv_cache_fill and block_prefill -----------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("T", [1, 15, 16, 17, 40])
def test_kv_cache_fill_stores_what_one_write_per_position_stores(dtype, T):
    rng = np.random.default_rng(0)
    B, Tmax, C, NH = 3, 48, 12, 3
    k, v = (rng.standard_normal((B, T, C)).astype(F32) for _ in range(2))
    kshape, vshape = K.kv_cache_shapes(B, Tmax, C, NH)
    want_k, want_v = np.full(kshape, np.nan, dtype), np.full(vshape, np.nan, dtype)
    for pos in range(T):
        K.kv_cache_write(want_k, want_v, np.ascontiguousarray(k[:, pos]), np.ascontiguousarray(v[:, pos]), pos)
    got_k, got_v = np.full(kshape, np.nan, dtype), np.full(vshape, np.nan, dtype)
    K.kv_cache_fill(got_k, got_v, k, v)
    np.testing.assert_array_equal(got_k, want_k)  # NaN where nothing was written, in both
    np.testing.assert_array_equal(got_v, want_v)


@pytest.mark.one_level
def test_kv_cache_fill_refuses_what_it_cannot_hold_and_checks_its_shapes():
    kc, vc = (np.zeros(s, np.float16) for s in K.kv_cache_shapes(2, 16, 8, 2))
    k = np.ones((2, 5, 8), F32)
    v = k.copy()
    v[1, 4, 3] = 1e6
    with pytest.raises(ValueError, match="float16 cache cannot hold"):
        K.kv_cache_fill(kc, vc, k, v)
    assert not kc.any() and not vc.any()  # nothing stored
    with pytest.raises(ValueError, match="outside the cache"):
        K.kv_cache_fill(kc, vc, np.ones((2, 17, 8), F32), np.ones((2, 17, 8), F32))
    with pytest.raises(ValueError, match=r"k: expected shape \[2, 5, 8\]"):
        K.kv_cache_fill(kc, vc, np.ones((3, 5, 8), F32), v)
    with pytest.raises(ValueError, match=r"v: expected shape \[2, 5, 8\]"):
        K.kv_cache_fill(kc, vc, k, np.ones((2, 4, 8), F32))
    with pytest.raises(ValueError, match="prefix length must be positive"):
        K.kv_cache_fill(kc, vc, np.ones((2, 0, 8), F32), np.ones((2, 0, 8), F32))


@pytest.mark.parametrize("norm", ["rmsnorm", "none"])
@pytest.mark.parametrize("P", [1, 7, 16, 29])
@pytest.mark.parametrize("dtype,tol", [(np.float32, 2e-5), (np.float16, 3e-3)])
def test_block_decode_after_block_prefill_gives_the_full_forward_pass(norm, P, dtype, tol):
    """block_prefill over positions 0..P-1 gives the training pass's residual stream
    there (bit for bit: it is that pass), and block_decode then goes on from position P
    as if every earlier position had been decoded: to float32 rounding with a float32
    cache, to half precision's with float16."""
    cfg = simcore.Config(d_model=32, d_hidden=48, n_layers=2, n_heads=2, norm=norm, image_size=6)
    model = simcore.SIM(cfg, seed=1)
    B, T, C, H = 3, cfg.seq_len, cfg.d_model, cfg.d_hidden
    tokens = np.random.default_rng(2).integers(0, 256, (B, T), dtype=np.uint8)
    a = model._forward(tokens)
    want = [a.x[l].reshape(B, T, C).copy() for l in range(cfg.n_layers + 1)]
    kshape, vshape = K.kv_cache_shapes(B, T, C, cfg.n_heads)
    caches = [(np.zeros(kshape, dtype), np.zeros(vshape, dtype)) for _ in range(cfg.n_layers)]
    threads = K.get_num_threads()
    acts = np.empty(K.block_acts_size(norm == "rmsnorm", B, P, C, H, cfg.n_heads), F32)
    scratch = np.empty(K.block_scratch_size(B, P, C, H, cfg.n_heads, threads), F32)
    x = np.ascontiguousarray(want[0][:, :P])
    for l, (kc, vc) in enumerate(caches):
        xout = np.empty_like(x)
        K.block_prefill(xout, kc, vc, acts, scratch, x, model.layers[l].as_tuple())
        ref = model._forward(np.ascontiguousarray(tokens[:, :P])).x[l + 1]  # the training pass on the prefix
        np.testing.assert_array_equal(xout, ref)
        np.testing.assert_allclose(xout, want[l + 1][:, :P], rtol=2e-5, atol=2e-5)
        x = xout
    dscratch = np.empty(K.block_decode_scratch_size(B, C, H, vshape[2], threads), F32)
    for t in range(P, T):
        x = np.ascontiguousarray(want[0][:, t])
        for l, (kc, vc) in enumerate(caches):
            K.block_decode(x, kc, vc, dscratch, model.layers[l].as_tuple(), t)
            np.testing.assert_allclose(x, want[l + 1][:, t], rtol=tol, atol=tol)


@pytest.mark.one_level
def test_block_prefill_checks_its_arguments():
    cfg = simcore.Config(d_model=16, d_hidden=24, n_layers=1, n_heads=2, image_size=4)
    w = simcore.SIM(cfg, seed=0).layers[0].as_tuple()
    kc, vc = (np.zeros(s, F32) for s in K.kv_cache_shapes(2, 16, 16, 2))
    x, xout = np.zeros((2, 5, 16), F32), np.zeros((2, 5, 16), F32)
    acts = np.empty(K.block_acts_size(True, 2, 5, 16, 24, 2), F32)
    scratch = np.empty(K.block_scratch_size(2, 5, 16, 24, 2, K.get_num_threads()), F32)
    with pytest.raises(ValueError, match="acts: needs"):
        K.block_prefill(xout, kc, vc, acts[:10], scratch, x, w)
    with pytest.raises(ValueError, match="scratch: needs"):
        K.block_prefill(xout, kc, vc, acts, scratch[:10], x, w)
    with pytest.raises(ValueError, match="outside the cache"):
        big = np.zeros((2, 17, 16), F32)
        K.block_prefill(big.copy(), kc, vc, acts, scratch, big, w)
    with pytest.raises(ValueError, match="xout must not overlap"):
        K.block_prefill(x, kc, vc, acts, scratch, x, w)
    with pytest.raises(TypeError, match="tuple of 8"):
        K.block_prefill(xout, kc, vc, acts, scratch, x, w[:7])


# ---- SIM.complete: the prefill against the references -----------------------------------

@pytest.mark.parametrize("rows", [1, 3, 5])
@pytest.mark.parametrize("labels", [[0, 3, 7], None])
def test_the_logits_right_after_prefill_are_the_forward_pass_on_the_prefix(rows, labels):
    model = tiny_model()
    images = some_images(3)
    P = rows * S
    lab = np.array(labels if labels is not None else [model.cfg.n_classes] * 3, np.uint8)
    s = _Sampler(model, lab, 1.0, "float32", False)
    s.seq[1:P] = images.reshape(3, -1)[:, 1:P].T
    s.prefill(P)
    logits = np.empty((3, 256), F32)
    model.head_logits(logits, s.x, s.h, s.rstd, s.hpre, s.hact)
    tokens = images.reshape(3, -1)[:, :P].copy()
    tokens[:, 0] = lab
    np.testing.assert_allclose(logits, model.forward(tokens)[:, P - 1], rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("rows", [1, 2, 4, 8])
@pytest.mark.parametrize("temperature", [0.0, 1.0])
@pytest.mark.parametrize("labels,guidance", [([0, 3, 7, 9], 1.0), ([0, 3, 7, 9], 2.5), (None, None)])
def test_completion_with_prefill_draws_what_one_pixel_at_a_time_draws(rows, temperature, labels, guidance):
    """With a float32 cache the prefill's keys and values are those the decode steps
    would have written, to float32 rounding, so the same seed draws the same pixels."""
    model = tiny_model()
    images = some_images(4)
    kw = dict(labels=labels, temperature=temperature, guidance=guidance, seed=3, kv_cache="float32")
    fast = model.complete(images, rows, **kw)
    slow = model.complete(images, rows, prefill=False, **kw)
    np.testing.assert_array_equal(fast, slow)
    assert len(np.unique(fast[:, rows:])) > 1  # not vacuous


@pytest.mark.parametrize("labels,guidance", [([1, 5, 8], 1.0), ([1, 5, 8], 3.0), (None, None)])
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_completion_draws_what_full_forward_passes_draw(labels, guidance, temperature):
    """The original's method (a full forward pass per pixel, two with guidance), started
    from the given rows."""
    model = tiny_model()
    images = some_images(3, seed=4)
    rows = 4
    got = model.complete(images, rows, labels=labels, temperature=temperature, guidance=guidance, seed=9,
                         kv_cache="float32")
    prefix = images.reshape(3, -1)[:, :rows * S]
    full = generate_full(model, labels if labels is not None else [0, 0, 0], temperature, seed=9,
                         guidance=guidance, prefix=prefix, null_labels=labels is None)
    np.testing.assert_array_equal(got.reshape(3, -1)[:, rows * S:], full[:, rows * S:])


def test_completion_keeps_the_given_rows_exactly_and_samples_the_rest():
    model = tiny_model()
    images = some_images(5)
    images[:, 0, 0] = 200  # pixel 0 is the label in the model's sequence, but kept in the output
    for rows in (1, 4, S - 1):
        out = model.complete(images, rows, labels=[1, 2, 3, 4, 5], seed=0)
        assert out.shape == (5, S, S) and out.dtype == np.uint8
        np.testing.assert_array_equal(out[:, :rows], images[:, :rows])
        assert not np.array_equal(out[:, rows:], images[:, rows:])
    np.testing.assert_array_equal(model.complete(images, S, labels=[1, 2, 3, 4, 5]), images)


def test_completing_zero_rows_is_generating():
    """rows=0: nothing given but the class, so the same draws as generate's (pixel 0
    is 0, as generate's); the rows below are never read."""
    model = tiny_model()
    for guidance in (1.0, 2.0):
        want = model.generate([2, 6], seed=5, guidance=guidance)
        got = model.complete(some_images(2), 0, labels=[2, 6], seed=5, guidance=guidance)
        np.testing.assert_array_equal(got, want)


def test_without_a_class_the_null_class_completes():
    model = tiny_model()
    images = some_images(2)
    free = model.complete(images, 3, seed=1)
    forced = model.complete(images, 3, labels=[4, 4], seed=1, guidance=1)
    assert not np.array_equal(free, forced)
    prefix = images.reshape(2, -1)[:, :27]
    full = generate_full(model, [0, 0], 1.0, seed=1, prefix=prefix, null_labels=True)
    np.testing.assert_array_equal(free.reshape(2, -1)[:, 27:], full[:, 27:])


@pytest.mark.parametrize("dtype", ["float16", "auto"])
def test_completion_with_a_half_cache_keeps_the_rows_and_is_reproducible(dtype):
    model = tiny_model()
    images = some_images(3)
    a = model.complete(images, 3, labels=[1, 2, 3], seed=2, kv_cache=dtype)
    b = model.complete(images, 3, labels=[1, 2, 3], seed=2, kv_cache=dtype)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a[:, :3], images[:, :3])


def test_a_prefill_in_several_chunks_is_the_prefill_in_one(monkeypatch):
    from simcore import model as model_module
    model = tiny_model()
    images = some_images(7)
    whole = model.complete(images, 4, labels=list(range(7)), seed=1, kv_cache="float32")
    monkeypatch.setattr(model_module, "PREFILL_POSITIONS", 2 * 4 * S)  # 2 sequences per chunk of 14
    np.testing.assert_array_equal(model.complete(images, 4, labels=list(range(7)), seed=1, kv_cache="float32"),
                                  whole)


def one_image_per_group(monkeypatch, model, copies):
    """SAMPLE_CACHE_BYTES set below one image's caches: the sampler takes one at a time."""
    from simcore import model as model_module
    assert model_module.sampling_group(model.cfg, 5, copies, "auto") == 5  # the tiny model: one group
    monkeypatch.setattr(model_module, "SAMPLE_CACHE_BYTES", 1)
    assert model_module.sampling_group(model.cfg, 5, copies, "auto") == 1


@pytest.mark.parametrize("guidance", [1.0, 2.0])
@pytest.mark.parametrize("rows", [0, 3])
def test_sampling_in_groups_draws_what_one_batch_draws(monkeypatch, rows, guidance):
    """The images go through in groups when their caches would outgrow the budget; the
    draws are made up front, so a seed gives the same images whatever the groups."""
    model = tiny_model()
    images, labels = some_images(5), [0, 3, 7, 1, 9]
    run = ((lambda: model.generate(labels, seed=2, guidance=guidance, kv_cache="float32")) if rows == 0 else
           (lambda: model.complete(images, rows, labels, seed=2, guidance=guidance, kv_cache="float32")))
    whole = run()
    one_image_per_group(monkeypatch, model, 1 if guidance == 1.0 else 2)
    np.testing.assert_array_equal(run(), whole)
    seen = list(model.stream(labels=labels, images=images if rows else None, rows=rows, seed=2,
                             guidance=guidance, kv_cache="float32"))
    assert [r for r, _ in seen] == list(range(S))  # rows come as the last group finishes them
    np.testing.assert_array_equal(seen[-1][1], whole)
    for r, partial in seen:
        np.testing.assert_array_equal(partial[:, :r + 1], whole[:, :r + 1])
        assert not partial[:, r + 1:].any()


def test_the_groups_bound_the_caches_of_a_large_batch(monkeypatch):
    from simcore import model as model_module
    cfg = simcore.Config.preset("small")
    group = model_module.sampling_group(cfg, 1000, 2, "float16")
    kshape, vshape = K.kv_cache_shapes(group, cfg.seq_len, cfg.d_model, cfg.n_heads)
    cache_bytes = 2 * 2 * cfg.n_layers * (np.prod(kshape) + np.prod(vshape))  # float16, twice for guidance
    assert 1 <= group < 1000 and cache_bytes <= model_module.SAMPLE_CACHE_BYTES
    assert model_module.sampling_group(cfg, 3, 2, "float16") <= 3
    monkeypatch.setattr(model_module, "SAMPLE_CACHE_BYTES", 1)  # less than one image: one at a time
    assert model_module.sampling_group(cfg, 1000, 2, "float16") == 1


def test_stream_yields_every_row_once_in_order_and_ends_with_the_result():
    model = tiny_model()
    images = some_images(2)
    seen = list(model.stream(labels=[3, 5], images=images, rows=3, seed=4))
    assert [r for r, _ in seen] == list(range(S))
    for r, partial in seen:
        np.testing.assert_array_equal(partial[:, :r + 1], seen[-1][1][:, :r + 1])  # rows so far are final
        assert not partial[:, r + 1:].any()
    np.testing.assert_array_equal(seen[-1][1], model.complete(images, 3, labels=[3, 5], seed=4))
    drawn = list(model.stream(labels=[3, 5], seed=4))
    np.testing.assert_array_equal(drawn[-1][1], model.generate([3, 5], seed=4))


def test_a_closed_stream_stops_and_frees_the_model():
    model = tiny_model()
    errors = []

    def other_thread():
        try:
            model.generate([1])
        except RuntimeError as e:
            errors.append(str(e))
    rows = model.stream(labels=[1], seed=0)
    next(rows)
    t = threading.Thread(target=other_thread)
    t.start()
    t.join()
    assert len(errors) == 1 and "already running a call" in errors[0]  # busy while the stream is open
    rows.close()
    t = threading.Thread(target=other_thread)
    t.start()
    t.join()
    assert len(errors) == 1  # free again


# ---- bad input ---------------------------------------------------------------------------

@pytest.mark.one_level
@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(images=np.zeros((2, S, S), np.uint8), rows=-1), ValueError, "rows must be an integer in 0..9"),
    (dict(images=np.zeros((2, S, S), np.uint8), rows=10), ValueError, "rows must be an integer in 0..9"),
    (dict(images=np.zeros((2, S, S), np.uint8), rows=True), ValueError, "rows must be an integer"),
    (dict(images=np.zeros((2, S, S), np.uint8), rows=2.0), ValueError, "rows must be an integer"),
    (dict(images=np.zeros((2, 28, 28), np.uint8), rows=2), ValueError, r"images must have shape \[N, 9, 9\]"),
    (dict(images=np.zeros((0, S, S), np.uint8), rows=2), ValueError, "N >= 1"),
    (dict(images=np.zeros((S, S), np.uint8), rows=2), ValueError, "images must have shape"),
    (dict(images=[[0]], rows=2), TypeError, "images must be a numpy array"),
    (dict(images=np.zeros((1, S, S), np.float32), rows=2), TypeError, "uint8"),
    (dict(images=np.full((1, S, S), 300), rows=2), ValueError, "pixels 0..255"),
    (dict(images=np.zeros((2, S, S), np.uint8), rows=2, labels=[1]), ValueError, "1 class ids for 2 images"),
    (dict(images=np.zeros((2, S, S), np.uint8), rows=2, labels=[1, 10]), ValueError, "labels must lie in 0..9"),
    (dict(images=np.zeros((2, S, S), np.uint8), rows=2, guidance=2.0), ValueError, "guidance 2.0 needs labels"),
    (dict(images=np.zeros((2, S, S), np.uint8), rows=2, labels=3, temperature=-1), ValueError, "temperature"),
    (dict(images=np.zeros((2, S, S), np.uint8), rows=2, labels=3, kv_cache="x"), ValueError, "kv_cache"),
])
def test_bad_completion_arguments_raise_clear_errors(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        tiny_model().complete(**kwargs)


@pytest.mark.one_level
def test_a_model_without_a_null_class_needs_labels_to_complete():
    model = tiny_model(class_everywhere=False, null_class=False)
    with pytest.raises(ValueError, match="no null class"):
        model.complete(some_images(1), 3)
    assert model.complete(some_images(1), 3, labels=[2]).shape == (1, S, S)


# ---- PNGs in, and the command line -------------------------------------------------------

@pytest.mark.one_level
@pytest.mark.parametrize("rows,cols,scale", [(1, 1, 1), (1, 1, 2), (2, 3, 2), (3, 1, 1), (10, 8, 2)])
def test_read_grid_gives_back_the_digits_save_grid_wrote(tmp_path, rows, cols, scale):
    digits = np.random.default_rng(0).integers(0, 256, (rows * cols, 28, 28), dtype=np.uint8)
    path = tmp_path / "grid.png"
    images.save_grid(path, digits, rows, cols, scale=scale)
    got = images.read_grid(path.read_bytes(), side=28)
    np.testing.assert_array_equal(got, digits.reshape(rows, cols, 28, 28))


@pytest.mark.one_level
def test_read_grid_refuses_what_is_not_a_grid_of_digits():
    with pytest.raises(ValueError, match="not a PNG"):
        images.read_grid(b"GIF89a....", side=28)
    with pytest.raises(ValueError, match="not one 28 x 28 digit nor a grid"):
        images.read_grid(images.png_bytes(np.zeros((28, 27), np.uint8)), side=28)
    with pytest.raises(ValueError, match="not a readable PNG"):
        images.read_grid(images.png_bytes(np.zeros((28, 28), np.uint8))[:40], side=28)
    rgb = io.BytesIO()
    Image.fromarray(np.full((28, 28, 3), 255, np.uint8)).save(rgb, format="PNG")
    assert (images.read_grid(rgb.getvalue(), side=28) == 255).all()  # colour made gray


@pytest.mark.one_level
def test_the_command_line_completes_the_digits_of_a_grid(tmp_path, capsys):
    digits = np.random.default_rng(1).integers(0, 256, (4, 28, 28), dtype=np.uint8)
    given = tmp_path / "in.png"
    images.save_grid(given, digits, 2, 2)
    out, npy = tmp_path / "out.png", tmp_path / "out.npy"
    for classes in ([], ["--classes", "3"], ["--classes", "1,2,3,4"]):
        argv = ["--pretrained", "--complete", str(given), "--rows", "26", "--seed", "0", "--out", str(out),
                "--npy", str(npy)] + classes
        assert generate.main(argv) == 0, capsys.readouterr().err
        done = np.load(npy)
        np.testing.assert_array_equal(done[:, :26], digits[:, :26])
        np.testing.assert_array_equal(images.read_grid(out.read_bytes(), 28).reshape(4, 28, 28), done)


@pytest.mark.one_level
@pytest.mark.parametrize("flags,message", [
    (["--rows", "14"], "--rows goes with --complete"),
    (["--complete", "{png}"], "--complete needs --rows"),
    (["--complete", "{png}", "--rows", "29"], "--rows must lie in 0..28"),
    (["--complete", "{png}", "--rows", "3", "--per-class", "2"], "--per-class does not go with --complete"),
    (["--complete", "{png}", "--rows", "3", "--classes", "1,2"], "2 classes for the 1 digits"),
    (["--complete", "{bad}", "--rows", "3"], "not a PNG"),
    (["--complete", "{png}", "--rows", "3", "--out", "{png}"], "the file --complete reads"),
])
def test_the_command_line_says_what_is_wrong_with_a_completion(tmp_path, capsys, flags, message):
    png, bad = tmp_path / "one.png", tmp_path / "bad.png"
    png.write_bytes(images.png_bytes(np.zeros((28, 28), np.uint8)))
    bad.write_bytes(b"not a png")
    argv = ["--pretrained", "--out", str(tmp_path / "o.png")] + [f.format(png=png, bad=bad) for f in flags]
    assert generate.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
