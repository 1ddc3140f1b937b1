"""Data-parallel training over MPI: 2 ranks on localhost (needs simcore[mpi])."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import simcore
from simcore import train

DATA = os.environ.get("SIMCORE_DATA")
MPIRUN = shutil.which("mpirun") or shutil.which("mpiexec")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not DATA, reason="set SIMCORE_DATA to a folder with the MNIST files to run this"),
    pytest.mark.skipif(MPIRUN is None, reason="no mpirun: pip install 'simcore[mpi]'"),
]
HERE = os.path.dirname(os.path.abspath(__file__))
FLAGS = ["--d-model", "16", "--d-hidden", "32", "--n-layers", "1", "--n-heads", "2",
         "--batch-size", "16", "--no-progress", "--eval-subset", "20", "--samples-per-class", "1",
         "--final-eval", "40", "--warmup", "2", "--eval-every", "2", "--threads", "1", "--lr", "1e-3"]
STEPS = 4


def mpirun(n, *args, timeout=300):
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               OMPI_MCA_rmaps_base_oversubscribe="1", PRTE_MCA_rmaps_default_mapping_policy=":oversubscribe")
    cmd = [MPIRUN, "-n", str(n), sys.executable, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=HERE)


def losses(out):
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return [r["loss"] for r in map(json.loads, f) if "loss" in r]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    one, two = tmp_path_factory.mktemp("one"), tmp_path_factory.mktemp("two")
    assert train.main(FLAGS + ["--steps", str(STEPS), "--out", str(one)]) == 0
    res = mpirun(2, "mpi_worker.py", str(two), "--", *FLAGS, "--steps", str(STEPS))
    assert res.returncode == 0, res.stdout + res.stderr
    return one, two


def test_two_ranks_with_half_batches_match_one_rank_with_the_whole_batch(runs):
    one, two = runs
    a = simcore.load(str(one / f"step-{STEPS:06d}.safetensors"))
    b = simcore.load(str(two / f"step-{STEPS:06d}.safetensors"))
    np.testing.assert_allclose(losses(two), losses(one), rtol=1e-5)
    # AdamW divides by sqrt(v): float32 reduction-order noise in tiny gradients
    # moves weights by a small fraction of lr per step at most.
    assert np.abs(a.params - b.params).max() < 0.05 * 1e-3 * STEPS


def test_weights_on_both_ranks_are_bitwise_identical(runs):
    _, two = runs
    np.testing.assert_array_equal(np.load(two / "rank-0.npy"), np.load(two / "rank-1.npy"))


def test_evaluation_is_split_across_ranks_and_reduced(runs):
    one, two = runs
    a = json.loads((one / "final.json").read_text())
    b = json.loads((two / "final.json").read_text())
    assert a["final_eval_images"] == b["final_eval_images"] == 40
    assert b["final_test_bits"] == pytest.approx(a["final_test_bits"], rel=1e-4)


def test_a_failing_rank_stops_the_job_with_its_name_and_leaves_a_good_checkpoint(tmp_path):
    res = mpirun(2, "mpi_worker.py", str(tmp_path), "--fail-at", "3", "--", *FLAGS,
                 "--steps", "50", "--checkpoint-every", "1", "--eval-every", "100")
    assert res.returncode != 0
    assert "rank 1 of 2: RuntimeError: injected failure" in res.stderr
    last = train.checkpoints(str(tmp_path))[-1]
    assert last.endswith("step-000003.safetensors")
    simcore.load(last)  # intact


def test_resume_works_with_a_different_number_of_ranks(runs, tmp_path):
    _, two = runs
    shutil.copy(two / f"step-{STEPS:06d}.safetensors", tmp_path)
    assert train.main(FLAGS + ["--steps", str(STEPS + 2), "--out", str(tmp_path), "--resume", "auto"]) == 0
    assert (tmp_path / f"step-{STEPS + 2:06d}.safetensors").exists()
