"""Train the pixel transformer on MNIST (or Fashion-MNIST).

    python -m simcore.train                      # the guided preset, 15-minute budget
    python -m simcore.train --steps 2000 --out runs/a
    python -m simcore.train --resume auto --out runs/a

Shows a progress bar; writes into --out a metrics log (metrics.jsonl), a loss
curve (loss.png), sample grids (samples-step-NNNNNN.png, one row per class) and
checkpoints (step-NNNNNN.safetensors, the last few kept). Checkpoints are also
written at the end and on Ctrl-C / SIGTERM; --resume continues exactly where a
run stopped (same data order, optimizer state and schedule). A flag given with
--resume changes the run where it can (and the run says so), or is refused.
A run holds --out for itself (its lock, run.lock): a second run on the same
folder is refused while the first lives.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import glob
import json
import math
import os
import signal
import sys
import time
import warnings

import numpy as np

import simcore
from simcore import cli, data, images
from simcore.checkpoint import CheckpointError, in_folder, load
from simcore.config import DEFAULT_PRESET, PRESETS, Config
from simcore.data import DataError
from simcore.distributed import World
from simcore.evaluate import bits_per_dim, evaluate
from simcore.files import FolderBusy, FolderLock, check_output_folder, folders_missing, remove_stale_temps, write_atomic
from simcore.options import Option, add_flag, check, flag_name, option, options_of, spelled
from simcore.progress import Progress

DEFAULT_MINUTES = 15.0


# ---- the run's state: the options saved in its checkpoints -------------------------

@dataclasses.dataclass
class TrainState:
    """What a run was asked for and where it is: all a checkpoint needs to continue the
    run exactly. Each field is an option declared once (simcore.options): its flag (in
    the group `flag` names), its check and what --resume may do with it come from the
    declaration. The state travels in the checkpoint as JSON (to_dict), and from_dict
    checks every field before a resumed run trusts it."""
    # asked for: the run
    seed: int = option(0, "weights, data order and samples", bounds="[0, inf)", flag="run",
                       fixed="the run's data order and label dropout draws come from it")
    batch_size: int = option(8, "images per optimizer step", bounds="[1, inf)", flag="run",
                             fixed="the run's place in its epoch is counted in batches of that size")
    dataset: str = option("mnist", "the images to train and test on", choices=("mnist", "fashion-mnist"),
                          flag="run", fixed="the run's place in its epoch is one in that data set's order")
    # asked for: the optimisation (these defaults: small's and original's recipe, RECIPES)
    lr: float = option(3e-3, "peak learning rate", bounds="(0, inf)", flag="optimisation")
    min_lr: float = option(1e-4, "learning rate at the end of the schedule", bounds="[0, inf)",
                           flag="optimisation")
    warmup: int = option(100, "linear warmup steps", bounds="[0, inf)", flag="optimisation")
    weight_decay: float = option(0.01, "decoupled weight decay, AdamW's and Muon's", bounds="[0, inf)",
                                 flag="optimisation")
    clip: float = option(1.0, "global gradient-norm clip, 0 = off", bounds="[0, inf)", flag="optimisation")
    # asked for: the length (the first limit reached ends the run)
    steps: int | None = option(None, "optimizer steps", kind=int, none=True, bounds="[1, inf)", flag="length")
    epochs: float | None = option(None, "passes over the training set", kind=float, none=True,
                                  bounds="(0, inf)", flag="length")
    minutes: float | None = option(None, "wall-clock budget; the lr schedule fits itself to it (default "
                                         f"{DEFAULT_MINUTES:g} when neither --steps nor --epochs is given)",
                                   kind=float, none=True, bounds="(0, inf)", flag="length")
    # (checkpoints written before these five existed lack them: they trained with AdamW
    # and the cosine, these fields' defaults)
    optimizer: str = option("adamw", "muon: Muon for the blocks' matrices, AdamW at --lr for the embedding, "
                                     "head and gains", choices=("adamw", "muon"), flag="optimisation",
                            fixed="the checkpoint's moments belong to the run's optimizer", added_later=True)
    muon_lr: float = option(0.02, "Muon's peak learning rate", bounds="(0, inf)", flag="optimisation",
                            added_later=True)
    schedule: str = option("cosine", "after warmup: cosine to --min-lr, or wsd (warmup-stable-decay): --lr "
                                     "held, then linear to --min-lr over the last --cooldown of the run",
                           choices=("cosine", "wsd"), flag="optimisation", added_later=True)
    cooldown: float = option(0.4, "wsd's decay, a fraction of the run", bounds="(0, 1]", flag="optimisation",
                             added_later=True)
    label_dropout: float = option(0.0, "the share of training images whose label is replaced by the null "
                                       "class (needs --null-class), so that sampling can use guidance",
                                  bounds="[0, 1)", flag="optimisation", added_later=True)
    # where it is
    step: int = option(0, "optimizer steps taken", bounds="[0, inf)")
    epoch: int = option(0, "the epoch under way, from 0", bounds="[0, inf)")
    batch_in_epoch: int = option(0, "batches of it done", bounds="[0, inf)")
    elapsed: float = option(0.0, "seconds of training, over all its invocations", bounds="[0, inf)")
    tokens: int = option(0, "tokens trained on", bounds="[0, inf)")

    @classmethod
    def start(cls, args) -> TrainState:
        """A new run, from the command line: the flags given, else the preset's recipe,
        else the options' defaults; with no length given, the default budget."""
        given = _given(args, options_of(cls))
        if not any(k in given for k in _LENGTH):
            given["minutes"] = DEFAULT_MINUTES
        return cls(**{**RECIPES[args.preset or DEFAULT_PRESET], **given}).check("the new run")

    @classmethod
    def from_dict(cls, d: dict, where: str) -> TrainState:
        """A checkpoint's state, every field present and sane, or ValueError naming it."""
        declared = options_of(cls)
        missing = [k for k, opt in declared.items() if k not in d and not opt.added_later]
        if missing:
            raise ValueError(f"{where}: training state lacks {', '.join(missing)}")
        return cls(**{k: d[k] for k in declared if k in d}).check(where).check_place(where)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def check(self, where: str) -> TrainState:
        for name, opt in options_of(self).items():
            check(f"{where}: training state {name}", getattr(self, name), opt)  # (BadType is a ValueError)
        if not (self.steps or self.epochs or self.minutes):
            raise ValueError(f"{where}: training state sets no length (steps, epochs or minutes)")
        if self.min_lr > self.lr:
            raise ValueError(f"{where}: training state min_lr {self.min_lr} exceeds lr {self.lr}")
        return self

    def check_place(self, where: str) -> TrainState:
        """A checkpoint's place in its run against its other fields, whatever its checksum
        says: every step is one batch of the epoch under way, every epoch as many batches
        as the first, and the run's own limits not passed (Trainer checks the rest against
        the model and the data). ValueError naming the field."""
        step, epoch, b = self.step, self.epoch, self.batch_in_epoch
        bad = f"{where}: training state"
        if self.steps is not None and step > self.steps:
            raise ValueError(f"{bad} step {step} is past the run's own limit, steps {self.steps}")
        if self.epochs is not None and epoch >= self.epochs:
            raise ValueError(f"{bad} epoch {epoch} (counted from 0) is past the run's own limit, "
                             f"epochs {self.epochs:g}")
        if b > step:
            raise ValueError(f"{bad} batch_in_epoch {b} exceeds step {step}: a run is never further "
                             "into an epoch than it has stepped")
        if epoch == 0 and b != step:
            raise ValueError(f"{bad} batch_in_epoch {b} is not step {step}, yet epoch is 0: in its "
                             "first epoch a run takes one step per batch")
        whole = step - b  # the steps of the epochs done, as many in each, at least one
        if epoch > 0 and (whole % epoch or whole < epoch or b > whole // epoch):
            raise ValueError(f"{bad} epoch {epoch} does not fit step {step} and batch_in_epoch {b}: no "
                             f"epoch length makes {epoch} whole epochs and {b} batches of the next {step} steps")
        return self

    def continued(self, args) -> tuple[TrainState, dict]:
        """This state, resumed with the flags given now: each replaces the run's own value
        (a new length replaces the run's whole length, and so its lr schedule; a lower
        --lr after a divergence), unless its option is fixed for a run and it differs
        (ValueError saying why). Returns the state and what changed, {name: (old, new)}."""
        given = _given(args, options_of(self))
        if any(k in given for k in _LENGTH):
            given = {**dict.fromkeys(_LENGTH), **given}
        if given.get("steps") is not None and given["steps"] < self.step:
            raise ValueError(f"--steps {given['steps']}: the run being resumed is already at step {self.step} "
                             "(give a larger one, or start a new run)")
        if given.get("epochs") is not None and given["epochs"] <= self.epoch:
            raise ValueError(f"--epochs {given['epochs']:g}: the run being resumed is already in its epoch "
                             f"{self.epoch + 1} (give a larger one, or start a new run)")
        changed = resume_changes(given, self.to_dict(), options_of(self))
        return dataclasses.replace(self, **{k: new for k, (_, new) in changed.items()}).check("the resumed run"), \
            changed


_LENGTH = tuple(k for k, opt in options_of(TrainState).items() if opt.flag == "length")
_ADDED_LATER = tuple(k for k, opt in options_of(TrainState).items() if opt.added_later)

# Each preset's training recipe: the defaults of the optimisation flags, where they differ
# from the options' own (AdamW and a cosine: small's and original's).
_RECIPE_CHANGES = {"small": {}, "original": {}, "sprint": {"optimizer": "muon", "schedule": "wsd"}}
_RECIPE_CHANGES["guided"] = {**_RECIPE_CHANGES["sprint"], "label_dropout": 0.1}
RECIPES = {preset: {k: changes.get(k, opt.default) for k, opt in options_of(TrainState).items()
                    if opt.flag == "optimisation"}
           for preset, changes in _RECIPE_CHANGES.items()}


# ---- the command line: every flag an option ------------------------------------------

PRESET = Option(str, DEFAULT_PRESET, "sizes, and the defaults of the optimisation flags (the preset's recipe)",
                choices=tuple(sorted(PRESETS)), flag="model")

# The flags of one invocation: not saved, so each invocation (a resumed one too) takes its own.
INVOCATION = {
    "data": Option(str, None, "folder with the IDX files (else $SIMCORE_DATA, the cache, a download)", none=True),
    "out": Option(str, None, "output folder (default runs/<preset>), held by one run at a time (its run.lock)",
                  none=True),
    "resume": Option(str, None, "a checkpoint path, or 'auto' for the newest in --out; the run continues "
                                "with its own settings (each group says what the flags given with it do)",
                     none=True),
    "checkpoint_every": Option(int, 500, "steps between checkpoints", bounds="[1, inf)"),
    "keep": Option(int, 3, "checkpoints kept in --out", bounds="[1, inf)"),
    "eval_every": Option(int, 500, "steps between test-subset evaluations and sample grids", bounds="[1, inf)"),
    "eval_subset": Option(int, 256, "test images in the periodic evaluation", bounds="[1, inf)"),
    "final_eval": Option(int, None, "test images in the final evaluation (default: as many as the run trained "
                                    "on, at least --eval-subset, at most all: a "
                                    f"{DEFAULT_MINUTES:g}-minute run gets all)", bounds="[1, inf)", none=True),
    "samples_per_class": Option(int, 8, "images of each class in the sample grids", bounds="[1, inf)"),
    "temperature": Option(float, 1.0, "sampling temperature for the grids", bounds="[0, inf)"),
    # auto by default: at a fixed number of steps bfloat16 learns as float32 does (within 0.001
    # bits/dim), and in the same minutes it makes ~1.7x the steps (258 against 148 ms a step of
    # `guided`, AMD EPYC Zen 5; benchmarks/README.md)
    "precision": Option(str, "auto", "the operands of the products: float32, or bfloat16 (mixed "
                                     "precision; needs AVX512_BF16), or auto (bfloat16 where the CPU has it, "
                                     "else float32)",
                        choices=("float32", "bfloat16", "auto")),
    "threads": Option(int, None, "threads for BLAS and simcore's kernels (default: $OMP_NUM_THREADS, else one "
                                 "per core)", bounds="[1, inf)", none=True),
    "no_progress": Option(bool, False, "no progress bar"),
    "distributed": Option(bool, False, "data-parallel over MPI (automatic under mpirun/srun; needs simcore[mpi])"),
    # For tests: behave as if interrupted after N steps of this invocation.
    "halt_after": Option(int, None, argparse.SUPPRESS, bounds="[1, inf)", none=True),
}

# Every flag's option, in the order of --help: the preset, the model's (Config's), the
# run's (TrainState's), this invocation's.
FLAGS = {"preset": PRESET,
         **{k: opt for k, opt in options_of(Config).items() if opt.flag},
         **{k: opt for k, opt in options_of(TrainState).items() if opt.flag},
         **{k: dataclasses.replace(opt, flag="output") for k, opt in INVOCATION.items()}}

_GROUPS = {
    "model": "model (with --resume, must match the checkpoint's)",
    "run": "the run (with --resume, must match the run's)",
    "optimisation": "optimisation (with --resume, the ones given replace the run's own, but for --optimizer)",
    "length": "length (the first limit reached ends the run; with --resume, the ones given set a new one)",
    "output": "data and output",
}


def _default(key: str) -> str:
    """'default: X' for an optimisation flag, naming the presets whose recipes differ."""
    by_value = {}
    for preset, recipe in RECIPES.items():
        v = recipe[key]
        by_value.setdefault(f"{v:g}" if isinstance(v, float) else str(v), []).append(preset)
    if len(by_value) == 1:
        return f"default: {next(iter(by_value))}"
    return "default: " + "; ".join(f"{v} for {', '.join(p)}" for v, p in by_value.items())


def _flag_help(name: str, opt: Option) -> str:
    """The option's help, and what the flag's default is (the flags of saved options
    default to None, "not given", so that --resume knows which were)."""
    if name in INVOCATION:
        return opt.help  # (the help formatter names the default)
    if opt.flag == "model" and name != "preset":
        return f"{opt.help} (override the preset)"
    if name in RECIPES[DEFAULT_PRESET]:
        default = _default(name)
    elif opt.default is not None:
        default = f"default: {opt.default}"
    else:
        return opt.help
    return f"{opt.help} ({default}{'; fixed for a run' if opt.fixed and opt.flag == 'optimisation' else ''})"


def build_parser() -> argparse.ArgumentParser:
    ap = cli.ArgumentParser(prog="python -m simcore.train", description=__doc__.split("\n\n")[0],
                            formatter_class=cli.HelpFormatter)
    groups = {key: ap.add_argument_group(title) for key, title in _GROUPS.items()}
    for name, opt in FLAGS.items():
        add_flag(groups[opt.flag], name, opt, default=opt.default if name in INVOCATION else None,
                 help=_flag_help(name, opt))
    return ap


def check_args(args) -> None:
    """Absurd options get a clear message before any work starts."""
    if args.out is not None and not args.out.strip():
        raise ValueError("--out: empty path")
    for name, opt in FLAGS.items():
        if getattr(args, name) is not None:  # (a flag given has a value: "or null" is no choice for it)
            check(flag_name(name), getattr(args, name), dataclasses.replace(opt, none=False))
    if args.min_lr is not None and args.lr is not None and args.min_lr > args.lr:
        raise ValueError(f"--min-lr ({args.min_lr}) exceeds --lr ({args.lr})")


def _given(args, declared: dict) -> dict:
    """The flags given (not None) among the declared options that have one."""
    return {k: getattr(args, k) for k, opt in declared.items() if opt.flag and getattr(args, k, None) is not None}


def model_config(args) -> Config:
    """The preset's model with the model flags given."""
    return Config.preset(args.preset or DEFAULT_PRESET, **_given(args, options_of(Config)))


def _model_flags(args) -> tuple[dict, dict]:
    """The model options the flags give (those given, over the preset's if --preset is),
    and how each was said, for a message."""
    given = _given(args, options_of(Config))
    if args.preset is None:
        return given, {}
    preset = Config.preset(args.preset).to_dict()
    said = {k: f"--preset {args.preset} (its {k} {_show(v)})" for k, v in preset.items() if k not in given}
    return {**preset, **given}, said


def resume_changes(given: dict, run: dict, declared: dict, said: dict | None = None) -> dict:
    """What the options given with --resume change in the run's: {name: (old, new)}.
    ValueError, naming the flag and why, for one that differs from the run's and is
    fixed for a run (its declaration says why)."""
    changed = {}
    for name, new in given.items():
        old = run[name]
        if new == old:
            continue
        if declared[name].fixed:
            flag = (said or {}).get(name) or spelled(name, new)
            raise ValueError(f"{flag}: the run being resumed has {name} {_show(old)}, and it cannot change "
                             f"mid-run: {declared[name].fixed} (start a new run to change it)")
        changed[name] = (old, new)
    return changed


def _show(v) -> str:
    return "unset" if v is None else f"{v:g}" if isinstance(v, float) else str(v)


# ---- schedule ----------------------------------------------------------------------

def lr_at(step: int, frac: float, lr: float, min_lr: float, warmup: int,
          schedule: str = "cosine", cooldown: float = 0.4) -> float:
    """Linear warmup over `warmup` steps, then from lr to min_lr as the run's progress
    `frac` (steps or wall-clock, whichever is further) goes 0 -> 1: along a cosine, or
    ("wsd", warmup-stable-decay) held at lr, then linear over the last `cooldown` of it."""
    if step < warmup:
        return lr * (step + 1) / warmup
    frac = min(max(frac, 0.0), 1.0)
    if schedule == "wsd":
        return lr if frac <= 1 - cooldown else min_lr + (lr - min_lr) * (1 - frac) / cooldown
    return min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * frac))


