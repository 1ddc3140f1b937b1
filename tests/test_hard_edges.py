"""The hard edges an audit found: absurd sizes, untrusted checkpoint state, failing disks,
output paths, concurrent use, two runs on one folder, files that are not regular files,
messages. Each case ends in a clean message (or correct behaviour), never a traceback, a
crash, a hang or lost work."""
import errno
import fcntl
import gzip
import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import simcore
from simcore import checkpoint, evaluate, generate, resources, train
from simcore.files import FolderLock

DATA = os.environ.get("SIMCORE_DATA")
needs_data = pytest.mark.skipif(not DATA, reason="set SIMCORE_DATA to a folder with the MNIST files to run this")
pytestmark = pytest.mark.usefixtures("mnist_read_once")  # each run here reads the same MNIST
TINY = ["--d-model", "16", "--d-hidden", "32", "--n-layers", "1", "--n-heads", "2",
        "--batch-size", "4", "--no-progress", "--eval-subset", "20", "--samples-per-class", "1",
        "--final-eval", "20", "--warmup", "2", "--eval-every", "100"]
TINY_CFG = simcore.Config(d_model=16, d_hidden=32, n_layers=1, n_heads=2)
ROOT = os.path.dirname(os.path.dirname(simcore.__file__))


def run(out, *extra):
    return train.main(TINY + ["--out", str(out)] + list(extra))


def records(out):
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


# ---- threads -----------------------------------------------------------------------------


def test_a_huge_thread_count_is_refused_with_the_limit(tmp_path, capsys):
    with pytest.raises(ValueError, match="threads must be at most"):
        simcore.set_threads(100_000)
    assert simcore.get_threads() <= resources.max_threads()
    assert run(tmp_path, "--threads", "100000") == 2
    assert "threads must be at most" in capsys.readouterr().err


@pytest.mark.slow
def test_omp_num_threads_beyond_the_limit_is_capped_at_import():
    root = os.path.dirname(os.path.dirname(simcore.__file__))
    p = subprocess.run([sys.executable, "-c", "import simcore; print(simcore.get_threads())"],
                       env=dict(os.environ, OMP_NUM_THREADS="100000", PYTHONPATH=root),
                       capture_output=True, text=True, cwd=os.path.dirname(__file__))
    assert p.returncode == 0, p.stderr
    assert int(p.stdout) == resources.max_threads()
    assert "OMP_NUM_THREADS asks for 100000 threads" in p.stderr


@pytest.mark.slow
def test_a_bad_simcore_blas_is_a_clean_cli_error_not_an_import_traceback(tmp_path):
    root = os.path.dirname(os.path.dirname(simcore.__file__))
    env = dict(os.environ, SIMCORE_BLAS=str(tmp_path / "libnothing.so"), PYTHONPATH=root)
    p = subprocess.run([sys.executable, "-m", "simcore.evaluate", "--checkpoint", "x"], env=env,
                       capture_output=True, text=True, cwd=tmp_path)
    assert p.returncode == 2
    assert p.stderr.startswith("error: SIMCORE_BLAS=") and "cannot load BLAS library" in p.stderr
    assert len(p.stderr.splitlines()) == 1 and "instead" not in p.stderr  # (no warning promising to go on)


def test_the_binding_refuses_an_absurd_thread_count_too():
    from simcore import _kernels
    with pytest.raises(ValueError, match="threads"):
        _kernels.set_num_threads(100_000)


# ---- sizes that do not fit ---------------------------------------------------------------


def test_a_model_too_large_for_the_ram_is_a_memory_error_naming_the_size():
    cfg = simcore.Config(d_model=100_000, d_hidden=400_000, n_layers=4, n_heads=2)
    t0 = time.perf_counter()
    with pytest.raises(MemoryError, match=r"parameters .* needs [\d,.]+ GB; this machine has"):
        simcore.SIM(cfg)
    assert time.perf_counter() - t0 < 5


