"""The pretrained model that ships inside the package: draw digits with no training and no
network.

    model = simcore.SIM.pretrained()
    digits = model.generate(range(10), temperature=1.0, seed=0)   # uint8 [10, 28, 28]

    python -m simcore.generate --pretrained --classes 0-9 --out digits.png

The file is ``simcore/pretrained-mnist-guided.safetensors``: an ordinary simcore checkpoint
(weights only, no optimizer moments) of the default preset, trained on MNIST by
``python -m simcore.train`` itself. Its training state says how (seed, recipe, steps,
minutes) and its ``provenance`` entry adds what it scored and the command that made it;
``benchmarks/make_pretrained.py`` writes it from a finished run.
"""
from __future__ import annotations

import json
import os

from simcore import checkpoint

FILE = "pretrained-mnist-guided.safetensors"  # beside this module (a folder would shadow it)


def path() -> str:
    """Where the shipped checkpoint lies (inside the installed package)."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), FILE)


def load():
    """The model shipped inside the package (the default preset trained on MNIST by
    ``python -m simcore.train``; this module says how): a new SIM that draws digits at once,
    with no training and no network. Each call reads the file afresh. Also ``SIM.pretrained()``."""
    p = path()
    if not os.path.isfile(p):
        raise FileNotFoundError(2, "the pretrained model is missing from this simcore install "
                                   "(reinstall with `pip install .` from a complete clone)", p)
    return checkpoint.load(p, optimizer=False)[0]


def info() -> dict:
    """How the pretrained model was made and what it scored: its training state (seed,
    recipe, steps, elapsed seconds) with ``provenance`` (command, test bits/dim, CPU)."""
    return json.loads(checkpoint.read_metadata(path()).get("train_state", "{}"))
