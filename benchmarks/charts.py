"""The benchmarks' bar charts, as PNG: horizontal grouped bars with whiskers, drawn with
Pillow in the palette, font and ticks of the pictures simcore itself writes (simcore/images.py).

    bar_chart("speed.png", "Sampling speed", [("10 images", [("simcore", 41.0, 39.5, 42.2)])],
              "images / s")

Written through a temp file and ``os.replace``, like every picture of simcore's.
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import paths  # noqa: F401  (before simcore: the checkout when simcore is not installed)
from PIL import Image, ImageDraw

from simcore.images import COLOURS, _font, _save_png, _text_size, _tick_labels, _ticks

BAR_H, GROUP_GAP, CHART_WIDTH = 18, 14, 1000  # pixels: one bar, between groups, the image


def bar_chart(path, title: str, groups, unit: str, log: bool = False,
              note: str | None = None) -> Path:
    """A horizontal grouped bar chart, written to ``path`` as a PNG atomically; returns
    ``path`` as a Path.

    ``groups`` is ``[(group label, [(series label, value, lo, hi), ...]), ...]``: one block
    of bars per group, the bars of one series in one colour (legend on top). A value of
    None is written "n/a"; ``lo``..``hi`` (both or neither; None for none) is drawn as a
    whisker, e.g. the IQR. The value axis starts at 0, or with ``log=True`` spans whole
    decades, for values spanning decades (e.g. the original sampler against the cached
    one). The image is CHART_WIDTH pixels wide; each bar adds BAR_H pixels to its height,
    each group GROUP_GAP more.

    Raises TypeError for labels that are not str or values that are not numbers, and
    ValueError for no groups, a group without bars, a value or whisker end that is not
    finite, negative or (``log=True``) zero, a whisker given by one end or with lo > hi.
    """
    groups = _check_groups(groups, log)
    for name, text in (("title", title), ("unit", unit)):
        if not isinstance(text, str):
            raise TypeError(f"{name} must be a str, got {type(text).__name__}")
    if note is not None and not isinstance(note, str):
        raise TypeError(f"note must be a str or None, got {type(note).__name__}")

    font, big = _font(13), _font(16)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    text_w = lambda s: _text_size(probe, s, font)[0]  # noqa: E731
    series = list(dict.fromkeys(s for _, bars in groups for s, *_ in bars))
    colour = {s: COLOURS[i % len(COLOURS)] for i, s in enumerate(series)}
    values = [x for _, bars in groups for _, v, lo, hi in bars for x in (v, lo, hi) if x]
    values = np.array(values or [1.0])

    width = CHART_WIDTH
    x0 = max([text_w(g) for g, _ in groups] + [60]) + 20
    x1 = width - 80
    legend_rows, x = 1, 20
    for s in series:  # wrap the legend
        w = text_w(s) + 40
        if x + w > width - 20:
            legend_rows, x = legend_rows + 1, 20
        x += w
    top = 40 + 20 * legend_rows + 10
    height = top + sum(len(b) * BAR_H + GROUP_GAP for _, b in groups) + 50 + (20 if note else 0)

    if log:
        ticks, (lo_t, hi_t) = _log_ticks(values)
        lo_dec, hi_dec = math.log10(lo_t), math.log10(hi_t)
        to_x = lambda v: x0 + (math.log10(v) - lo_dec) / (hi_dec - lo_dec) * (x1 - x0)  # noqa: E731
    else:
        ticks, (_, vmax) = _ticks(np.array([0.0, values.max()]))
        to_x = lambda v: x0 + v / vmax * (x1 - x0)  # noqa: E731

    img = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(img)
    d.text((20, 10), title, fill="black", font=big)
    x, y = 20, 40
    for s in series:
        w = text_w(s) + 40
        if x + w > width - 20:
            x, y = 20, y + 20
        d.rectangle([x, y + 2, x + 14, y + 14], fill=colour[s])
        d.text((x + 20, y), s, fill="black", font=font)
        x += w
    bottom = height - 50 - (20 if note else 0)
    for t, label in zip(ticks, _log_tick_labels(ticks) if log else _tick_labels(ticks)):
        tx = to_x(t)
        d.line([tx, top - 4, tx, bottom], fill=(225, 225, 225))
        d.text((tx - text_w(label) / 2, bottom + 4), label, fill="black", font=font)
    d.text((x0 + (x1 - x0) / 2 - text_w(unit) / 2, bottom + 22), unit, fill="black", font=font)
    d.line([x0, top - 4, x0, bottom], fill="black")

    y = top
    for label, bars in groups:
        gh = len(bars) * BAR_H
        d.text((x0 - 10 - text_w(label), y + gh / 2 - 8), label, fill="black", font=font)
        for s, v, lo, hi in bars:
            if v is None:
                d.text((x0 + 6, y + 2), f"{s}: n/a", fill=(120, 120, 120), font=font)
            else:
                d.rectangle([x0, y + 2, max(x0 + 1, to_x(v)), y + BAR_H - 2], fill=colour[s])
                if lo is not None and hi > lo:
                    ym = y + BAR_H / 2
                    d.line([to_x(lo), ym, to_x(hi), ym], fill="black", width=1)
                    for e in (lo, hi):
                        d.line([to_x(e), ym - 4, to_x(e), ym + 4], fill="black")
                d.text((max(to_x(v), to_x(hi) if hi else 0) + 6, y + 2), _value_label(v),
                       fill="black", font=font)
            y += BAR_H
        y += GROUP_GAP
    if note:
        d.text((20, height - 24), note, fill=(90, 90, 90), font=font)
    _save_png(path, img)
    return Path(path)


def _check_groups(groups, log: bool) -> list[tuple[str, list[tuple]]]:
    """[(label, [(series, value, lo, hi)])] with float numbers (or None), after checking
    the structure, the types and that every number can be drawn."""
    if isinstance(groups, (str, bytes, Mapping)) or not hasattr(groups, "__iter__"):
        raise TypeError(f"groups must be a list of (label, bars) pairs, got {type(groups).__name__}")
    groups = list(groups)
    if not groups:
        raise ValueError("groups is empty: a bar chart needs at least one group of bars")
    least = "positive (log scale)" if log else ">= 0"
    out = []
    for group in groups:
        if not isinstance(group, (tuple, list)) or len(group) != 2:
            raise TypeError(f"each group must be a pair (label, bars), got {group!r}")
        label, bars = group
        if not isinstance(label, str):
            raise TypeError(f"group labels must be str, got {label!r}")
        if isinstance(bars, (str, bytes)) or not isinstance(bars, (tuple, list)):
            raise TypeError(f"group {label!r}: bars must be a list of (series, value, lo, hi)")
        if not bars:
            raise ValueError(f"group {label!r} has no bars")
        checked = []
        for bar in bars:
            if not isinstance(bar, (tuple, list)) or len(bar) != 4:
                raise TypeError(f"group {label!r}: each bar must be (series, value, lo, hi), got {bar!r}")
            series, *nums = bar
            if not isinstance(series, str):
                raise TypeError(f"group {label!r}: series labels must be str, got {series!r}")
            for what, x in zip(("value", "lo", "hi"), nums):
                if x is None:
                    continue
                if not isinstance(x, numbers.Real) or isinstance(x, (bool, np.bool_)):
                    raise TypeError(f"group {label!r}, {series!r}: {what} must be a number or None, "
                                    f"got {x!r}")
                if not math.isfinite(x) or x < 0 or (log and x == 0):
                    raise ValueError(f"group {label!r}, {series!r}: {what} = {x!r} cannot be drawn; "
                                     f"values must be finite and {least}")
            v, lo, hi = (None if x is None else float(x) for x in nums)
            if (lo is None) != (hi is None):
                raise ValueError(f"group {label!r}, {series!r}: give both ends of a whisker (lo, hi) "
                                 "or neither")
            if lo is not None and lo > hi:
                raise ValueError(f"group {label!r}, {series!r}: whisker lo = {lo!r} > hi = {hi!r}")
            checked.append((series, v, lo, hi))
        out.append((label, checked))
    return out


def _value_label(v: float) -> str:
    """A bar's number: 3 significant digits, thousands separated (as the benchmark tables)."""
    return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.3g}"


def _log_ticks(values: np.ndarray):
    """Every power of ten from just below the smallest value to just above the largest, at
    least two (values must be positive), and the axis range they span."""
    lo_dec = math.floor(math.log10(values.min())) if values.size else 0
    hi_dec = max(math.ceil(math.log10(values.max())), lo_dec + 1) if values.size else 1
    ticks = [10.0 ** k for k in range(lo_dec, hi_dec + 1)]
    return ticks, (ticks[0], ticks[-1])


def _log_tick_labels(ticks) -> list[str]:
    """Powers of ten as whole numbers from 1 to a million, %g beyond."""
    return [f"{t:.0f}" if 1 <= t < 1e7 else f"{t:g}" for t in ticks]