def test_a_batch_too_large_for_the_ram_is_a_memory_error_naming_it():
    model = simcore.SIM(TINY_CFG)
    tokens = np.zeros((50_000, TINY_CFG.seq_len), np.uint8)
    with pytest.raises(MemoryError, match="a batch of 50000 sequences"):
        model.forward(tokens)


@pytest.mark.parametrize("flags,message", [
    (["--d-model", "100000", "--d-hidden", "400000"], "needs"),
    (["--out", ""], "--out: empty path"),
    (["--seed", "-1"], "--seed must be an integer >= 0, got -1"),
])
def test_absurd_train_options_are_clean_errors(tmp_path, capsys, flags, message):
    # (flags after TINY's: argparse keeps the last of a repeated option)
    assert train.main(TINY + ["--out", str(tmp_path / "o")] + flags) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


@needs_data
def test_a_batch_size_that_does_not_fit_is_a_clean_error(tmp_path, capsys):
    assert run(tmp_path, "--batch-size", "50000", "--steps", "1") == 2
    assert "a batch of 50000 sequences" in capsys.readouterr().err


# ---- the training state a checkpoint carries ---------------------------------------------


def _good_state():
    return {"step": 2, "epoch": 0, "batch_in_epoch": 2, "elapsed": 1.0, "tokens": 2 * 4 * 784, "seed": 0,
            "batch_size": 4, "dataset": "mnist", "lr": 3e-3, "min_lr": 1e-4, "warmup": 2,
            "weight_decay": 0.01, "clip": 1.0, "steps": 4, "epochs": None, "minutes": None}


@pytest.mark.parametrize("change,message", [
    ({"batch_size": 0}, "batch_size must be an integer >= 1"),
    ({"seed": -1}, "seed must be an integer >= 0"),
    ({"lr": "abc"}, "lr must be a finite number > 0, got 'abc'"),
    ({"lr": -5}, "lr must be a finite number > 0, got -5"),
    ({"step": "x"}, "step must be an integer >= 0"),
    ({"dataset": "cifar"}, "dataset must be mnist or fashion-mnist"),
    ({"steps": None, "epochs": None, "minutes": None}, "sets no length"),
    (None, "lacks"),
])
def test_resume_checks_the_training_state_before_trusting_it(tmp_path, capsys, change, message):
    state = _good_state()
    if change is None:
        del state["batch_size"], state["lr"]
    else:
        state.update(change)
    path = tmp_path / "step-000002.safetensors"
    simcore.save(path, simcore.SIM(TINY_CFG), optimizer=True, train_state=state)
    assert run(tmp_path, "--resume", str(path)) == 2
    err = capsys.readouterr().err
    assert message in err and str(path) in err and "Traceback" not in err


def _checkpoint(tmp_path, name="step-000002.safetensors", adam_step=None, **changes):
    """A checkpoint of a TINY run (batch 4, seed 0, mnist, AdamW) at step 2 of 4, its
    optimizer at the same step (or adam_step), written (and so checksummed) by simcore.save."""
    state = {**_good_state(), **changes}
    model = simcore.SIM(TINY_CFG)
    model.opt_step = state["step"] if adam_step is None else adam_step
    path = tmp_path / name
    simcore.save(path, model, optimizer=True, train_state=state)
    return path


