"""Spec for simcore.checkpoint: safetensors checkpoints that round-trip exactly, are written
atomically, and refuse every kind of damaged or mismatched file with a CheckpointError that
names the file.

Models are tiny (d_model=8, 4x4 images) and trained for two steps, so the AdamW moments and
step counter are non-trivial.
"""

import json
import os
import re
import stat
import struct

import numpy as np
import pytest
import safetensors.numpy
from safetensors import safe_open

import simcore
from simcore import SIM, Config, checkpoint
from simcore.checkpoint import CheckpointError

CONFIGS = {
    "rmsnorm-linear": Config(d_model=8, d_hidden=16, n_layers=2, n_heads=2, image_size=4),
    "none-mlp": Config(d_model=8, d_hidden=16, n_layers=2, n_heads=2, image_size=4,
                       norm="none", head="mlp"),
}


def make_tokens(cfg, seed=0, B=3):
    tokens = np.random.default_rng(seed).integers(0, 256, size=(B, cfg.seq_len), dtype=np.uint8)
    tokens[:, 0] %= cfg.n_classes
    return tokens


def trained(cfg, steps=2):
    model = SIM(cfg, seed=1)
    tokens = make_tokens(cfg)
    for _ in range(steps):
        model.train_step(tokens, lr=1e-2)
    return model


@pytest.fixture(params=sorted(CONFIGS))
def cfg(request):
    return CONFIGS[request.param]


@pytest.fixture
def model(cfg):
    return trained(cfg)


@pytest.fixture
def good_file(tmp_path):
    """A checkpoint of the rmsnorm model with moments and a train_state."""
    path = tmp_path / "good.safetensors"
    checkpoint.save(path, trained(CONFIGS["rmsnorm-linear"]), optimizer=True,
                    train_state={"step": 2})
    return path


def read_raw(path):
    """(tensors, metadata) of a safetensors file, as plain writable arrays and a str dict."""
    with safe_open(str(path), framework="numpy") as f:
        return {k: f.get_tensor(k).copy() for k in f.keys()}, dict(f.metadata() or {})


def write_raw(path, tensors, metadata):
    path.write_bytes(safetensors.numpy.save(tensors, metadata=metadata))


# ---- round trips ---------------------------------------------------------------------------


def test_weights_round_trip_exactly(model, tmp_path):
    checkpoint.save(tmp_path / "w.safetensors", model)
    loaded, _ = checkpoint.load(tmp_path / "w.safetensors")
    assert loaded.cfg == model.cfg
    assert loaded.weights.keys() == model.weights.keys()
    for name, w in model.weights.items():
        np.testing.assert_array_equal(loaded.weights[name], w, err_msg=name)


def test_weights_only_checkpoint_starts_a_fresh_optimizer(model, tmp_path):
    checkpoint.save(tmp_path / "w.safetensors", model)
    loaded, _ = checkpoint.load(tmp_path / "w.safetensors", optimizer=True)
    assert model.opt_step == 2 and loaded.opt_step == 0
    assert not loaded.moment1.any() and not loaded.moment2.any()


def test_optimizer_state_round_trips_exactly(model, tmp_path):
    checkpoint.save(tmp_path / "o.safetensors", model, optimizer=True)
    loaded, _ = checkpoint.load(tmp_path / "o.safetensors")
    assert loaded.opt_step == model.opt_step == 2
    assert model.moment1.any() and model.moment2.any()
    np.testing.assert_array_equal(loaded.params, model.params)
    np.testing.assert_array_equal(loaded.moment1, model.moment1)
    np.testing.assert_array_equal(loaded.moment2, model.moment2)


def test_load_with_optimizer_false_ignores_saved_moments(model, tmp_path):
    checkpoint.save(tmp_path / "o.safetensors", model, optimizer=True)
    loaded, _ = checkpoint.load(tmp_path / "o.safetensors", optimizer=False)
    np.testing.assert_array_equal(loaded.params, model.params)
    assert loaded.opt_step == 0 and not loaded.moment1.any() and not loaded.moment2.any()