def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """The data order of one epoch: a function of (seed, epoch) only, so resuming
    needs just the position in it."""
    return np.random.default_rng([seed, epoch]).permutation(n)


# ---- checkpoints on disk -----------------------------------------------------------

def checkpoints(out: str) -> list[str]:
    """Checkpoints in `out`, oldest first (none if the folder does not exist yet)."""
    return in_folder(out) if os.path.isdir(out) else []


def _checked_checkpoint(path: str) -> tuple[simcore.SIM, TrainState]:
    """A training checkpoint's model and state, the state checked in itself
    (TrainState.from_dict) and against the model: the tokens its steps trained on, and the
    optimizer's own count of them. ValueError (or CheckpointError, OSError) naming the file."""
    model, saved = load(path, optimizer=True)
    if not saved:
        raise ValueError(f"{path}: has no training state (written by simcore.save, not by train)")
    state = TrainState.from_dict(saved, path)
    T, bad = model.cfg.seq_len, f"{path}: training state"
    if state.tokens != state.step * state.batch_size * T:
        raise ValueError(f"{bad} tokens {state.tokens} does not match step {state.step}: {state.step} steps "
                         f"of {state.batch_size} images of {T} tokens are {state.step * state.batch_size * T}")
    if model.opt_step != state.step:
        none = model.opt_step == 0 and not (model.moment1.any() or model.moment2.any())
        raise ValueError(f"{bad} step {state.step} does not match the optimizer's count of its steps, "
                         f"adam_step {model.opt_step}"
                         + ("; the file holds no optimizer moments, so it cannot continue a run" if none else ""))
    return model, state