@pytest.mark.parametrize("change,message", [
    ({"step": 10**12, "adam_step": 2}, "training state step 1000000000000 is past the run's own limit, steps 4"),
    ({"step": 10**12, "batch_in_epoch": 10**12, "steps": None, "minutes": 15.0, "adam_step": 2},
     "training state tokens 6272 does not match step 1000000000000"),
    ({"tokens": 10**9}, "training state tokens 1000000000 does not match step 2: 2 steps of 4 images of "
                        "784 tokens are 6272"),
    ({"adam_step": 7}, "training state step 2 does not match the optimizer's count of its steps, adam_step 7"),
    ({"batch_in_epoch": 3}, "training state batch_in_epoch 3 exceeds step 2"),
    ({"batch_in_epoch": 1}, "training state batch_in_epoch 1 is not step 2, yet epoch is 0"),
    ({"epoch": 5}, "training state epoch 5 does not fit step 2 and batch_in_epoch 2"),
    ({"epoch": 1, "batch_in_epoch": 0, "steps": None, "epochs": 1.0}, "training state epoch 1 (counted from 0) "
                                                                      "is past the run's own limit, epochs 1"),
])
def test_a_checkpoint_whose_place_in_its_run_is_absurd_is_refused_whatever_its_checksum(
        tmp_path, capsys, change, message):
    """(Before, a step of 10^12 with its checksum recomputed "finished 1000000000000 steps".)
    The refusal comes before any data is read."""
    path = _checkpoint(tmp_path, **change)
    assert run(tmp_path, "--resume", str(path), "--data", str(tmp_path / "nowhere")) == 2
    err = capsys.readouterr().err
    assert message in err and str(path) in err and len(err.splitlines()) == 1, err


def _tiny_data(folder, n_train=40, n_test=20):
    """A data folder of blank 28x28 digits: 40 training images make 10 batches of 4."""
    folder.mkdir()
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        _write_idx_file(folder / f"{prefix}-images-idx3-ubyte.gz", struct.pack(">IIII", 0x803, n, 28, 28),
                        np.zeros((n, 28, 28), np.uint8))
        _write_idx_file(folder / f"{prefix}-labels-idx1-ubyte.gz", struct.pack(">II", 0x801, n),
                        np.arange(n, dtype=np.uint8) % 10)
    return str(folder)


@pytest.mark.parametrize("place,message", [
    ({"step": 12, "batch_in_epoch": 12, "steps": 20},
     "training state batch_in_epoch 12 is past the end of its epoch: 40 training images make 10 batches of 4"),
    ({"step": 25, "epoch": 1, "batch_in_epoch": 5, "steps": 30},
     "training state step 25 is not where epoch 1 and batch_in_epoch 5 put a run on this data (40 training "
     "images make 10 batches of 4): 15"),
])
def test_a_checkpoint_whose_place_does_not_fit_the_data_is_refused(tmp_path, capsys, place, message):
    path = _checkpoint(tmp_path, tokens=place["step"] * 4 * 784, **place)
    assert run(tmp_path, "--resume", str(path), "--data", _tiny_data(tmp_path / "d")) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.splitlines()) == 1, err


def test_resume_refuses_a_length_the_run_has_already_passed(tmp_path, capsys):
    path = _checkpoint(tmp_path)
    assert run(tmp_path, "--resume", str(path), "--data", str(tmp_path / "nowhere"), "--steps", "1") == 2
    assert "--steps 1: the run being resumed is already at step 2" in capsys.readouterr().err


def test_resume_auto_past_a_damaged_newest_checkpoint_names_the_older_ones_that_load(tmp_path, capsys):
    older = _checkpoint(tmp_path)
    newest = _checkpoint(tmp_path, "step-000003.safetensors", step=3, batch_in_epoch=3, tokens=3 * 4 * 784)
    raw = bytearray(newest.read_bytes())
    raw[-1] ^= 0x01  # an exponent bit of the file's last number: still finite, only the checksum sees it
    newest.write_bytes(bytes(raw))
    assert run(tmp_path, "--resume", "auto", "--data", str(tmp_path / "nowhere")) == 2
    err = capsys.readouterr().err
    assert f"--resume auto: the newest checkpoint fails: {newest}: checksum mismatch" in err
    assert f"older checkpoints that load: {older}; continue from the newest of them with --resume {older}" in err
    assert len(err.splitlines()) == 1


