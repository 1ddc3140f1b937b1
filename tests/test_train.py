"""The command-line verbs on real MNIST with a tiny model: train, resume,
interrupt, diverge, generate, evaluate."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import simcore
from simcore import evaluate, generate, train

DATA = os.environ.get("SIMCORE_DATA")
needs_data = pytest.mark.skipif(not DATA, reason="set SIMCORE_DATA to a folder with the MNIST files to run this")
pytestmark = pytest.mark.usefixtures("mnist_read_once")  # each run here reads the same MNIST

TINY = ["--d-model", "16", "--d-hidden", "32", "--n-layers", "1", "--n-heads", "2",
        "--batch-size", "4", "--no-progress", "--eval-subset", "20", "--samples-per-class", "1",
        "--final-eval", "40", "--warmup", "2"]


def run(tmp_path, *extra):
    return train.main(TINY + ["--out", str(tmp_path)] + list(extra))


def records(out):
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_lr_schedule_warms_up_linearly_then_follows_a_cosine_to_min_lr():
    assert train.lr_at(0, 0.0, 1e-3, 1e-4, 10) == pytest.approx(1e-4)
    assert train.lr_at(9, 0.0, 1e-3, 1e-4, 10) == pytest.approx(1e-3)
    assert train.lr_at(10, 0.0, 1e-3, 1e-4, 10) == pytest.approx(1e-3)
    assert train.lr_at(50, 0.5, 1e-3, 1e-4, 10) == pytest.approx(5.5e-4)
    assert train.lr_at(99, 1.0, 1e-3, 1e-4, 10) == pytest.approx(1e-4)


def test_wsd_schedule_holds_the_peak_then_decays_linearly_over_the_cooldown():
    lr = lambda step, frac: train.lr_at(step, frac, 1e-3, 1e-4, 10, "wsd", 0.4)  # noqa: E731
    assert lr(4, 0.0) == pytest.approx(5e-4)               # warmup as before
    assert lr(10, 0.1) == lr(50, 0.6) == pytest.approx(1e-3)  # held until 1 - cooldown
    assert lr(80, 0.8) == pytest.approx(1e-4 + 0.9e-3 * 0.5)  # half way down
    assert lr(99, 1.0) == pytest.approx(1e-4)


def test_epoch_order_is_a_permutation_fixed_by_seed_and_epoch():
    a, b, c = train.epoch_order(0, 1, 100), train.epoch_order(0, 1, 100), train.epoch_order(0, 2, 100)
    np.testing.assert_array_equal(a, b)
    assert sorted(a) == list(range(100)) and not np.array_equal(a, c)


@pytest.mark.slow
@needs_data
def test_train_writes_metrics_curve_samples_checkpoint_and_final_figure(tmp_path):
    assert run(tmp_path, "--steps", "4", "--eval-every", "2") == 0
    steps = [r for r in records(tmp_path) if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2, 3, 4]
    assert all(np.isfinite(r["loss"]) and r["tokens_per_s"] > 0 for r in steps)
    for name in ("loss.png", "samples-step-000002.png", "samples-final.png", "step-000004.safetensors"):
        assert (tmp_path / name).exists(), name
    final = json.loads((tmp_path / "final.json").read_text())
    assert final["final_eval_images"] == 40 and 0 < final["final_test_bits"] < 9
    # the default precision is auto: bfloat16 products where the CPU has them
    assert final["precision"] == ("bfloat16" if simcore.cpu_info()["bf16"] else "float32")


def test_a_run_asking_for_bfloat16_where_the_cpu_has_none_stops_before_training(tmp_path, capsys):
    before = simcore.get_isa()
    try:
        if simcore.cpu_info()["bf16"]:
            simcore.set_isa("avx2")  # stands for a CPU without AVX-512 (and so without bf16)
        assert run(tmp_path, "--steps", "2", "--precision", "bfloat16") == 2
    finally:
        simcore.set_isa(before)
    err = capsys.readouterr().err
    assert "AVX512_BF16" in err and "Traceback" not in err
    assert not list(tmp_path.glob("step-*.safetensors"))


@pytest.mark.slow
@needs_data
def test_a_short_run_evaluates_a_proportionate_part_of_the_test_set(tmp_path, capsys):
    args = [a for a in TINY if a not in ("--final-eval", "40")]
    assert train.main(args + ["--out", str(tmp_path), "--steps", "3", "--eval-subset", "30"]) == 0
    final = json.loads((tmp_path / "final.json").read_text())
    assert final["final_eval_images"] == 30          # 3 steps x 4 images < --eval-subset
    out = capsys.readouterr().out
    assert "final evaluation on the first 30 of 10000 test images" in out
    assert "over 30 of 10000 test images" in out


@pytest.mark.slow
@needs_data
def test_final_evaluation_grows_with_the_images_trained_on(tmp_path):
    args = [a for a in TINY if a not in ("--final-eval", "40")]
    assert train.main(args + ["--out", str(tmp_path), "--steps", "12", "--eval-subset", "10",
                              "--eval-every", "100"]) == 0
    assert json.loads((tmp_path / "final.json").read_text())["final_eval_images"] == 48


@needs_data
@pytest.mark.parametrize("length,expected", [([], 10000), (["--minutes", "20"], 10000),
                                             (["--minutes", "1"], 30), (["--steps", "5"], 30)])
def test_a_run_of_the_default_budget_evaluates_the_whole_test_set(tmp_path, length, expected):
    """However few steps a slow machine made in it (here none yet)."""
    args = [a for a in TINY if a not in ("--final-eval", "40")] + ["--eval-subset", "30"]
    trainer = train.Trainer(train.build_parser().parse_args(args + ["--out", str(tmp_path)] + length))
    assert trainer.final_eval_size() == expected
    trainer.close()  # (a trainer that does not run lets its folder go here)


@pytest.mark.slow
@needs_data
def test_interrupted_and_resumed_run_ends_with_the_same_weights(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert run(a, "--steps", "6", "--eval-every", "100") == 0
    assert run(b, "--steps", "6", "--eval-every", "100", "--halt-after", "3") == 0
    assert (b / "step-000003.safetensors").exists()
    assert run(b, "--steps", "6", "--eval-every", "100", "--resume", "auto") == 0
    wa = simcore.load(str(a / "step-000006.safetensors"))
    wb = simcore.load(str(b / "step-000006.safetensors"))
    for name in wa.weights:
        np.testing.assert_array_equal(wa.weights[name], wb.weights[name], err_msg=name)
    np.testing.assert_array_equal(wa.moment1, wb.moment1)


@pytest.mark.slow
@needs_data
def test_a_muon_wsd_run_resumes_exactly_and_keeps_its_optimizer(tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    flags = ["--steps", "6", "--eval-every", "100", "--optimizer", "muon", "--schedule", "wsd"]
    assert run(a, *flags) == 0
    assert run(b, *flags, "--halt-after", "3") == 0
    assert run(b, "--steps", "6", "--eval-every", "100", "--resume", "auto") == 0
    wa = simcore.load(str(a / "step-000006.safetensors"))
    wb = simcore.load(str(b / "step-000006.safetensors"))
    for name in wa.weights:
        np.testing.assert_array_equal(wa.weights[name], wb.weights[name], err_msg=name)
    np.testing.assert_array_equal(wa.moment1, wb.moment1)  # Muon's momentum, AdamW's first moments
    lrs = [r["lr"] for r in records(a) if "lr" in r]
    assert lrs[2] == lrs[3] > lrs[5]  # held, then the cooldown (warmup 2, 6 steps, 40%)
    capsys.readouterr()
    assert run(b, "--steps", "8", "--resume", "auto", "--optimizer", "adamw") == 2
    assert "--optimizer adamw: the run being resumed has optimizer muon, and it cannot change mid-run" \
        in capsys.readouterr().err


@pytest.mark.slow
@needs_data
def test_label_dropout_puts_the_null_class_in_a_share_of_the_labels_and_resumes_exactly(tmp_path):
    flags = ["--class-everywhere", "--null-class", "--label-dropout", "0.5", "--eval-every", "100"]
    trainer = train.Trainer(train.build_parser().parse_args(TINY + flags + ["--out", str(tmp_path / "t")]))
    st, seen, null = trainer.state, 0, 0
    for i in range(50):
        st.batch_in_epoch = i
        tokens = trainer.batch()
        wanted = trainer.train[trainer._order(0)[i * 4:(i + 1) * 4]]
        kept = tokens[:, 0] != 10
        np.testing.assert_array_equal(tokens[:, 1:], wanted[:, 1:])     # only the labels change
        np.testing.assert_array_equal(tokens[kept, 0], wanted[kept, 0])
        seen, null = seen + len(tokens), null + (~kept).sum()
    assert 0.35 < null / seen < 0.65
    np.testing.assert_array_equal(trainer.batch(), trainer.batch())      # the same draws again
    trainer.close()

    a, b = tmp_path / "a", tmp_path / "b"
    assert run(a, "--steps", "6", *flags) == 0
    assert run(b, "--steps", "6", *flags, "--halt-after", "3") == 0
    assert run(b, "--steps", "6", "--eval-every", "100", "--resume", "auto") == 0
    wa = simcore.load(str(a / "step-000006.safetensors"))
    wb = simcore.load(str(b / "step-000006.safetensors"))
    for name in wa.weights:
        np.testing.assert_array_equal(wa.weights[name], wb.weights[name], err_msg=name)
    _, state = simcore.checkpoint.load(str(b / "step-000006.safetensors"), optimizer=True)
    assert state["label_dropout"] == 0.5 and wb.cfg.null_class


@pytest.mark.slow
@needs_data
def test_a_checkpoint_from_before_the_optimizer_options_resumes_as_adamw_cosine(tmp_path):
    """Checkpoints written before --optimizer/--schedule existed lack those fields:
    they trained with AdamW and the cosine, and resume as such. (sprint: such a
    checkpoint has no null class, which label dropout, also added later, needs.)"""
    assert run(tmp_path, "--preset", "sprint", "--steps", "3", "--eval-every", "100") == 0
    path = str(tmp_path / "step-000003.safetensors")
    model, state = simcore.checkpoint.load(path, optimizer=True)
    for k in train._ADDED_LATER:
        del state[k]
    simcore.checkpoint.save(path, model, optimizer=True, train_state=state)
    assert run(tmp_path, "--steps", "5", "--eval-every", "100", "--resume", "auto") == 0
    _, resumed = simcore.checkpoint.load(str(tmp_path / "step-000005.safetensors"), optimizer=True)
    assert (resumed["optimizer"], resumed["schedule"]) == ("adamw", "cosine")


@pytest.mark.slow
@needs_data
def test_only_the_last_few_checkpoints_are_kept(tmp_path):
    assert run(tmp_path, "--steps", "5", "--eval-every", "100", "--checkpoint-every", "1", "--keep", "2") == 0
    assert sorted(p.name for p in tmp_path.glob("step-*.safetensors")) == \
        ["step-000004.safetensors", "step-000005.safetensors"]


@pytest.mark.slow
@needs_data
def test_sigterm_stops_training_with_a_checkpoint_that_loads(tmp_path):
    cmd = [sys.executable, "-m", "simcore.train"] + TINY + ["--out", str(tmp_path), "--steps", "100000",
                                                            "--eval-every", "100000"]
    # cwd outside the source tree, so the installed package is the one imported
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            cwd=tmp_path)
    metrics = tmp_path / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and not (metrics.exists() and metrics.stat().st_size > 0):
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()[0]
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 143, out
    assert "stopped (SIGTERM)" in out and "--resume" in out
    ckpts = train.checkpoints(str(tmp_path))
    assert len(ckpts) == 1
    model = simcore.load(ckpts[-1])
    assert model.cfg.d_model == 16


@pytest.mark.slow
@needs_data
def test_divergence_stops_with_a_clear_message_and_a_good_checkpoint(tmp_path, monkeypatch, capsys):
    real = simcore.SIM.forward_backward

    def flaky(self, tokens):
        loss = real(self, tokens)
        return float("nan") if self.opt_step == 2 else loss

    monkeypatch.setattr(simcore.SIM, "forward_backward", flaky)
    assert run(tmp_path, "--steps", "10", "--eval-every", "100") == 1
    err = capsys.readouterr().out
    assert "diverged at step 2" in err and "--lr" in err
    model = simcore.load(str(tmp_path / "step-000002.safetensors"))
    assert all(np.isfinite(w).all() for w in model.weights.values())


def test_model_flags_override_the_preset_and_nothing_else():
    parse = train.build_parser().parse_args
    assert train.model_config(parse([])) == simcore.Config.preset("guided")
    cfg = train.model_config(parse(["--preset", "sprint", "--class-everywhere", "--no-pixel-above",
                                    "--n-layers", "2"]))
    assert cfg == simcore.Config.preset("sprint", class_everywhere=True, pixel_above=False, n_layers=2)
    assert train.model_config(parse(["--no-null-class"])) == simcore.Config.preset("guided", null_class=False)
    assert train.model_config(parse(["--preset", "small", "--pixel-above"])) == simcore.Config.preset("sprint")


@pytest.mark.parametrize("flags,message", [
    (["--batch-size", "0"], "--batch-size must be an integer >= 1, got 0"),
    (["--lr", "-1"], "--lr must be a finite number > 0, got -1.0"),
    (["--steps", "0"], "--steps must be an integer >= 1, got 0"),
    (["--minutes", "nan"], "--minutes must be a finite number > 0, got nan"),
    (["--n-heads", "3"], "not divisible by n_heads"),
    (["--min-lr", "1", "--lr", "0.1"], "exceeds --lr"),
    (["--cooldown", "0"], "--cooldown must be a fraction in (0, 1], got 0.0"),
    (["--muon-lr", "inf"], "--muon-lr must be a finite number > 0, got inf"),
    (["--label-dropout", "1"], "--label-dropout must be a fraction in [0, 1), got 1.0"),
    (["--null-class", "--label-dropout", "0"], "a null class that no training image shows is never learnt"),
    (["--preset", "sprint", "--label-dropout", "0.1"], "needs a model with a null class"),
])
def test_absurd_options_exit_with_a_clear_error(tmp_path, capsys, flags, message):
    assert run(tmp_path, *flags) == 2
    assert message in capsys.readouterr().err


def test_missing_data_folder_is_named_in_the_error(tmp_path, capsys):
    assert run(tmp_path, "--data", str(tmp_path / "nowhere"), "--steps", "1") == 2
    assert "nowhere" in capsys.readouterr().err


def test_resume_from_a_missing_file_is_a_clear_error(tmp_path, capsys):
    assert run(tmp_path, "--resume", str(tmp_path / "nope.safetensors")) == 2
    assert "no such checkpoint" in capsys.readouterr().err


@pytest.mark.slow
@needs_data
def test_generate_and_evaluate_commands_read_a_trained_checkpoint(tmp_path, capsys):
    assert run(tmp_path, "--steps", "2", "--eval-every", "100") == 0
    ckpt = str(tmp_path / "step-000002.safetensors")
    png, npy = tmp_path / "g.png", tmp_path / "g.npy"
    assert generate.main(["--checkpoint", ckpt, "--classes", "3,5", "--per-class", "2",
                          "--out", str(png), "--npy", str(npy)]) == 0
    imgs = np.load(npy)
    assert png.exists() and imgs.shape == (4, 28, 28) and imgs.dtype == np.uint8
    assert evaluate.main(["--checkpoint", ckpt, "--limit", "30"]) == 0
    assert "test bits/dim" in capsys.readouterr().out
    # the README's form: the run's folder stands for its newest checkpoint
    assert generate.main(["--checkpoint", str(tmp_path), "--classes", "1", "--per-class", "1",
                          "--out", str(tmp_path / "h.png")]) == 0
    assert evaluate.main(["--checkpoint", str(tmp_path), "--limit", "10"]) == 0


def test_generate_command_reports_a_bad_checkpoint_clearly(tmp_path, capsys):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a checkpoint")
    assert generate.main(["--checkpoint", str(bad), "--out", str(tmp_path / "x.png")]) == 2
    assert "bad.safetensors" in capsys.readouterr().err
