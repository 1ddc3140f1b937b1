"""Model configuration: a checked dataclass and the named presets."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields

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


@dataclass(frozen=True)
class Config:
    """Sizes of the pixel transformer. Every field is checked on creation."""

    d_model: int = 128
    d_hidden: int = 512
    n_layers: int = 4
    n_heads: int = 4
    norm: str = "rmsnorm"      # "rmsnorm" | "none"
    head: str = "linear"       # "linear" | "mlp"
    image_size: int = 28       # images are image_size x image_size
    n_classes: int = 10        # class labels 0..n_classes-1 go in pixel 0
    # An embedding of the pixel directly above the one each position predicts (a
    # second 256 x d_model table, "above_embedding", added to the input; nothing
    # is added in the first row).
    pixel_above: bool = False
    # An embedding of the image's class (a table of n_classes rows, "class_embedding")
    # added at every position, so each pixel sees the label directly rather than only
    # through attention to pixel 0.
    class_everywhere: bool = False
    # One more label, token n_classes, meaning "no class" (and one more row of
    # class_embedding). Training puts it in place of a share of the labels (the
    # recipe's label_dropout), so the model also learns digits of any class, and
    # sampling can then steer away from that towards the asked class (classifier-free
    # guidance: SIM.generate's guidance).
    null_class: bool = False

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            want = {"int": int, "str": str, "bool": bool}[f.type if isinstance(f.type, str) else f.type.__name__]
            if not isinstance(value, want) or (want is int and isinstance(value, bool)):
                raise TypeError(f"Config.{f.name} must be {want.__name__}, got {value!r}")
            if want is int and value < 1:
                raise ValueError(f"Config.{f.name} must be >= 1, got {value}")
        if self.norm not in ("rmsnorm", "none"):
            raise ValueError(f"Config.norm must be 'rmsnorm' or 'none', got {self.norm!r}")
        if self.head not in ("linear", "mlp"):
            raise ValueError(f"Config.head must be 'linear' or 'mlp', got {self.head!r}")
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