def test_loaded_model_gives_identical_loss(model, tmp_path):
    checkpoint.save(tmp_path / "w.safetensors", model)
    loaded, _ = checkpoint.load(tmp_path / "w.safetensors")
    tokens = make_tokens(model.cfg, seed=5)
    assert loaded.loss(tokens) == model.loss(tokens)


def test_training_continues_bitwise_identically_after_reload(model, tmp_path):
    checkpoint.save(tmp_path / "o.safetensors", model, optimizer=True)
    loaded, _ = checkpoint.load(tmp_path / "o.safetensors")
    for seed in (7, 8):
        tokens = make_tokens(model.cfg, seed=seed)
        assert loaded.train_step(tokens, lr=1e-2) == model.train_step(tokens, lr=1e-2)
    assert loaded.opt_step == model.opt_step == 4
    np.testing.assert_array_equal(loaded.params, model.params)
    np.testing.assert_array_equal(loaded.moment1, model.moment1)
    np.testing.assert_array_equal(loaded.moment2, model.moment2)


def test_train_state_round_trips(model, tmp_path):
    state = {"step": 1200, "epoch": 3, "batch": 17, "seeds": {"data": 1, "init": 0},
             "best_bpd": 1.25, "history": [[100, 2.5], [200, 2.0]], "note": "ünïcode"}
    checkpoint.save(tmp_path / "s.safetensors", model, train_state=state)
    _, loaded_state = checkpoint.load(tmp_path / "s.safetensors")
    assert loaded_state == state


def test_train_state_is_none_when_not_saved(model, tmp_path):
    checkpoint.save(tmp_path / "w.safetensors", model)
    assert checkpoint.load(tmp_path / "w.safetensors")[1] is None


def test_simcore_save_and_load_are_the_checkpoint_functions(model, tmp_path):
    simcore.save(tmp_path / "m.safetensors", model, optimizer=True, train_state={"step": 2})
    loaded = simcore.load(tmp_path / "m.safetensors")
    assert isinstance(loaded, SIM)
    assert loaded.opt_step == 2
    np.testing.assert_array_equal(loaded.params, model.params)
    np.testing.assert_array_equal(loaded.moment2, model.moment2)
    assert checkpoint.load(tmp_path / "m.safetensors")[1] == {"step": 2}


def test_paths_may_be_str_or_pathlike(model, tmp_path):
    checkpoint.save(str(tmp_path / "a.safetensors"), model)
    loaded, _ = checkpoint.load(str(tmp_path / "a.safetensors"))
    np.testing.assert_array_equal(loaded.params, model.params)


# ---- file contents -------------------------------------------------------------------------


def test_file_is_plain_safetensors_without_pickle(model, tmp_path):
    path = tmp_path / "o.safetensors"
    checkpoint.save(path, model, optimizer=True, train_state={"step": 2})
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])  # a JSON header, not a pickle stream (b"\x80\x0N...")
    assert raw[8:9] == b"{"
    metadata = header.pop("__metadata__")
    assert set(metadata) == {"format", "config", "adam_step", "train_state", "sha256"}
    assert metadata["format"] == "simcore-checkpoint-1"
    assert json.loads(metadata["config"]) == model.cfg.to_dict()
    assert metadata["adam_step"] == "2"
    names = set(model.weights)
    assert set(header) == names | {f"optim.{k}.{n}" for k in "mv" for n in names}
    assert {entry["dtype"] for entry in header.values()} == {"F32"}
    assert set(safetensors.numpy.load(raw)) == set(header)


def test_weights_only_file_holds_exactly_the_weight_tensors(model, tmp_path):
    path = tmp_path / "w.safetensors"
    checkpoint.save(path, model)
    tensors, metadata = read_raw(path)
    assert set(tensors) == set(model.weights)
    assert "train_state" not in metadata
    for name, w in model.weights.items():
        assert tensors[name].shape == w.shape