@pytest.mark.parametrize("flags,message", [
    (["--batch-size", "8"], "--batch-size 8: the run being resumed has batch_size 4, and it cannot change mid-run: "
                            "the run's place in its epoch is counted in batches of that size"),
    (["--seed", "1"], "--seed 1: the run being resumed has seed 0, and it cannot change mid-run"),
    (["--dataset", "fashion-mnist"], "--dataset fashion-mnist: the run being resumed has dataset mnist"),
    (["--optimizer", "muon"], "--optimizer muon: the run being resumed has optimizer adamw"),
    (["--d-model", "64"], "--d-model 64: the run being resumed has d_model 16, and it cannot change mid-run: "
                          "the checkpoint holds weights of the run's model"),
    (["--pixel-above"], "--pixel-above: the run being resumed has pixel_above False"),
    (["--preset", "sprint"], "--preset sprint (its pixel_above True): the run being resumed has pixel_above False"),
])
def test_resume_refuses_a_flag_the_run_cannot_change_and_says_why(tmp_path, capsys, flags, message):
    """(Before, these were dropped without a word.) The refusal comes before any data is read."""
    path = _checkpoint(tmp_path)
    assert run(tmp_path, "--resume", str(path), "--data", str(tmp_path / "nowhere"), *flags) == 2
    err = capsys.readouterr().err
    assert message in err and "(start a new run to change it)" in err and "Traceback" not in err


def test_resume_takes_the_flags_a_run_can_change_and_names_each_change():
    state = train.TrainState.from_dict(_good_state(), "a checkpoint")
    parse = train.build_parser().parse_args
    # TINY's --batch-size 4, --warmup 2, --d-model 16...: the run's own, so no change
    resumed, changed = state.continued(parse(TINY + ["--steps", "8", "--lr", "1e-3", "--clip", "0.5"]))
    assert changed == {"steps": (4, 8), "lr": (3e-3, 1e-3), "clip": (1.0, 0.5)}
    assert (resumed.steps, resumed.lr, resumed.clip, resumed.batch_size) == (8, 1e-3, 0.5, 4)
    # a new length replaces the run's whole length
    resumed, changed = state.continued(parse(["--minutes", "5"]))
    assert changed == {"steps": (4, None), "minutes": (None, 5.0)}
    assert state.continued(parse(TINY + ["--steps", "4", "--dataset", "mnist", "--seed", "0"]))[1] == {}


def test_resume_with_a_preset_says_that_the_run_keeps_its_own_settings(tmp_path, capsys):
    """--preset given with --resume must name the run's model (as here); its recipe's
    defaults do not replace the run's own values, and the run says which it keeps."""
    path = _checkpoint(tmp_path, lr=1e-3)
    assert run(tmp_path, "--resume", str(path), "--data", str(tmp_path / "nowhere"), "--preset", "small") == 2
    out, err = capsys.readouterr()
    assert "the run keeps its own lr 0.001, not --preset small's recipe's" in out and "nowhere" in err


@pytest.mark.slow
@needs_data
def test_resume_takes_a_new_lr_and_says_so(tmp_path, capsys):
    assert run(tmp_path, "--steps", "4", "--halt-after", "2") == 0
    assert run(tmp_path, "--steps", "4", "--resume", "auto", "--lr", "0.001") == 0
    assert "at step 2, lr now 0.001 (was 0.003)\n" in capsys.readouterr().out
    _, state = checkpoint.load(tmp_path / "step-000004.safetensors")
    assert state["lr"] == 0.001


@pytest.mark.slow
@needs_data
def test_an_lr_that_blows_up_the_weights_leaves_the_last_good_checkpoint(tmp_path, capsys):
    assert run(tmp_path, "--steps", "5", "--lr", "1e300", "--min-lr", "0", "--warmup", "0") == 1
    out = capsys.readouterr().out
    assert "diverged at step 0" in out and "--lr" in out
    model = simcore.load(tmp_path / "step-000000.safetensors")  # the weights before it
    assert all(np.isfinite(w).all() for w in model.weights.values())