# ---- the run -----------------------------------------------------------------------

class Stop(Exception):
    """A signal, or --halt-after: save and end the run (resumable)."""


class Diverged(Exception):
    """The loss or the updated weights are not finite (the weights are rolled back)."""


class RunLog:
    """metrics.jsonl (a line per step, one per evaluation) and the loss curve drawn from it."""

    def __init__(self, folder: str, step: int, title: str):
        self.path = os.path.join(folder, "metrics.jsonl")
        self.curve_path = os.path.join(folder, "loss.png")
        self.title = title
        self.curve = {"train": ([], []), "test": ([], [])}
        self._reload(step)
        self.file = open(self.path, "a")

    def _reload(self, step: int) -> None:
        """The curve so far; lines past `step` (the resumed checkpoint's: written after it
        by an interrupted run) are dropped from the file too, since this run writes those
        steps again."""
        try:
            with open(self.path) as f:
                lines = f.read().splitlines(keepends=True)
        except OSError:
            return
        kept = []
        for line in lines:
            try:
                rec = json.loads(line)
            except ValueError:
                continue  # a line cut short by a kill
            if not isinstance(rec, dict) or rec.get("step", 0) > step:
                continue
            kept.append(line if line.endswith("\n") else line + "\n")
            if "test_bits" in rec:
                self.add("test", rec["step"], rec["test_bits"])
            elif "bits" in rec and rec["step"] % 10 == 0:
                self.add("train", rec["step"], rec["bits"])
        if len(kept) != len(lines):
            write_atomic(self.path, "".join(kept).encode())

    def write(self, rec: dict) -> None:
        self.file.write(json.dumps(rec) + "\n")
        self.file.flush()

    def add(self, curve: str, step: int, bits: float) -> None:
        self.curve[curve][0].append(step)
        self.curve[curve][1].append(bits)

    def draw(self) -> None:
        images.save_loss_curve(self.curve_path, self.curve, title=self.title, xlabel="step", ylabel="bits/dim")