def test_read_metadata_returns_header_strings(model, tmp_path):
    checkpoint.save(tmp_path / "s.safetensors", model, train_state={"epoch": 1})
    meta = checkpoint.read_metadata(tmp_path / "s.safetensors")
    assert meta["format"] == checkpoint.FORMAT
    assert Config.from_dict(json.loads(meta["config"])) == model.cfg
    assert json.loads(meta["train_state"]) == {"epoch": 1}


def test_read_metadata_rejects_a_foreign_safetensors_file(tmp_path):
    path = tmp_path / "foreign.safetensors"
    write_raw(path, {"x": np.zeros(3, np.float32)}, {"format": "pt"})
    with pytest.raises(CheckpointError, match="format"):
        checkpoint.read_metadata(path)


# ---- atomic writes -------------------------------------------------------------------------


def test_save_leaves_no_temp_files(model, tmp_path):
    checkpoint.save(tmp_path / "o.safetensors", model, optimizer=True)
    checkpoint.save(tmp_path / "o.safetensors", model, optimizer=True)  # overwrite too
    assert sorted(os.listdir(tmp_path)) == ["o.safetensors"]


def test_save_fsyncs_the_file_and_then_its_folder(model, tmp_path, monkeypatch):
    kinds = []
    real_fsync = os.fsync

    def recording_fsync(fd):
        kinds.append("dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        real_fsync(fd)

    monkeypatch.setattr(checkpoint.os, "fsync", recording_fsync)
    checkpoint.save(tmp_path / "o.safetensors", model)
    assert kinds == ["file", "dir"]


def test_failed_replace_keeps_the_old_file_and_removes_the_temp(good_file, monkeypatch):
    before = good_file.read_bytes()
    model = trained(CONFIGS["none-mlp"])

    def broken_replace(src, dst):
        raise OSError("disk on fire")

    monkeypatch.setattr(checkpoint.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk on fire"):
        checkpoint.save(good_file, model)
    assert good_file.read_bytes() == before
    assert os.listdir(good_file.parent) == [good_file.name]


def test_failed_serialisation_keeps_the_old_file(good_file, monkeypatch):
    before = good_file.read_bytes()

    def broken_serialize(tensors, metadata):
        raise RuntimeError("serialiser failed")

    monkeypatch.setattr(checkpoint, "_serialize", broken_serialize)
    with pytest.raises(RuntimeError, match="serialiser failed"):
        checkpoint.save(good_file, trained(CONFIGS["none-mlp"]))
    assert good_file.read_bytes() == before
    assert os.listdir(good_file.parent) == [good_file.name]


def test_interrupted_write_removes_the_temp_file(good_file, monkeypatch):
    before = good_file.read_bytes()

    def interrupted_fsync(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint.os, "fsync", interrupted_fsync)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save(good_file, trained(CONFIGS["none-mlp"]))
    assert good_file.read_bytes() == before
    assert os.listdir(good_file.parent) == [good_file.name]


@pytest.mark.parametrize("state", [{"rng": np.int64(3)}, {"f": lambda: 0}, [1, 2], "step=3"],
                         ids=["numpy-scalar", "function", "list", "str"])
def test_unserialisable_train_state_raises_type_error_before_writing(model, tmp_path, state):
    with pytest.raises(TypeError, match="train_state"):
        checkpoint.save(tmp_path / "s.safetensors", model, train_state=state)
    assert os.listdir(tmp_path) == []


def test_non_finite_weights_are_refused_before_writing(model, tmp_path):
    model.weights["layers.1.mlp.w2"][0, 0] = np.nan
    with pytest.raises(ValueError, match="layers.1.mlp.w2"):
        checkpoint.save(tmp_path / "nan.safetensors", model)
    assert os.listdir(tmp_path) == []


# ---- damaged and mismatched files ----------------------------------------------------------


def test_missing_file_raises_file_not_found_naming_the_path(tmp_path):
    path = tmp_path / "nope.safetensors"
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        checkpoint.load(path)


def test_directory_raises_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError, match=re.escape(str(tmp_path))):
        checkpoint.load(tmp_path)


@pytest.mark.parametrize("content", [b"", b"hello, world\n" * 10, b"\x80\x04\x95" + bytes(64)],
                         ids=["empty", "text", "pickle"])
def test_file_that_is_not_safetensors_raises_checkpoint_error(tmp_path, content):
    path = tmp_path / "junk.safetensors"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="junk.safetensors"):
        checkpoint.load(path)


