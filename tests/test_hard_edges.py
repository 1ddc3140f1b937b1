"""The hard edges an audit found: absurd sizes, untrusted checkpoint state, failing disks,
output paths, concurrent use. Each case ends in a clean message (or correct behaviour),
never a traceback, a crash or lost work."""
import errno
import gzip
import json
import os
import struct
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import simcore
from simcore import checkpoint, evaluate, generate, resources, train

DATA = os.environ.get("SIMCORE_DATA")
needs_data = pytest.mark.skipif(not DATA, reason="set SIMCORE_DATA to a folder with the MNIST files to run this")
pytestmark = pytest.mark.usefixtures("mnist_read_once")  # each run here reads the same MNIST
TINY = ["--d-model", "16", "--d-hidden", "32", "--n-layers", "1", "--n-heads", "2",
        "--batch-size", "4", "--no-progress", "--eval-subset", "20", "--samples-per-class", "1",
        "--final-eval", "20", "--warmup", "2", "--eval-every", "100"]
TINY_CFG = simcore.Config(d_model=16, d_hidden=32, n_layers=1, n_heads=2)


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
    assert "error: SIMCORE_BLAS=" in p.stderr and "cannot load BLAS library" in p.stderr
    assert "Traceback" not in p.stderr


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
    return {"step": 2, "epoch": 0, "batch_in_epoch": 2, "elapsed": 1.0, "tokens": 100, "seed": 0,
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


def _checkpoint(tmp_path, **changes):
    """A checkpoint of a TINY run (batch 4, seed 0, mnist, AdamW) at step 2 of 4."""
    path = tmp_path / "step-000002.safetensors"
    simcore.save(path, simcore.SIM(TINY_CFG), optimizer=True, train_state={**_good_state(), **changes})
    return path


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


def _write_idx(folder, images, labels):
    folder.mkdir()
    n, s = images.shape[:2]
    for stem, head, payload in (("t10k-images-idx3-ubyte", struct.pack(">IIII", 0x803, n, s, s), images),
                                ("t10k-labels-idx1-ubyte", struct.pack(">II", 0x801, n), labels)):
        with gzip.open(folder / f"{stem}.gz", "wb") as f:
            f.write(head + payload.tobytes())


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


@pytest.mark.parametrize("missing", [AttributeError, ValueError, OSError])
def test_where_the_system_does_not_say_its_memory_the_size_checks_stand_aside(monkeypatch, missing):
    # os.sysconf is absent on Windows, and a name may be unknown elsewhere
    def sysconf(name):
        raise missing(name)
    monkeypatch.setattr(resources.os, "sysconf", sysconf)
    assert resources.physical_memory() is None
    resources.check_fits(1e18, "a huge buffer")  # no check, no error
    assert resources.max_threads() >= 64