class Trainer:
    """One training run: __init__ takes the folder (its lock), starts or resumes the model
    and its state, loads the data and sets the limits; run() steps until a limit, with the
    after-step work (log, evaluate and sample, checkpoint) each in a method of its own, and
    lets the folder go at its end. A run refused in __init__ lets it go at once, and removes
    the folders it created for it."""

    def __init__(self, args, world=None, log=print):
        self.world = world or World(use_mpi=False)
        self.root = self.world.is_root
        self.args = args
        self.log = log if self.root else (lambda *a, **k: None)
        self.out = args.out or os.path.join("runs", args.preset or DEFAULT_PRESET)
        self.lock, self._made, self.runlog = None, [], None
        self._open_folder()
        try:
            self._set_up()
        except BaseException:  # an error, Ctrl-C or SIGTERM (main makes it SystemExit) before any step
            self.close(refused=True)
            raise

    def _set_up(self) -> None:
        args = self.args
        if args.threads:
            simcore.set_threads(args.threads)
        self.model, self.state = self._start_or_resume()
        self.model.set_precision(args.precision)  # a run's own, not its checkpoints' (float32 either way)
        if args.precision == "auto":
            self.log(f"precision auto: {self.model.precision} products"
                     + (" (this CPU has bfloat16 dot products)" if self.model.precision == "bfloat16" else ""))
        if self.state.label_dropout and not self.model.cfg.null_class:
            raise ValueError(f"label dropout {self.state.label_dropout:g} needs a model with a null class "
                             "to put in place of the labels (--null-class), or --label-dropout 0")
        if self.model.cfg.null_class and not self.state.label_dropout:
            raise ValueError("a null class that no training image shows is never learnt, yet sampling "
                             "would guide by it: give --label-dropout (the guided preset's is 0.1) "
                             "or --no-null-class")
        self.train, self.test = self._load_data()
        self._set_limits()
        self._check_place_in_data()
        # A fixed held-out subset, the same at every evaluation.
        self.eval_tokens = self.test[np.random.default_rng(1234).permutation(len(self.test))[:args.eval_subset]]
        cfg = self.model.cfg
        self.runlog = (RunLog(self.out, self.state.step, f"bits/dim ({cfg.d_model}d, {cfg.n_layers} layers)")
                       if self.root else None)
        # The weights, moments and step before the current update: a diverging step
        # (non-finite weights after the update) is undone, so its checkpoint is the last good state.
        self._before = None
        self.stop_signal = None
        self.ema = self.last_test = None

    def close(self, refused: bool = False) -> None:
        """Let the folder go: the metrics file closed, the lock released (again: nothing);
        for a run refused before it began, the folders it created removed (if empty)."""
        if self.runlog is not None:
            self.runlog.file.close()
        if self.lock is not None:
            self.lock.release()
            self.lock = None
        for folder in self._made if refused else ():  # deepest first
            try:
                os.rmdir(folder)
            except OSError:
                break
        self._made = []

    # -- setting up --

    def _open_folder(self) -> None:
        """Rank 0 checks --out, creates it and takes its lock, before any work (reading
        its checkpoints included); the other ranks wait, and fail with it if it fails."""
        failure = None
        if self.root:
            try:
                self._take_folder()
            except (ValueError, OSError) as err:
                failure = err
        if self.world.size > 1:  # (a barrier that also says whether rank 0 got the folder)
            failed = self.world.allreduce_sum_(np.array([float(failure is not None)]))
            if failed[0] and failure is None:
                raise ValueError(f"rank 0 could not take --out {self.out}")
        if failure is not None:
            raise failure

    def _take_folder(self) -> None:
        check_output_folder(self.out, "--out")
        self._made = folders_missing(self.out)
        lock = FolderLock(self.out)
        try:
            os.makedirs(self.out, exist_ok=True)
            lock.acquire()
        except FolderBusy as err:
            self.close(refused=True)
            raise FolderBusy(f"--out {self.out}: {err}: wait for it to end, or give another --out") from None
        except OSError as err:
            self.close(refused=True)
            raise OSError(f"--out {self.out}: cannot create {err.filename or lock.path}: "
                          f"{err.strerror or err}") from None
        self.lock = lock
        if lock.stale:
            self.log(f"--out {self.out}: taking over the lock of a run that ended without letting it go "
                     f"({lock.stale})")
        if lock.unlocked:
            self.log(f"warning: --out {self.out} is not locked ({lock.unlocked}): a second run on it "
                     "would not be refused")
        remove_stale_temps(self.out)  # left by a writer killed mid-way

    def _start_or_resume(self) -> tuple[simcore.SIM, TrainState]:
        path = self._resume_path()
        self.resumed_from = path
        if not path:
            state = TrainState.start(self.args)
            return simcore.SIM(model_config(self.args), seed=state.seed), state
        model, saved = self._load_checkpoint(path)
        given, said = _model_flags(self.args)
        resume_changes(given, model.cfg.to_dict(), options_of(Config), said)  # (the model's options are fixed)
        state, changed = saved.continued(self.args)
        self.log(f"resuming from {path} at step {state.step}"
                 + "".join(f", {k} now {_show(new)} (was {_show(old)})" for k, (old, new) in changed.items()))
        if self.args.preset is not None:  # its recipe holds defaults, and the run has its own values
            kept = [f"{k} {_show(getattr(state, k))}" for k, v in RECIPES[self.args.preset].items()
                    if getattr(self.args, k) is None and getattr(state, k) != v]
            if kept:
                self.log(f"(the run keeps its own {', '.join(kept)}, not --preset {self.args.preset}'s recipe's; "
                         "give those flags to change them)")
        return model, state

    def _load_checkpoint(self, path: str) -> tuple[simcore.SIM, TrainState]:
        """The checkpoint's model and its training state, each checked. With --resume auto,
        a newest checkpoint that fails says so and names the older ones that load."""
        try:
            return _checked_checkpoint(path)
        except (ValueError, OSError) as err:  # (a CheckpointError is a ValueError)
            if self.args.resume != "auto":
                raise
            older, intact = [p for p in checkpoints(self.out) if p != path][::-1], []
            for p in older:
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")  # (a file without checksum: loads, with a warning)
                        _checked_checkpoint(p)
                    intact.append(p)
                except (ValueError, OSError):
                    pass
            if intact:
                what = (f"older checkpoints that load: {', '.join(intact)}; continue from the newest of them "
                        f"with --resume {intact[0]} (or move the damaged file away and give --resume auto again)")
            else:
                what = f"no older checkpoint in {self.out} loads either" if older else "it is the only checkpoint"
            raise CheckpointError(f"--resume auto: the newest checkpoint fails: {err}; {what}") from None

    def _resume_path(self) -> str | None:
        r = self.args.resume
        if not r:
            return None
        if r == "auto":
            found = checkpoints(self.out)
            if not found:
                others = [] if self.args.out else sorted(
                    d for d in glob.glob(os.path.join("runs", "*")) if checkpoints(d))
                self.log(f"--resume auto: no checkpoint in {self.out}; starting fresh"
                         + (f" (runs of other presets: {', '.join(others)}; give their --preset or --out)"
                            if others else ""))
                return None
            return found[-1]
        if not os.path.exists(r):
            raise FileNotFoundError(f"--resume: no such checkpoint: {r}")
        return r

    def _check_place_in_data(self) -> None:
        """A resumed run's place against this data: batch_in_epoch within its epoch, and the
        epochs done of this data's length (whatever the checkpoint's checksum says)."""
        st, spe = self.state, self.steps_per_epoch
        if not self.resumed_from:
            return
        bad = f"{self.resumed_from}: training state"
        of_data = f"{len(self.train)} training images make {spe} batches of {st.batch_size}"
        if st.batch_in_epoch > spe:
            raise ValueError(f"{bad} batch_in_epoch {st.batch_in_epoch} is past the end of its epoch: {of_data}")
        if st.step != st.epoch * spe + st.batch_in_epoch:
            raise ValueError(f"{bad} step {st.step} is not where epoch {st.epoch} and batch_in_epoch "
                             f"{st.batch_in_epoch} put a run on this data ({of_data}): "
                             f"{st.epoch * spe + st.batch_in_epoch}")

    def _load_data(self) -> tuple[np.ndarray, np.ndarray]:
        st, cfg, args = self.state, self.model.cfg, self.args
        splits = []
        for split, name in (("train", "training"), ("test", "test")):
            x, y = data.load_split(st.dataset, split, data_dir=args.data, progress=not args.no_progress)
            if x.shape[1:] != (cfg.image_size, cfg.image_size):
                raise ValueError(f"the {name} images are {x.shape[1]}x{x.shape[2]} but the model "
                                 f"expects image_size={cfg.image_size}")
            splits.append(data.to_tokens(x, y))
        return splits[0], splits[1]

    def _set_limits(self) -> None:
        st = self.state
        if st.batch_size % self.world.size:
            raise ValueError(f"--batch-size {st.batch_size} (the global batch) must be divisible by "
                             f"the {self.world.size} ranks")
        self.steps_per_epoch = len(self.train) // st.batch_size
        if self.steps_per_epoch < 1:
            raise ValueError(f"batch size {st.batch_size} exceeds the {len(self.train)} training images")
        self.model.prepare(st.batch_size // self.world.size)  # a batch too large: an error now
        limits = [st.steps] if st.steps else []
        if st.epochs:
            limits.append(max(1, round(st.epochs * self.steps_per_epoch)))
        self.total_steps = min(limits) if limits else None
        self.budget = st.minutes * 60 if st.minutes else None

    # -- the loop --

    def run(self) -> int:
        """Train until a limit; 0 when finished, 1 on a failure, 130/143 on SIGINT/SIGTERM."""
        args, st = self.args, self.state
        self.bar = Progress(self.total_steps, "train", "step", enabled=not args.no_progress and self.root)
        self.bar.n = st.step
        halt_at = st.step + args.halt_after if args.halt_after else None
        self._t_last = time.perf_counter()
        try:
            with self._signals():
                try:
                    while self.progress_frac() < 1.0:
                        if halt_at is not None and st.step >= halt_at:
                            raise Stop("halt-after")
                        rec, stop_requested = self.step()
                        self.after_step(rec, stop_requested)
                except Diverged as err:
                    return self._diverged(err)
                except Stop as why:
                    return self._stopped(why)
            return self._finish()
        finally:  # however the run ends, the folder is free again
            self.close()

    def step(self) -> tuple[dict, bool]:
        """One optimizer step on the next global batch, all ranks together. Returns the
        step's metrics record and whether a stop was requested (on any rank)."""
        st, model = self.state, self.model
        lr = lr_at(st.step, self.progress_frac(), st.lr, st.min_lr, st.warmup, st.schedule, st.cooldown)
        muon_lr = st.muon_lr * lr / st.lr if st.optimizer == "muon" else None  # the same schedule
        tokens = self.batch()
        t0 = time.perf_counter()
        try:
            loss = model.forward_backward(tokens)
            now = time.perf_counter()
            # One Allreduce for the gradients (the mean over the global batch), one tiny
            # one for what every rank must agree on: the loss, a stop request, and the
            # clock that drives a --minutes schedule.
            shared = np.array([loss, float(self.stop_signal is not None), st.elapsed + (now - self._t_last)])
            t_reduce = time.perf_counter()
            if self.world.size > 1:
                self.world.allreduce_sum_(model.grad_arena)
                model.grad_arena *= 1.0 / self.world.size
                self.world.allreduce_sum_(shared)
                shared /= self.world.size
            t_reduce = time.perf_counter() - t_reduce
            loss = float(shared[0])
            if not math.isfinite(loss):
                raise FloatingPointError(f"non-finite loss ({loss})")
            self._remember_weights()
            model.apply_gradients(lr=lr, weight_decay=st.weight_decay, clip=st.clip or None, muon_lr=muon_lr)
            if not np.isfinite(model.params).all():
                self._restore_weights()
                raise FloatingPointError(f"the update at lr {lr:.3g} made weights non-finite")
        except FloatingPointError as err:
            raise Diverged(str(err)) from None
        st.elapsed = float(shared[2])
        self._t_last = now
        st.step += 1
        st.batch_in_epoch += 1
        st.tokens += tokens.size * self.world.size
        T = model.cfg.seq_len
        rec = {"step": st.step, "epoch": st.epoch, "loss": loss, "bits": loss * (T - 1) / (T * math.log(2)),
               "lr": lr, "grad_norm": model.last_grad_norm,
               "tokens_per_s": tokens.size * self.world.size / (now - t0),
               "step_s": time.perf_counter() - t0, "allreduce_s": t_reduce, "time": st.elapsed}
        return rec, shared[1] > 0

    def after_step(self, rec: dict, stop_requested: bool) -> None:
        """Log the step; evaluate and sample, checkpoint, when due; stop if asked."""
        st, args = self.state, self.args
        self.log_step(rec)
        end_of_epoch = st.batch_in_epoch >= self.steps_per_epoch
        if st.step % args.eval_every == 0 or end_of_epoch:
            # (evaluation time counts against a --minutes budget: it is wall clock)
            self.last_test = self.evaluate_and_sample(f"step-{st.step:06d}")
        if st.step % args.checkpoint_every == 0:
            self.save()
        if stop_requested:  # a signal reached some rank: all stop at this same step
            raise Stop(self.stop_signal or "signal on another rank")

    def log_step(self, rec: dict) -> None:
        """The metrics line, the smoothed curve, the progress bar."""
        st = self.state
        self.ema = rec["bits"] if self.ema is None else 0.95 * self.ema + 0.05 * rec["bits"]
        if self.root:
            self.runlog.write(rec)
            if st.step % 10 == 0:
                self.runlog.add("train", st.step, self.ema)
        post = {"bits": f"{self.ema:.3f}", "tok/s": f"{rec['tokens_per_s']:,.0f}", "lr": f"{rec['lr']:.2g}"}
        if self.last_test is not None:
            post["test"] = f"{self.last_test:.3f}"
        if self.budget and not self.total_steps:
            left = max(self.budget - st.elapsed, 0)
            post["left"] = f"{int(left // 60):02d}:{int(left % 60):02d}"
        self.bar.update(1, **post)

    def _diverged(self, err: Diverged) -> int:
        st = self.state
        path = self.save()
        self.bar.close()
        where = (f"The weights before this step are saved in {path}; continue with a lower "
                 f"--lr (now {st.lr:g}) or a tighter --clip: python -m simcore.train "
                 f"--resume {path} --out {self.out} --lr {st.lr / 10:g}"
                 if path else "No checkpoint could be written.")
        self.log(f"\nerror: training diverged at step {st.step}: {err}.\n{where}")
        return 1

    def _stopped(self, why: Stop) -> int:
        path = self.save()
        self.bar.close()
        if path:
            self.log(f"stopped ({why}) at step {self.state.step}; checkpoint {path}\n"
                     f"continue with: python -m simcore.train --resume {path} --out {self.out}")
        code = 143 if str(why) == "SIGTERM" else 130 if str(why) == "SIGINT" else 0
        return code if path else 1

    def _finish(self) -> int:
        self.bar.close()
        path = self.save()
        if not path:
            return 1
        self.log(f"finished {self.state.step} steps in {self.state.elapsed / 60:.1f} min; checkpoint {path}")
        self.final_eval()
        return 0

    # -- pieces --

    def progress_frac(self) -> float:
        st = self.state
        fracs = []
        if self.total_steps:
            fracs.append(st.step / self.total_steps)
        if self.budget:
            fracs.append(st.elapsed / self.budget)
        return max(fracs)

    def batch(self) -> np.ndarray:
        """This rank's part of the next global batch (a new epoch starts when one ends)."""
        st = self.state
        if st.batch_in_epoch >= self.steps_per_epoch:
            st.epoch += 1
            st.batch_in_epoch = 0
        order = self._order(st.epoch)
        i = st.batch_in_epoch * st.batch_size
        mine = self.world.shard(st.batch_size)
        tokens = self.train[order[i + mine.start:i + mine.stop]]  # a copy
        if st.label_dropout:  # the same draws on every rank and on resuming
            dropped = np.random.default_rng([st.seed, st.epoch, st.batch_in_epoch]).random(st.batch_size)
            tokens[dropped[mine] < st.label_dropout, 0] = self.model.cfg.n_classes
        return tokens

    def _order(self, epoch: int) -> np.ndarray:
        if getattr(self, "_order_epoch", None) != epoch:
            self._order_cache = epoch_order(self.state.seed, epoch, len(self.train))
            self._order_epoch = epoch
        return self._order_cache

    def save(self) -> str | None:
        """Write this step's checkpoint (rank 0); the path, or None if the write failed
        (the error is printed; the run goes on, and the previous checkpoints stay)."""
        path = os.path.join(self.out, f"step-{self.state.step:06d}.safetensors")
        if not self.root:
            return path
        try:
            simcore.save(path, self.model, optimizer=True, train_state=self.state.to_dict())
        except OSError as err:
            self.log(f"\nerror: could not write checkpoint {path}: {err.strerror or err}"
                     + (f"; the last one written is {checkpoints(self.out)[-1]}" if checkpoints(self.out) else ""))
            return None
        for old in checkpoints(self.out)[:-self.args.keep]:
            try:
                os.remove(old)
            except OSError:
                pass
        return path

    def evaluate(self, tokens: np.ndarray, progress: bool = False) -> dict:
        """bits/dim of tokens, overall and per class; each rank does a shard."""
        n_cls, T = self.model.cfg.n_classes, tokens.shape[1]
        mine = tokens[self.world.shard(len(tokens))]
        sums = np.zeros(2 * n_cls)  # nats per class, then images per class
        if len(mine):
            res = evaluate(self.model, mine, batch_size=64, progress=progress and self.root, desc="test")
            for c in res["per_class"]:
                sums[c] = res["per_class_nats"][c]
                sums[n_cls + c] = res["per_class_images"][c]
        self.world.allreduce_sum_(sums)
        nats, counts = sums[:n_cls], sums[n_cls:]
        per_class = {c: bits_per_dim(nats[c], int(counts[c]), T) for c in range(n_cls) if counts[c]}
        return {"bits_per_dim": bits_per_dim(nats.sum(), int(counts.sum()), T),
                "n_images": int(counts.sum()), "per_class": per_class}

    def evaluate_and_sample(self, tag: str) -> float:
        """bits/dim on the held-out subset, a sample grid, the curve redrawn."""
        st = self.state
        res = self.evaluate(self.eval_tokens)
        bits = res["bits_per_dim"]
        if not self.root:
            return bits
        n = self.args.samples_per_class
        classes = range(self.model.cfg.n_classes)
        imgs = self.model.generate(np.repeat(list(classes), n), temperature=self.args.temperature,
                                   seed=st.seed + st.step)
        images.save_grid(os.path.join(self.out, f"samples-{tag}.png"), imgs, rows=len(classes), cols=n)
        self.runlog.write({"step": st.step, "epoch": st.epoch, "test_bits": bits, "eval_images": res["n_images"]})
        self.runlog.add("test", st.step, bits)
        self.runlog.draw()
        return bits

    def _remember_weights(self) -> None:
        m = self.model
        if self._before is None:
            self._before = (np.empty_like(m.params), np.empty_like(m.moment1), np.empty_like(m.moment2), [0])
        p, mm, v, step = self._before
        np.copyto(p, m.params)
        np.copyto(mm, m.moment1)
        np.copyto(v, m.moment2)
        step[0] = m.opt_step

    def _restore_weights(self) -> None:
        p, mm, v, step = self._before
        m = self.model
        np.copyto(m.params, p)
        np.copyto(m.moment1, mm)
        np.copyto(m.moment2, v)
        m.opt_step = step[0]

    def final_eval_size(self) -> int:
        """Test images in the final evaluation: --final-eval; else all of them for a run of
        the default budget or longer (the figure the README quotes, whatever the
        machine's speed); else proportionate to the run (one test image per training
        image, whose forward pass costs about a third of a training image's), so a
        3-step run does not spend minutes on all."""
        st = self.state
        if self.args.final_eval:
            return min(self.args.final_eval, len(self.test))
        if st.minutes and st.minutes >= DEFAULT_MINUTES and not (st.steps or st.epochs):
            return len(self.test)
        trained = st.step * st.batch_size
        return min(len(self.test), max(self.args.eval_subset, trained))

    def final_eval(self) -> None:
        n = self.final_eval_size()
        tokens = self.test[:n]
        if self.root and n < len(self.test):
            self.log(f"final evaluation on the first {n} of {len(self.test)} test images "
                     f"(proportionate to this run; --final-eval N sets it)")
        res = self.evaluate(tokens, progress=not self.args.no_progress)
        self.evaluate_and_sample("final")
        if not self.root:
            return
        rec = {"step": self.state.step, "final_test_bits": res["bits_per_dim"],
               "final_eval_images": res["n_images"], "per_class": res["per_class"],
               "precision": self.model.precision}
        self.runlog.write(rec)
        final = os.path.join(self.out, "final.json")
        try:
            write_atomic(final, json.dumps(rec, indent=1).encode())
        except OSError as err:
            self.log(f"error: could not write {final}: {err}")
        self.log(f"test bits/dim {res['bits_per_dim']:.4f} over {res['n_images']} of "
                 f"{len(self.test)} test images "
                 f"(samples: {os.path.join(self.out, 'samples-final.png')})")

    @contextlib.contextmanager
    def _signals(self):
        """SIGINT and SIGTERM ask the run to stop at the end of the step (and save)."""
        def handler(signum, frame):
            self.stop_signal = signal.Signals(signum).name
        old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, h in old.items():
                signal.signal(s, h)


def _terminate(signum, frame):
    raise SystemExit(128 + signum)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    # SIGTERM outside the steps (setting up, the final evaluation) ends the process the way
    # an error does, through every `finally`, so that the run folder is let go; within the
    # steps, the run's own handler stops it at the end of a step, with a checkpoint.
    sigterm = signal.signal(signal.SIGTERM, _terminate)
    try:
        return _main(args)
    except KeyboardInterrupt:
        print("error: interrupted (Ctrl-C)", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, sigterm)


def _main(args) -> int:
    try:
        world = World(use_mpi=True if args.distributed else None)
    except ImportError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        simcore.check_environment()
        check_args(args)
        trainer = Trainer(args, world)
    except (ValueError, TypeError, OSError, MemoryError, DataError, CheckpointError) as err:
        if world.size > 1:  # every rank fails the same way; one message is enough
            world.barrier()
            if not world.is_root:
                return 2
        print(f"error: {err}", file=sys.stderr)
        return 2
    if world.size == 1:
        return trainer.run()
    try:
        return trainer.run()
    except Exception as err:  # one rank failing must take the whole job down, promptly
        world.abort(f"{type(err).__name__}: {err}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
