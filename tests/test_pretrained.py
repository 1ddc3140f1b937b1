"""The pretrained model ships inside the installed package: the default preset, trained
with the default recipe for at least an hour, and it draws digits and scores on real test
digits what its record says, with no training and no network."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import safetensors

import simcore
from simcore import data, evaluate, generate, pretrained
from simcore.config import DEFAULT_PRESET, Config
from simcore.train import RECIPES, TrainState

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
import make_pretrained  # noqa: E402

DATA = os.environ.get("SIMCORE_DATA")
needs_data = pytest.mark.skipif(not DATA, reason="set SIMCORE_DATA to a folder with the MNIST files to run this")


def test_the_installed_package_holds_a_weights_only_checkpoint_of_a_few_megabytes():
    """(CI runs the tests against what pip install . installed: this proves the wheel has it.)"""
    path = os.path.join(os.path.dirname(simcore.__file__), pretrained.FILE)
    assert 1e6 < os.path.getsize(path) < 8e6
    with safetensors.safe_open(path, "numpy") as f:
        names = list(f.keys())
    assert "token_embedding" in names and not [n for n in names if n.startswith("optim.")]


def test_it_is_the_default_preset_trained_with_the_default_recipe_for_an_hour_or_more():
    model = simcore.SIM.pretrained()
    assert model.cfg == Config.preset(DEFAULT_PRESET)
    info = pretrained.info()
    state = TrainState.from_dict(info, "the pretrained model's state")  # fields added since: defaults
    assert {k: getattr(state, k) for k in RECIPES[DEFAULT_PRESET]} == RECIPES[DEFAULT_PRESET]
    assert info["dataset"] == "mnist" and info["elapsed"] >= 3600
    record = info["provenance"]
    assert record["command"].startswith("python -m simcore.train --minutes ")
    assert record["test_images"] == 10_000 and record["test_bits_per_dim"] < 0.85


def test_each_call_gives_a_model_of_its_own():
    a, b = simcore.SIM.pretrained(), simcore.SIM.pretrained()
    a.weights["token_embedding"][...] = 0
    assert b.weights["token_embedding"].any()


@pytest.mark.slow
@needs_data
def test_it_scores_on_real_test_digits_what_its_record_says():
    images, labels = data.load_split("mnist", "test", data_dir=DATA)
    rng = np.random.default_rng(0)
    pick = rng.choice(len(images), 500, replace=False)
    bits = evaluate.evaluate(simcore.SIM.pretrained(), data.to_tokens(images[pick], labels[pick]))["bits_per_dim"]
    # 500 random test images: the all-10,000 figure within sampling noise
    assert abs(bits - pretrained.info()["provenance"]["test_bits_per_dim"]) < 0.03


@pytest.mark.slow
def test_generate_draws_from_it_with_no_checkpoint_given(tmp_path, capsys):
    png, npy = tmp_path / "digits.png", tmp_path / "digits.npy"
    assert generate.main(["--pretrained", "--classes", "0-9", "--per-class", "1", "--seed", "0",
                          "--out", str(png), "--npy", str(npy)]) == 0
    imgs = np.load(npy)
    assert png.exists() and imgs.shape == (10, 28, 28)
    # digits: strokes on a blank ground (MNIST's share of pixels above 127 is about 0.1),
    # not noise and not empty pages
    ink = (imgs > 127).mean()
    assert 0.05 < ink < 0.3, ink


def test_the_command_line_wants_exactly_one_model(tmp_path, capsys):
    out = ["--out", str(tmp_path / "x.png")]
    for argv in (out, ["--pretrained", "--checkpoint", str(tmp_path)] + out):
        with pytest.raises(SystemExit):
            generate.main(argv)
    assert "--pretrained" in capsys.readouterr().err


def test_a_missing_file_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(pretrained, "path", lambda: str(tmp_path / "gone.safetensors"))
    with pytest.raises(FileNotFoundError, match="pretrained model is missing"):
        simcore.SIM.pretrained()


def _finished_run(tmp_path, *flags):
    """A run folder as make_pretrained reads it: a default-preset checkpoint and final.json."""
    model = simcore.SIM(Config.preset(DEFAULT_PRESET), seed=0)
    state = {**RECIPES[DEFAULT_PRESET], "seed": 1, "batch_size": 8, "dataset": "mnist", "steps": None,
             "epochs": None, "minutes": 120.0, "step": 5, "epoch": 0, "batch_in_epoch": 5,
             "elapsed": 7200.0, "tokens": 31360}
    for flag in flags:
        state.update(flag)
    simcore.save(tmp_path / "step-000005.safetensors", model, optimizer=True, train_state=state)
    (tmp_path / "final.json").write_text(json.dumps({"step": 5, "final_test_bits": 0.79,
                                                     "final_eval_images": 10_000}))
    return tmp_path


def test_make_pretrained_writes_the_run_without_moments_and_with_its_record(tmp_path):
    run = _finished_run(tmp_path)
    out = tmp_path / "shipped.safetensors"
    assert make_pretrained.main([str(run), "--out", str(out), "--cpu", "a test CPU"]) == 0
    model, state = simcore.checkpoint.load(out)
    assert model.opt_step == 0 and not model.moment1.any()
    assert state["provenance"] == {"command": "python -m simcore.train --minutes 120 --seed 1",
                                   "test_bits_per_dim": 0.79, "test_images": 10_000, "cpu": "a test CPU",
                                   "simcore": simcore.__version__, "from": "step-000005.safetensors"}


@pytest.mark.parametrize("flag, message", [
    ({"elapsed": 1800.0}, "fewer than --min-minutes 60"),
    ({"optimizer": "adamw"}, "not the default recipe"),
    ({"dataset": "fashion-mnist"}, "not mnist"),
])
def test_make_pretrained_refuses_a_run_the_package_must_not_ship(tmp_path, flag, message):
    run = _finished_run(tmp_path, flag)
    with pytest.raises(SystemExit, match=message):
        make_pretrained.main([str(run), "--out", str(tmp_path / "x.safetensors")])


def test_make_pretrained_refuses_a_run_without_its_full_final_evaluation(tmp_path):
    run = _finished_run(tmp_path)
    (run / "final.json").write_text(json.dumps({"step": 5, "final_test_bits": 0.8, "final_eval_images": 500}))
    with pytest.raises(SystemExit, match="all 10,000 test images"):
        make_pretrained.main([str(run), "--out", str(tmp_path / "x.safetensors")])


@pytest.mark.slow
def test_python_m_simcore_generate_pretrained_runs_as_the_readme_says(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(simcore.__file__)))
    p = subprocess.run([sys.executable, "-m", "simcore.generate", "--pretrained", "--classes", "3",
                        "--per-class", "1", "--out", str(tmp_path / "digits.png")],
                       capture_output=True, text=True, cwd=tmp_path, env=env)
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "digits.png").exists()


def test_make_pretrained_refuses_a_model_that_is_not_the_default_preset(tmp_path):
    simcore.save(tmp_path / "step-000001.safetensors", simcore.SIM(Config.preset("small")),
                 train_state={"seed": 1})
    with pytest.raises(SystemExit, match="is not the default preset"):
        make_pretrained.main([str(tmp_path), "--out", str(tmp_path / "x.safetensors")])
