"""Model configuration: a checked dataclass and the named presets."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields

from simcore.options import check, option, options_of

VOCAB = 256  # pixel intensities 0..255; also the number of output logits

PRESETS = {
    # The original C program's configuration: wide, deep, one head, no norm.
    "original": dict(d_model=512, d_hidden=2048, n_layers=12, n_heads=1,
                     norm="none", head="mlp"),
    # The first default, sized for a laptop CPU (kept as it was: results refer to it).
    "small": dict(d_model=128, d_hidden=512, n_layers=4, n_heads=4,
                  norm="rmsnorm", head="linear"),
    # small's sizes plus the embedding of the pixel above, trained with Muon and a
    # warmup-stable-decay schedule (simcore.train's recipe for it), for the most
    # quality in a 15-minute CPU budget (benchmarks/results/*/ablation-*.md).
    "sprint": dict(d_model=128, d_hidden=512, n_layers=4, n_heads=4,
                   norm="rmsnorm", head="linear", pixel_above=True),
    # The default: sprint plus the class at every position and a null class, trained
    # with label dropout (simcore.train's recipe for it), so that samples can be
    # guided towards the asked class (SIM.generate's guidance).
    "guided": dict(d_model=128, d_hidden=512, n_layers=4, n_heads=4, norm="rmsnorm", head="linear",
                   pixel_above=True, class_everywhere=True, null_class=True),
}
DEFAULT_PRESET = "guided"


def _model(default, help: str, **declared):
    """A model option: a flag of simcore.train's (unless flag=""), and fixed for a run, since
    a resumed run's checkpoint holds that model's weights (--resume refuses a change)."""
    return option(default, help, **{"flag": "model", "fixed": "the checkpoint holds weights of the run's model",
                                    **declared})


_SIZE = "[1, inf)"


@dataclass(frozen=True)
class Config:
    """Sizes and options of the pixel transformer, each declared once (simcore.options):
    checked on creation, and simcore.train's model flags are made from them."""

    d_model: int = _model(128, "width of the residual stream", bounds=_SIZE)
    d_hidden: int = _model(512, "width of the MLP's hidden layer", bounds=_SIZE)
    n_layers: int = _model(4, "transformer blocks", bounds=_SIZE)
    n_heads: int = _model(4, "attention heads; they divide d_model", bounds=_SIZE)
    norm: str = _model("rmsnorm", "the blocks' normalisation", choices=("rmsnorm", "none"))
    head: str = _model("linear", "the output head: one matrix, or an MLP", choices=("linear", "mlp"))
    # (no flags: the data set fixes these)
    image_size: int = _model(28, "images are image_size x image_size", bounds=_SIZE, flag="")
    n_classes: int = _model(10, "class labels 0..n_classes-1 go in pixel 0", bounds=_SIZE, flag="")
    # A second 256 x d_model table, "above_embedding", added to the input; nothing is
    # added in the first row.
    pixel_above: bool = _model(False, "an embedding of the pixel above the predicted one")
    # A table of n_labels rows, "class_embedding", added at every position, so each pixel
    # sees the label directly rather than only through attention to pixel 0.
    class_everywhere: bool = _model(False, "an embedding of the class added at every position")
    # One more label, token n_classes (and one more row of class_embedding). Training puts
    # it in place of a share of the labels (the recipe's label_dropout), so the model also
    # learns digits of any class, and sampling can then steer away from that towards the
    # asked class (classifier-free guidance: SIM.generate's guidance).
    null_class: bool = _model(False, "a label meaning 'no class', for --label-dropout and guidance")

    def __post_init__(self):
        for name, opt in options_of(self).items():
            check(f"Config.{name}", getattr(self, name), opt)
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}")
        if self.d_model % 4:
            raise ValueError(f"d_model={self.d_model} must be a multiple of 4 "
                             "(row and column each take sin/cos pairs)")
        if self.n_labels > VOCAB:
            raise ValueError(f"n_classes={self.n_classes}" + (" plus the null class" if self.null_class else "")
                             + f" exceeds the {VOCAB} token values")

    @property
    def n_labels(self) -> int:
        """The values pixel 0 may hold: the classes, then the null class if there is one."""
        return self.n_classes + self.null_class

    @property
    def seq_len(self) -> int:
        return self.image_size * self.image_size

    @property
    def d_head(self) -> int:
        return self.d_model // self.n_heads

    @classmethod
    def preset(cls, name: str, **overrides) -> "Config":
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}")
        return cls(**PRESETS[name]).replace(**overrides)

    def replace(self, **overrides) -> "Config":
        """A copy with some fields changed; unknown names are an error."""
        known = {f.name for f in fields(self)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise TypeError(f"unknown Config field(s) {unknown}; known: {sorted(known)}")
        return dataclasses.replace(self, **overrides)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Config":
        return cls().replace(**d)
