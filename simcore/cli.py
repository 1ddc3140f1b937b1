"""What the command lines (train, generate, evaluate) share: the parser (its help format,
its one-line errors), and the choice of a model by --checkpoint or --pretrained."""
from __future__ import annotations

import argparse

from simcore import checkpoint, pretrained


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser, whose error is one line (what is wrong, and where the flags are
    listed) instead of the whole usage, 9 to 25 lines that bury it; exit status 2 as before."""

    def error(self, message):
        self.exit(2, f"error: {message} (`{self.prog} --help` lists the flags)\n")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Help that names each option's default, except where there is none to name
    (None or False: the option is off, or its default is worked out and given in the help)."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def add_model_choice(parser: argparse.ArgumentParser) -> None:
    """--checkpoint PATH | --pretrained, exactly one of them."""
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--checkpoint",
                       help="a .safetensors checkpoint written by simcore.train, or a run's folder (its newest)")
    which.add_argument("--pretrained", action="store_true",
                       help="the model shipped in the package (trained on MNIST; see simcore/pretrained.py)")


def chosen_model(args):
    """The model add_model_choice's flags name, without optimizer state."""
    if args.pretrained:
        return pretrained.load()
    return checkpoint.load(checkpoint.resolve(args.checkpoint), optimizer=False)[0]
