"""Options declared once.

Each option (a `Config` field, a `TrainState` field, a flag of one training run, one of
SIM's optimizer arguments) is an `Option`: its type, its bounds or choices, its default,
its help, the group of its command-line flag, and whether a resumed run may change it.
Everything else derives from that declaration: `check`, the one checker that `Config`,
`TrainState`, `simcore.train`'s command line and `SIM.apply_gradients` call, and
`add_flag`, which makes its argparse flag (scikit-learn's `_parameter_constraints` are
the model). A dataclass declares its fields with `option(...)`, which keeps the Option
in the field's metadata (`options_of` reads them back).
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import numbers
from dataclasses import dataclass, field

_KINDS = {int: "an integer", float: "a finite number", str: "a string", bool: "True or False"}


class BadType(TypeError, ValueError):
    """A value of the wrong type: a TypeError, and a ValueError too, so that callers
    which promise ValueError for any bad value (a checkpoint's training state, SIM's
    optimizer arguments) need no second except clause."""


@dataclass(frozen=True)
class Option:
    """One option: what values it takes, its default and help, its flag, and what a
    resumed run does with it."""

    kind: type                    # int, float, str or bool (float also takes ints)
    default: object = None
    help: str = ""
    bounds: str = ""              # numbers: the interval allowed, "[1, inf)", "(0, 1]"
    choices: tuple = ()           # strings: the values allowed
    none: bool = False            # None is allowed too (for instance: no such limit)
    flag: str = ""                # the command-line group of its flag ("": no flag)
    # Why a resumed run cannot change it; "" if it can (a value given with --resume then
    # replaces the run's own, and the run says so).
    fixed: str = ""
    added_later: bool = False     # a checkpoint's state may lack it: it ran with the default
    _interval: tuple = field(default=(), init=False, repr=False, compare=False)

    def __post_init__(self):
        if self.kind not in _KINDS:
            raise TypeError(f"an option's kind is one of {[k.__name__ for k in _KINDS]}, got {self.kind!r}")
        if self.bounds:  # "[lo, hi)": the brackets say whether each end is allowed
            lo, hi = (s.strip() for s in self.bounds[1:-1].split(","))
            closed = (self.bounds[0] == "[", self.bounds[-1] == "]")
            if self.bounds[0] not in "([" or self.bounds[-1] not in ")]" or self.kind not in (int, float):
                raise ValueError(f"bad bounds {self.bounds!r}: an interval such as '[0, 1)', for a number")
            object.__setattr__(self, "_interval", (float(lo), float(hi)) + closed)
        if self.default is not None:
            check("the default", self.default, self)

    @property
    def want(self) -> str:
        """What a good value is, in words: 'an integer >= 1', 'a fraction in (0, 1]'."""
        if self.choices:
            words = [str(c) for c in self.choices]
            text = words[0] if len(words) == 1 else ", ".join(words[:-1]) + " or " + words[-1]
        elif self._interval:
            lo, hi, lo_in, hi_in = self._interval
            kind = _KINDS[self.kind]
            if math.isinf(hi):
                text = f"{kind} {'>=' if lo_in else '>'} {lo:g}"
            else:
                kind = "a fraction" if (lo, hi) == (0, 1) else "an integer" if self.kind is int else "a number"
                text = f"{kind} in {self.bounds}"
        else:
            text = _KINDS[self.kind]
        return text + (" or null" if self.none else "")


def _of_kind(value, opt: Option) -> bool:
    if value is None:
        return opt.none
    if opt.kind is float:
        return isinstance(value, numbers.Real) and not isinstance(value, bool)
    if opt.kind is int:  # a Python int: it must go into JSON as it is
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, opt.kind)


def _within(value, opt: Option) -> bool:
    if value is None:
        return True
    if opt.kind is float and not math.isfinite(value):
        return False
    if opt.choices and value not in opt.choices:
        return False
    if opt._interval:
        lo, hi, lo_in, hi_in = opt._interval
        return (lo < value or (lo_in and lo == value)) and (value < hi or (hi_in and value == hi))
    return True


def check(name: str, value, opt: Option):
    """value, if opt allows it; else BadType (a TypeError) for a value of the wrong type,
    ValueError for one out of bounds or choices, either saying
    '<name> must be <what opt allows>, got <value>'."""
    if not _of_kind(value, opt):
        raise BadType(f"{name} must be {opt.want}, got {value!r}")
    if not _within(value, opt):
        raise ValueError(f"{name} must be {opt.want}, got {value!r}")
    return value


def option(default=None, help: str = "", *, kind: type | None = None, **declared):
    """A dataclass field declared as an Option (the kind is the default's type unless
    given: a field whose default is None names it)."""
    opt = Option(kind or type(default), default, help, **declared)
    return dataclasses.field(default=default, metadata={"option": opt})


def options_of(cls) -> dict[str, Option]:
    """The Options of a dataclass's fields, by name, in the order declared."""
    return {f.name: f.metadata["option"] for f in dataclasses.fields(cls)}


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def spelled(name: str, value) -> str:
    """The flag that gives name this value: '--d-model 64', '--no-pixel-above'."""
    if isinstance(value, bool):
        return flag_name(name) if value else "--no-" + name.replace("_", "-")
    return f"{flag_name(name)} {value:g}" if isinstance(value, float) else f"{flag_name(name)} {value}"


def add_flag(group, name: str, opt: Option, *, default=None, help: str | None = None) -> None:
    """opt's flag (--name-with-dashes) in an argparse group. A bool whose flag defaults to
    None is tri-state (--x / --no-x / not given); one defaulting to False is a switch."""
    kw = {"default": default, "help": opt.help if help is None else help}
    if opt.kind is bool:
        kw["action"] = "store_true" if default is False else argparse.BooleanOptionalAction
    else:
        kw["type"] = opt.kind
        if opt.choices:
            kw["choices"] = list(opt.choices)
    group.add_argument(flag_name(name), **kw)