def test_truncated_file_raises_checkpoint_error_at_every_cut(good_file):
    raw = good_file.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    cuts = [0, 1, 7, 8, 9, 8 + n // 2, 8 + n - 1, 8 + n, 8 + n + 1, (8 + n + len(raw)) // 2,
            len(raw) - 4, len(raw) - 1]
    for cut in cuts:
        good_file.write_bytes(raw[:cut])
        with pytest.raises(CheckpointError, match="good.safetensors"):
            checkpoint.load(good_file)


def test_trailing_garbage_raises_checkpoint_error(good_file):
    good_file.write_bytes(good_file.read_bytes() + b"\0" * 4)
    with pytest.raises(CheckpointError, match="good.safetensors"):
        checkpoint.load(good_file)


def test_any_flipped_header_byte_raises_checkpoint_error(good_file):
    raw = good_file.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    # Every byte of the length prefix, then a spread through the JSON header. XOR 0xFF turns
    # any ASCII byte into invalid UTF-8, so every such flip must be refused.
    positions = list(range(8)) + list(range(8, 8 + n, max(1, n // 40)))
    for pos in positions:
        damaged = bytearray(raw)
        damaged[pos] ^= 0xFF
        good_file.write_bytes(bytes(damaged))
        with pytest.raises(CheckpointError, match="good.safetensors"):
            checkpoint.load(good_file)


def test_flipped_data_bytes_load_or_raise_checkpoint_error(good_file):
    raw = good_file.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    rng = np.random.default_rng(0)
    outcomes = set()
    for pos in rng.integers(8 + n, len(raw), size=40):
        for mask in (0xFF, 0x7F, 0x80):
            damaged = bytearray(raw)
            damaged[pos] ^= mask
            good_file.write_bytes(bytes(damaged))
            try:
                checkpoint.load(good_file)
                outcomes.add("loaded")
            except CheckpointError as e:
                assert "good.safetensors" in str(e)
                outcomes.add("refused")
    assert outcomes <= {"loaded", "refused"} and outcomes


def mutate(path, change):
    """Rewrite the checkpoint at path with change(tensors, metadata) applied."""
    tensors, metadata = read_raw(path)
    change(tensors, metadata)
    write_raw(path, tensors, metadata)


def _set_config(**fields):
    def change(tensors, metadata):
        cfg = json.loads(metadata["config"])
        cfg.update(fields)
        metadata["config"] = json.dumps(cfg)
    return change


def _put(key, value):
    def change(tensors, metadata):
        metadata[key] = value
    return change


def _drop_meta(key):
    return lambda tensors, metadata: metadata.pop(key)


def _drop_tensor(name):
    return lambda tensors, metadata: tensors.pop(name)


def _set_tensor(name, fn):
    def change(tensors, metadata):
        tensors[name] = fn(tensors[name])
    return change


def _poison(value, name="layers.0.attn.wk"):
    def fn(t):
        t = t.copy()
        t.flat[3] = value
        return t
    return _set_tensor(name, fn)


DAMAGE = {
    # metadata
    "no-metadata": (lambda t, m: m.clear(), "format"),
    "no-format": (_drop_meta("format"), "format"),
    "wrong-format": (_put("format", "simcore-checkpoint-2"), "format"),
    "no-config": (_drop_meta("config"), "config"),
    "config-not-json": (_put("config", "{d_model: 8"), "config is not valid JSON"),
    "config-not-object": (_put("config", "[8, 16]"), "config must be a JSON object"),
    "config-invalid-value": (_set_config(d_model=6), "invalid config"),
    "config-wrong-type": (_set_config(n_layers="2"), "invalid config"),
    "config-unknown-field": (_set_config(dropout=0.1), "invalid config"),
    "config-deeply-nested": (_put("config", "[" * 100000 + "]" * 100000), "config"),
    "no-adam-step": (_drop_meta("adam_step"), "adam_step"),
    "adam-step-negative": (_put("adam_step", "-1"), "adam_step"),
    "adam-step-not-int": (_put("adam_step", "2.0"), "adam_step"),
    "adam-step-huge": (_put("adam_step", "9" * 30), "adam_step"),
    "train-state-not-json": (_put("train_state", "{step: 2"), "train_state"),
    "train-state-not-object": (_put("train_state", "[2]"), "train_state"),
    # tensors
    "missing-weight": (_drop_tensor("layers.1.attn.wo"), "missing tensor"),
    "extra-tensor": (lambda t, m: t.update(extra=np.zeros(2, np.float32)), "unexpected tensor"),
    "wrong-shape": (_set_tensor("layers.0.mlp.w1", lambda t: np.ascontiguousarray(t.T)), "shape"),
    "wrong-dtype-f64": (_set_tensor("head.w", lambda t: t.astype(np.float64)), "dtype"),
    "wrong-dtype-f16": (_set_tensor("head.w", lambda t: t.astype(np.float16)), "dtype"),
    "wrong-dtype-int": (_set_tensor("head.w", lambda t: t.view(np.int32)), "dtype"),
    "nan-weight": (_poison(np.nan), "non-finite"),
    "inf-weight": (_poison(np.inf), "non-finite"),
    "nan-moment": (_poison(np.nan, "optim.m.token_embedding"), "non-finite"),
    "negative-second-moment": (_poison(-1.0, "optim.v.head.w"), "negative"),
    "partial-moments": (_drop_tensor("optim.v.layers.0.attn.wq"), "moments present for some"),
    "moment-wrong-shape": (_set_tensor("optim.m.head.w", lambda t: t.reshape(-1)), "shape"),
    "moment-renamed": (lambda t, m: t.update({"optim.x.head.w": t.pop("optim.m.head.w")}),
                       "moments present for some"),
    # a config that does not fit the tensors
    "config-other-d-model": (_set_config(d_model=12, n_heads=2), "shape"),
    "config-other-d-hidden": (_set_config(d_hidden=32), "shape"),
    "config-more-layers": (_set_config(n_layers=3), "missing tensor"),
    "config-fewer-layers": (_set_config(n_layers=1), "unexpected tensor"),
    "config-other-norm": (_set_config(norm="none"), "unexpected tensor"),
    "config-other-head": (_set_config(head="mlp"), "missing tensor"),
    "config-huge-image": (_set_config(image_size=100000), "implausible config"),
}


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_damaged_checkpoint_raises_checkpoint_error_naming_file_and_fault(good_file, case):
    change, fault = DAMAGE[case]
    mutate(good_file, change)
    with pytest.raises(CheckpointError) as info:
        checkpoint.load(good_file)
    assert str(good_file) in str(info.value)
    assert fault in str(info.value)


def test_checkpoint_error_is_a_value_error():
    assert issubclass(CheckpointError, ValueError)


def test_partial_moments_are_refused_even_without_optimizer(good_file):
    mutate(good_file, _drop_tensor("optim.m.head.w"))
    with pytest.raises(CheckpointError, match="moments present for some"):
        checkpoint.load(good_file, optimizer=False)


# ---- checksum, exclusive temp files, leftovers, unreadable files ---------------------------


def test_a_flipped_mantissa_bit_in_a_weight_is_refused_by_the_checksum(good_file):
    tensors, metadata = read_raw(good_file)
    w = tensors["layers.0.attn.wq"].copy()
    w.view(np.uint32).flat[5] ^= 1  # the lowest mantissa bit: still a finite, plausible number
    tensors["layers.0.attn.wq"] = w
    write_raw(good_file, tensors, metadata)
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        checkpoint.load(good_file)


def test_a_flipped_exponent_bit_in_a_moment_is_refused_even_without_loading_moments(good_file):
    tensors, metadata = read_raw(good_file)
    m = tensors["optim.m.head.w"].copy()
    m.view(np.uint32).flat[0] ^= 1 << 25
    tensors["optim.m.head.w"] = m
    write_raw(good_file, tensors, metadata)
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        checkpoint.load(good_file, optimizer=False)


@pytest.mark.parametrize("field,value", [("n_heads", 1), ("image_size", 2), ("n_classes", 3)])
def test_an_edited_config_field_that_no_shape_pins_down_is_refused(good_file, field, value):
    # n_heads 2 -> 1 would compute another function; image_size or n_classes would change
    # what generate draws: none of them shows in a tensor shape, so the checksum covers them
    mutate(good_file, _set_config(**{field: value}))
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        checkpoint.load(good_file)


def test_an_edited_train_state_is_refused(good_file):
    model = trained(CONFIGS["none-mlp"])
    checkpoint.save(good_file, model, train_state={"step": 2})
    mutate(good_file, _put("train_state", json.dumps({"step": 200})))
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        checkpoint.load(good_file)


def test_a_file_without_checksum_still_loads_with_a_warning(good_file):
    mutate(good_file, _drop_meta("sha256"))  # as written before checksums
    with pytest.warns(UserWarning, match="no checksum"):
        model, _ = checkpoint.load(good_file)
    assert isinstance(model, SIM)


def test_the_temp_file_never_follows_a_planted_symlink(model, tmp_path):
    target = tmp_path / "victim.txt"
    target.write_text("keep me")
    final = tmp_path / "o.safetensors"
    # the old predictable name, and a spread of pids around ours: all symlinks to the victim
    for pid in [os.getpid()] + list(range(os.getpid() - 3, os.getpid() + 4)):
        link = tmp_path / f".o.safetensors.tmp-{pid}"
        if not link.exists():
            os.symlink(target, link)
    checkpoint.save(final, model)
    assert target.read_text() == "keep me"
    checkpoint.load(final)


def test_temp_files_of_dead_writers_are_removed_and_live_ones_kept(tmp_path):
    from simcore.files import remove_stale_temps
    dead = tmp_path / ".step-000010.safetensors.tmp-999999999-abc"
    old_style = tmp_path / ".step-000010.safetensors.tmp-999999998"
    live = tmp_path / f".step-000020.safetensors.tmp-{os.getpid()}-xyz"
    keep = tmp_path / "step-000010.safetensors"
    for p in (dead, old_style, live, keep):
        p.write_bytes(b"x")
    removed = remove_stale_temps(tmp_path)
    assert sorted(removed) == sorted([str(dead), str(old_style)])
    assert live.exists() and keep.exists()


def test_an_unreadable_checkpoint_says_permission_denied(good_file, monkeypatch):
    real = os.access
    monkeypatch.setattr(checkpoint.os, "access",
                        lambda p, mode, *a, **k: False if os.fspath(p) == str(good_file) else real(p, mode))
    with pytest.raises(PermissionError, match="permission denied"):
        checkpoint.load(good_file)


def test_a_run_folder_resolves_to_its_newest_checkpoint(model, tmp_path):
    for step in (2, 10, 9):
        checkpoint.save(tmp_path / f"step-{step:06d}.safetensors", model)
    (tmp_path / "step-000099.safetensors.bak").write_bytes(b"x")
    assert checkpoint.resolve(tmp_path) == str(tmp_path / "step-000010.safetensors")
    assert checkpoint.resolve(tmp_path / "step-000002.safetensors") == str(tmp_path / "step-000002.safetensors")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no step-NNNNNN.safetensors checkpoint"):
        checkpoint.resolve(tmp_path / "empty")
