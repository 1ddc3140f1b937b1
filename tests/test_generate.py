"""Sampling: the key/value-cache path against full forward passes, and the sampler."""
import numpy as np
import pytest

import simcore
from simcore import _kernels as K
from simcore.generate import generate_full, parse_classes, sample_from_logits

F32 = np.float32


def tiny_model(norm="rmsnorm", head="linear", image_size=9, seed=0):
    cfg = simcore.Config(d_model=16, d_hidden=24, n_layers=2, n_heads=2, norm=norm,
                         head=head, image_size=image_size)
    model = simcore.SIM(cfg, seed=seed)
    for name, w in model.weights.items():  # spread the logits: no near-ties to argmax over
        if name.startswith("head.") or name.endswith("attn.wq"):
            w *= 20
    return model


def test_attention_decode_matches_the_last_row_of_full_attention():
    rng = np.random.default_rng(0)
    B, T, C, NH = 3, 70, 24, 3
    q, k, v = (rng.standard_normal((B, T, C)).astype(F32) for _ in range(3))
    out = np.empty((B, T, C), F32)
    lse = np.empty((B, NH, T), F32)
    scratch = np.empty(K.attention_scratch_size(T, C, NH, K.get_num_threads()), F32)
    K.attention_forward(out, lse, scratch, q, k, v, NH)
    heads = lambda x: x.reshape(B, T, NH, C // NH).transpose(0, 2, 1, 3)  # noqa: E731
    kc = np.ascontiguousarray(heads(k).transpose(0, 1, 3, 2))  # [B, NH, d, T]
    vc = np.ascontiguousarray(heads(v))                        # [B, NH, T, d]
    dscratch = np.empty(K.attention_decode_scratch_size(T, K.get_num_threads()), F32)
    row = np.empty((B, C), F32)
    for pos in (0, 1, 15, 16, 17, 63, 64, 69):
        K.attention_decode(row, dscratch, np.ascontiguousarray(q[:, pos]), kc, vc, pos)
        np.testing.assert_allclose(row, out[:, pos], rtol=1e-5, atol=1e-5)


def test_attention_decode_rejects_position_outside_cache():
    kc = np.zeros((1, 2, 4, 4), F32)
    with pytest.raises(ValueError, match="outside the cache"):
        K.attention_decode(np.zeros((1, 8), F32), np.zeros(100, F32), np.zeros((1, 8), F32),
                           kc, kc.copy(), 4)
    with pytest.raises(ValueError, match=r"kcache: expected shape \[1, 2, 4, 5\]"):
        K.attention_decode(np.zeros((1, 8), F32), np.zeros(100, F32), np.zeros((1, 8), F32),
                           np.zeros((1, 2, 5, 4), F32), np.zeros((1, 2, 5, 4), F32), 1)


@pytest.mark.parametrize("norm,head", [("rmsnorm", "linear"), ("none", "mlp")])
def test_cached_greedy_decoding_matches_full_forward_passes(norm, head):
    model = tiny_model(norm, head)
    labels = np.arange(5)
    cached = model.generate(labels, temperature=0)
    full = generate_full(model, labels, temperature=0)
    assert cached.shape == (5, 9, 9) and cached.dtype == np.uint8
    full_imgs = full.reshape(5, 9, 9)
    np.testing.assert_array_equal(cached.reshape(5, -1)[:, 1:], full_imgs.reshape(5, -1)[:, 1:])
    assert len(np.unique(cached)) > 1  # the test would be vacuous on a constant image


def test_sampling_with_a_seed_is_reproducible_and_seeds_differ():
    model = tiny_model()
    a = model.generate([1, 2, 3], temperature=1.0, seed=7)
    b = model.generate([1, 2, 3], temperature=1.0, seed=7)
    c = model.generate([1, 2, 3], temperature=1.0, seed=8)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_sampler_follows_softmax_of_logits_over_temperature():
    rng = np.random.default_rng(0)
    logits = np.log(np.array([[0.5, 0.3, 0.2] + [1e-12] * 253], F32))
    draws = sample_from_logits(np.repeat(logits, 20000, axis=0), 1.0, rng)
    freq = np.bincount(draws, minlength=256)[:3] / 20000
    np.testing.assert_allclose(freq, [0.5, 0.3, 0.2], atol=0.02)
    hot = sample_from_logits(np.repeat(logits, 20000, axis=0), 0.5, rng)  # p^2, renormalised
    want = np.array([0.25, 0.09, 0.04]) / 0.38
    np.testing.assert_allclose(np.bincount(hot, minlength=256)[:3] / 20000, want, atol=0.02)


def test_top_k_samples_only_the_k_most_likely_values():
    rng = np.random.default_rng(1)
    logits = rng.standard_normal((500, 256)).astype(F32)
    draws = sample_from_logits(logits, 1.0, rng, top_k=3)
    top3 = np.argsort(logits, axis=1)[:, -3:]
    assert all(d in row for d, row in zip(draws, top3))


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(labels=[10]), ValueError, "labels must lie in 0..9"),
    (dict(labels=[]), ValueError, "non-empty"),
    (dict(labels=[1.5]), TypeError, "integers"),
    (dict(labels=[1], temperature=-1.0), ValueError, "temperature"),
    (dict(labels=[1], temperature=float("nan")), ValueError, "temperature"),
    (dict(labels=[1], top_k=0), ValueError, "top_k"),
])
def test_bad_sampling_arguments_raise_clear_errors(kwargs, exc, match):
    model = tiny_model(image_size=4)
    with pytest.raises(exc, match=match):
        model.generate(**kwargs)


def test_parse_classes_accepts_ranges_and_lists_and_rejects_nonsense():
    assert parse_classes("0-9", 10) == list(range(10))
    assert parse_classes("1,4,7", 10) == [1, 4, 7]
    assert parse_classes("0-2,8", 10) == [0, 1, 2, 8]
    for bad in ("a", "0-10", "", "3-"):
        with pytest.raises(ValueError, match="--classes"):
            parse_classes(bad, 10)


def test_pytorch_reference_kv_sampler_agrees_with_simcore_greedy():
    """The benchmark's PyTorch sampler decodes the same model to the same images."""
    pytest.importorskip("torch")
    from simcore.torch_reference import generate_kv
    model = tiny_model()
    labels = [0, 4, 7]
    ours = model.generate(labels, temperature=0)
    theirs = np.asarray(generate_kv(model.weights, model.cfg, labels, temperature=0, seed=0))
    np.testing.assert_array_equal(ours.reshape(3, -1)[:, 1:], theirs.reshape(3, -1)[:, 1:])
