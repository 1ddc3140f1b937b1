"""The vector level: what the CPU runs, capping it, and errors for levels it cannot run."""
import os
import platform
import subprocess
import sys

import numpy as np
import pytest

import simcore
from simcore import _kernels as K

LEVELS = list(K.ISA_LEVELS)  # this build's, lowest first


def test_the_build_has_the_levels_of_its_architecture():
    machine = platform.machine().lower()
    if machine in ("x86_64", "amd64"):
        assert LEVELS == ["baseline", "avx2", "avx512"]
    elif machine in ("aarch64", "arm64"):
        assert LEVELS == ["neon"]
        assert simcore.cpu_info()["isa"] == "neon"  # every AArch64 CPU runs it
    else:
        assert LEVELS == ["baseline"]


def test_cpu_info_names_the_level_in_use_and_the_supported_ones():
    info = simcore.cpu_info()
    assert info["isa"] in info["supported"]
    assert info["supported"] == LEVELS[: len(info["supported"])]  # lowest first, no gaps
    assert info["supported"][0] == LEVELS[0]
    assert isinstance(info["cpu"], str) and info["cpu"]
    assert info["machine"] == platform.machine()


def test_blas_info_reports_the_vector_level():
    assert simcore.blas_info()["isa"] == simcore.get_isa()


@pytest.mark.parametrize("level", simcore.cpu_info()["supported"])
def test_set_isa_selects_each_supported_level(level):
    before = simcore.get_isa()
    try:
        simcore.set_isa(level)
        assert simcore.get_isa() == level == simcore.cpu_info()["isa"]
    finally:
        simcore.set_isa(before)


def test_set_isa_rejects_unknown_names():
    with pytest.raises(ValueError, match="unknown vector level 'sse9'"):
        simcore.set_isa("sse9")
    with pytest.raises(ValueError, match="unknown vector level"):
        simcore.set_isa(2)


def test_a_level_of_another_architecture_is_unknown_here():
    other = "neon" if "neon" not in LEVELS else "avx2"
    with pytest.raises(ValueError, match=f"unknown vector level '{other}'"):
        simcore.set_isa(other)
    with pytest.raises(ValueError, match="unknown vector level"):
        K.isa_set(other)


@pytest.mark.skipif(simcore.cpu_info()["supported"][-1] == LEVELS[-1],
                    reason="this CPU runs every level")
def test_set_isa_refuses_a_level_above_the_cpu():
    too_high = LEVELS[len(simcore.cpu_info()["supported"])]
    with pytest.raises(ValueError, match="this CPU cannot run"):
        simcore.set_isa(too_high)


def test_the_c_level_switch_refuses_a_level_above_the_cpu():
    # the C side checks too, whatever Python asks: asking for more is an error code
    best = K.isa_best()
    if best != LEVELS[-1]:
        with pytest.raises(ValueError, match="does not run"):
            K.isa_set(LEVELS[LEVELS.index(best) + 1])
    assert K.isa_get() == simcore.get_isa()


def _import_with(env_isa: str) -> subprocess.CompletedProcess:
    # the same simcore as this process (an in-place build or the installed one)
    root = os.path.dirname(os.path.dirname(simcore.__file__))
    env = dict(os.environ, SIMCORE_ISA=env_isa, PYTHONPATH=root)
    return subprocess.run([sys.executable, "-c", "import simcore; print(simcore.get_isa())"],
                          env=env, capture_output=True, text=True, cwd=os.path.dirname(__file__))


@pytest.mark.slow
def test_simcore_isa_environment_variable_caps_the_level_at_import():
    r = _import_with("BASELINE")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "baseline"


@pytest.mark.slow
def test_simcore_isa_environment_variable_with_a_bad_name_warns_at_import_and_fails_the_clis():
    """The library goes on, at the level its warning names; a command stops, in one line that
    promises no level (before, it warned "...; using avx512" and then exited 2)."""
    r = _import_with("avx1024")
    assert r.returncode == 0, r.stderr           # the library still imports, at the best level
    assert "SIMCORE_ISA=avx1024: unknown vector level" in r.stderr
    assert f"simcore uses vector level {r.stdout.strip()} instead" in r.stderr
    env = dict(os.environ, SIMCORE_ISA="avx1024",
               PYTHONPATH=os.path.dirname(os.path.dirname(simcore.__file__)))
    commands = {"train": ["--steps", "1"], "generate": ["--checkpoint", "x"],
                "evaluate": ["--checkpoint", "x"]}
    for verb, args in commands.items():
        p = subprocess.run([sys.executable, "-m", f"simcore.{verb}", *args], env=env,
                           capture_output=True, text=True, cwd=os.path.dirname(__file__))
        assert p.returncode == 2, (verb, p.stderr)
        assert p.stderr.startswith("error: SIMCORE_ISA=avx1024: unknown vector level"), (verb, p.stderr)
        assert len(p.stderr.splitlines()) == 1 and "using" not in p.stderr, (verb, p.stderr)


def test_scratch_sizes_do_not_depend_on_the_level():
    # buffers allocated at one level stay valid after set_isa
    before = simcore.get_isa()
    sizes = []
    try:
        for level in simcore.cpu_info()["supported"]:
            simcore.set_isa(level)
            sizes.append((K.attention_scratch_size(784, 128, 4, 2),
                          K.attention_decode_scratch_size(784, 2),
                          K.block_decode_scratch_size(10, 128, 512, 784, 2)))
    finally:
        simcore.set_isa(before)
    assert len(set(sizes)) == 1


def test_every_level_gives_the_same_training_step_up_to_rounding():
    cfg = simcore.Config(d_model=32, d_hidden=48, n_layers=2, n_heads=2, image_size=12)
    tokens = np.random.default_rng(0).integers(0, 256, (3, cfg.seq_len), dtype=np.uint8)
    tokens[:, 0] = [1, 5, 9]
    before = simcore.get_isa()
    losses, weights = [], []
    try:
        for level in simcore.cpu_info()["supported"]:
            simcore.set_isa(level)
            model = simcore.SIM(cfg, seed=1)
            losses.append(model.train_step(tokens, lr=1e-2))
            weights.append(model.params.copy())
    finally:
        simcore.set_isa(before)
    for loss, w in zip(losses[1:], weights[1:]):
        assert abs(loss - losses[0]) < 1e-5 * abs(losses[0])
        assert np.abs(w - weights[0]).max() < 1e-4