@pytest.mark.slow
@needs_data
def test_a_full_disk_at_a_checkpoint_is_reported_and_training_goes_on(tmp_path, capsys, monkeypatch):
    real = checkpoint.write_atomic
    calls = []

    def full_once(path, data):
        calls.append(path)
        if len(calls) == 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, data)

    monkeypatch.setattr(checkpoint, "write_atomic", full_once)
    assert run(tmp_path, "--steps", "4", "--checkpoint-every", "2") == 0
    out = capsys.readouterr().out
    assert "could not write checkpoint" in out and "No space left on device" in out
    assert (tmp_path / "step-000004.safetensors").exists()


@pytest.mark.slow
@needs_data
def test_a_full_disk_at_the_last_checkpoint_fails_the_run_cleanly(tmp_path, capsys, monkeypatch):
    def full(path, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint, "write_atomic", full)
    assert run(tmp_path, "--steps", "2") == 1
    assert "could not write checkpoint" in capsys.readouterr().out


@pytest.mark.slow
@needs_data
def test_a_resumed_run_leaves_one_metrics_line_per_step(tmp_path):
    assert run(tmp_path, "--steps", "6", "--checkpoint-every", "2", "--halt-after", "5") == 0
    # the interrupted run logged steps 1..5 but its last checkpoint is at step 5 by the
    # halt; make it one at step 4 by removing the newest, as after a kill -9 at step 5
    os.remove(tmp_path / "step-000005.safetensors")
    assert run(tmp_path, "--steps", "6", "--resume", "auto") == 0
    steps = [r["step"] for r in records(tmp_path) if "loss" in r]
    assert steps == [1, 2, 3, 4, 5, 6]


@pytest.mark.slow
@needs_data
def test_training_removes_temp_files_left_by_a_killed_writer(tmp_path):
    stale = tmp_path / ".step-000002.safetensors.tmp-999999999-x"
    stale.write_bytes(b"half a checkpoint")
    assert run(tmp_path, "--steps", "1") == 0
    assert not stale.exists()


# ---- evaluate: a test set of another size -----------------------------------------------


def _write_idx_file(path, head, payload):
    with gzip.open(path, "wb") as f:
        f.write(head + payload.tobytes())


def _write_idx(folder, images, labels):
    folder.mkdir()
    n, s = images.shape[:2]
    for stem, head, payload in (("t10k-images-idx3-ubyte", struct.pack(">IIII", 0x803, n, s, s), images),
                                ("t10k-labels-idx1-ubyte", struct.pack(">II", 0x801, n), labels)):
        _write_idx_file(folder / f"{stem}.gz", head, payload)


def test_evaluate_refuses_test_images_of_another_size(tmp_path, capsys):
    ckpt = tmp_path / "m.safetensors"
    simcore.save(ckpt, simcore.SIM(TINY_CFG))
    _write_idx(tmp_path / "d", np.zeros((5, 14, 14), np.uint8), np.arange(5, dtype=np.uint8))
    assert evaluate.main(["--checkpoint", str(ckpt), "--data", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err
    assert "test images are 14x14 but the model was trained on 28x28" in err


# ---- generate: every output checked before the sampling ----------------------------------


@pytest.fixture
def ckpt(tmp_path):
    path = tmp_path / "m.safetensors"
    simcore.save(path, simcore.SIM(simcore.Config(d_model=16, d_hidden=32, n_layers=1, n_heads=2, image_size=8)))
    return str(path)


@pytest.mark.parametrize("flags,message", [
    (["--out", "nodir/x.png"], "no such folder"),
    (["--out", "."], "is a folder"),
    (["--out", ""], "--out: empty path"),
    (["--npy", "nodir/x.npy"], "--npy nodir/x.npy: no such folder"),
    (["--out", "same.npy", "--npy", "same.npy"], "--npy same.npy: the same file as --out same.npy"),
    (["--out", "m.safetensors"], "--out m.safetensors: the file --checkpoint reads"),
    (["--out", "x" * 250 + ".png"], "cannot write there (File name too long)"),
    (["--threads", "0"], "threads must be a positive integer"),
    (["--per-class", "1000000000"], "at most 10,000 per call"),
])
def test_generate_checks_its_options_before_sampling(ckpt, tmp_path, capsys, monkeypatch, flags, message):
    monkeypatch.chdir(tmp_path)
    sampled = []
    monkeypatch.setattr(simcore.SIM, "generate", lambda *a, **k: sampled.append(1))
    assert generate.main(["--checkpoint", ckpt, "--classes", "0-1", "--per-class", "1"] + flags) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not sampled


def test_generate_into_a_read_only_folder_fails_before_sampling(ckpt, tmp_path, capsys, monkeypatch):
    real = os.access
    ro = str(tmp_path / "ro")
    os.mkdir(ro)
    monkeypatch.setattr(os, "access", lambda p, mode, *a, **k: False if os.fspath(p) == ro else real(p, mode))
    assert generate.main(["--checkpoint", ckpt, "--per-class", "1", "--out", f"{ro}/x.png"]) == 2
    assert "is not writable" in capsys.readouterr().err


# ---- one SIM, two threads ----------------------------------------------------------------


def test_a_second_concurrent_call_on_one_model_is_refused_not_silently_wrong():
    model = simcore.SIM(TINY_CFG)
    tokens = np.zeros((8, TINY_CFG.seq_len), np.uint8)
    errors, results = [], []
    start = threading.Barrier(2)

    def worker():
        start.wait()
        for _ in range(5):
            try:
                results.append(model.forward(tokens))
            except RuntimeError as e:
                errors.append(str(e))

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    want = simcore.SIM(TINY_CFG).forward(tokens)
    assert all(np.array_equal(r, want) for r in results)  # every answer given is right
    assert all("already running a call in another thread" in e for e in errors)
    assert len(results) + len(errors) == 10


def test_separate_models_may_run_in_separate_threads():
    models = [simcore.SIM(TINY_CFG) for _ in range(2)]
    tokens = np.zeros((4, TINY_CFG.seq_len), np.uint8)
    out = [None, None]

    def worker(i):
        out[i] = models[i].loss(tokens)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert out[0] == out[1]


# ---- data --------------------------------------------------------------------------------


def test_an_unreadable_data_folder_says_so(tmp_path, monkeypatch):
    from simcore import data
    folder = tmp_path / "locked"
    folder.mkdir()
    real = os.listdir

    def denied(p="."):
        if os.fspath(p) == str(folder):
            raise PermissionError(13, "Permission denied", str(p))
        return real(p)

    monkeypatch.setattr(data.os, "listdir", denied)
    with pytest.raises(data.DataError, match="cannot read the folder .permission denied."):
        data.load_split("mnist", "test", data_dir=folder)


def test_a_gzip_bomb_is_refused_without_reading_it_to_the_end(tmp_path):
    from simcore import data
    path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    with gzip.open(path, "wb", compresslevel=9) as f:
        f.write(struct.pack(">II", 0x801, 10) + bytes(10))
        zeros = bytes(1 << 24)
        for _ in range(16):  # 256 MiB of trailing zeros, a few hundred kB on disk
            f.write(zeros)
    t0 = time.perf_counter()
    with pytest.raises(data.DataError, match="oversized"):
        data.load_idx_labels(path)
    assert time.perf_counter() - t0 < 1.0


def test_every_download_is_checked_with_sha256():
    from simcore import data
    for spec in data.DATASETS.values():
        assert {algo for algo, _ in spec.checksums.values()} == {"sha256"}, spec.name
        assert all(len(h) == 64 for _, h in spec.checksums.values())


# ---- one live run per folder -------------------------------------------------------------


def _hold_lock(folder, pid=None):
    """The lock of folder as a live run holds it (flock on run.lock, the owner in it)."""
    folder.mkdir(exist_ok=True)
    f = open(folder / "run.lock", "a+")
    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    f.write(json.dumps({"pid": pid or os.getpid(), "host": socket.gethostname(),
                        "started": "2026-01-01 00:00:00 UTC"}))
    f.flush()
    return f


def test_a_second_run_on_a_folder_in_use_is_refused_naming_the_owner(tmp_path, capsys):
    """(Before, two runs on one folder both ran to the end, overwriting each other's
    checkpoints.) The refusal comes before any work: the data are not even looked for."""
    lock = _hold_lock(tmp_path / "run")
    try:
        assert run(tmp_path / "run", "--data", str(tmp_path / "nowhere")) == 2
    finally:
        lock.close()
    err = capsys.readouterr().err
    assert f"--out {tmp_path / 'run'}: in use by another run (pid {os.getpid()} on host {socket.gethostname()}, " \
           "started 2026-01-01 00:00:00 UTC; its lock: " in err
    assert "nowhere" not in err and len(err.splitlines()) == 1


def test_a_lock_left_by_a_dead_run_is_taken_over_and_said(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "run.lock").write_text(json.dumps({"pid": 999999999, "host": socket.gethostname(),
                                              "started": "2026-01-01 00:00:00 UTC"}))
    assert run(out, "--data", str(tmp_path / "nowhere")) == 2  # past the lock, refused at the data
    stdout, err = capsys.readouterr()
    assert "taking over the lock of a run that ended without letting it go (pid 999999999 on host" in stdout
    assert "nowhere" in err
    assert not (out / "run.lock").exists()  # let go again, by the refused run


def test_a_refused_run_leaves_no_folder_it_created(tmp_path, capsys):
    assert run(tmp_path / "new" / "run", "--data", str(tmp_path / "nowhere")) == 2
    assert "nowhere" in capsys.readouterr().err
    assert os.listdir(tmp_path) == []
    assert run(tmp_path, "--data", str(tmp_path / "nowhere")) == 2
    assert tmp_path.is_dir() and os.listdir(tmp_path) == []  # one it did not create stays


class _OtherRank:
    """Rank 1 of 2, as rank 0's success or failure in taking the folder reaches it."""
    rank, size, is_root = 1, 2, False

    def __init__(self, root_failed):
        self.root_failed = root_failed

    def allreduce_sum_(self, a):
        a += self.root_failed
        return a

    def barrier(self):
        pass


def test_under_mpi_only_rank_0_touches_the_folder_and_the_others_fail_with_it(tmp_path):
    args = train.build_parser().parse_args(TINY + ["--out", str(tmp_path / "run"), "--data", str(tmp_path / "no")])
    with pytest.raises(simcore.data.DataError, match="no"):  # on to the data, past a folder it did not take
        train.Trainer(args, world=_OtherRank(0))
    assert not (tmp_path / "run").exists()
    with pytest.raises(ValueError, match="rank 0 could not take --out"):
        train.Trainer(args, world=_OtherRank(1))


def _train_in_background(out):
    """python -m simcore.train on out, its steps under way, and the process."""
    cmd = [sys.executable, "-m", "simcore.train"] + TINY + ["--out", str(out), "--steps", "100000",
                                                            "--eval-every", "100000"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=out.parent,
                            env=dict(os.environ, PYTHONPATH=ROOT))
    metrics = out / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and not (metrics.exists() and metrics.stat().st_size):
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()[0]
    return proc


@pytest.mark.slow
@needs_data
def test_two_runs_on_one_folder_the_second_is_refused_and_sigterm_lets_it_go(tmp_path, capsys):
    out = tmp_path / "run"
    first = _train_in_background(out)
    try:
        assert run(out, "--steps", "1") == 2
        assert f"in use by another run (pid {first.pid} on host" in capsys.readouterr().err
    finally:
        first.send_signal(signal.SIGTERM)
        stdout, _ = first.communicate(timeout=120)
    assert first.returncode == 143, stdout
    assert not (out / "run.lock").exists()
    FolderLock(out).acquire().release()  # the folder is free again


@pytest.mark.slow
@needs_data
def test_a_run_killed_outright_leaves_a_lock_the_next_run_takes_over(tmp_path, capsys):
    out = tmp_path / "run"
    first = _train_in_background(out)
    first.kill()
    first.communicate(timeout=120)
    assert (out / "run.lock").exists()
    assert run(out, "--steps", "1") == 0
    assert f"taking over the lock of a run that ended without letting it go (pid {first.pid} on host" \
        in capsys.readouterr().out


# ---- only regular files are read ---------------------------------------------------------


def test_a_device_or_a_folder_named_as_a_checkpoint_is_refused_saying_what_it_is(tmp_path, capsys):
    folder = tmp_path / "m.safetensors"
    folder.mkdir()
    for path, what in (("/dev/null", "a character device"), (str(folder), "a folder")):
        with pytest.raises(checkpoint.CheckpointError, match=re.escape(f"{path}: not a regular file ({what})")):
            simcore.load(path)
    assert evaluate.main(["--checkpoint", "/dev/null"]) == 2
    assert capsys.readouterr().err == "error: /dev/null: not a regular file (a character device), so not a " \
                                      "checkpoint\n"


def _python(tmp_path, *argv, env=None):
    """A fresh interpreter on this source tree; a timeout, so a regression that waits fails."""
    return subprocess.run([sys.executable, *argv], capture_output=True, text=True, cwd=tmp_path, timeout=60,
                          env=dict(os.environ, PYTHONPATH=ROOT, **(env or {})))


@pytest.mark.slow
@pytest.mark.parametrize("argv", [["-m", "simcore.evaluate", "--checkpoint", "pipe.safetensors"],
                                  ["-c", "import simcore; simcore.load('pipe.safetensors')"]],
                         ids=["evaluate", "load"])
def test_a_named_pipe_as_a_checkpoint_is_refused_at_once_not_waited_on(tmp_path, argv):
    """(Before, both waited forever for a writer.)"""
    os.mkfifo(tmp_path / "pipe.safetensors")
    p = _python(tmp_path, *argv)
    assert p.returncode != 0 and "pipe.safetensors: not a regular file (a named pipe)" in p.stderr, p.stderr


@pytest.mark.slow
def test_a_data_folder_of_named_pipes_is_refused_as_such_not_called_missing(tmp_path):
    (tmp_path / "d").mkdir()
    for stem in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        os.mkfifo(tmp_path / "d" / stem)
    p = _python(tmp_path, "-m", "simcore.evaluate", "--pretrained", "--data", "d")
    assert p.returncode == 2, p.stderr
    assert "t10k-images-idx3-ubyte: not a regular file (a named pipe)" in p.stderr and "missing" not in p.stderr
    assert len(p.stderr.splitlines()) == 1


# ---- messages that match what happens ----------------------------------------------------


@pytest.mark.parametrize("main,argv", [(train.main, ["--steps", "x"]), (generate.main, ["--pretrained", "--nope"]),
                                       (evaluate.main, ["--limit"])], ids=["train", "generate", "evaluate"])
def test_a_flag_error_is_one_line_with_a_pointer_to_help(main, argv, capsys):
    """(Before: 9 to 25 lines of usage above the one that says what is wrong.)"""
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(("error: argument --steps: invalid int value: 'x'", "error: unrecognized arguments: --nope",
                           "error: argument --limit: expected one argument"))
    assert err.endswith("(`python -m simcore.%s --help` lists the flags)\n" % main.__module__.split(".")[1])
    assert len(err.splitlines()) == 1


@pytest.mark.parametrize("missing", [AttributeError, ValueError, OSError])
def test_where_the_system_does_not_say_its_memory_the_size_checks_stand_aside(monkeypatch, missing):
    # os.sysconf is absent on Windows, and a name may be unknown elsewhere
    def sysconf(name):
        raise missing(name)
    monkeypatch.setattr(resources.os, "sysconf", sysconf)
    assert resources.physical_memory() is None
    resources.check_fits(1e18, "a huge buffer")  # no check, no error
    assert resources.max_threads() >= 64
