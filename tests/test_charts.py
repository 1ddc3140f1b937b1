"""Spec for benchmarks/charts.py: the benchmarks' bar-chart PNGs, in simcore.images' palette."""
import os
import sys

import numpy as np
import pytest
from PIL import Image

from simcore import images

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
import charts  # noqa: E402


def opened(path):
    with Image.open(path) as im:
        im.load()
        return im.format, im.mode, im.size, np.asarray(im)


def coloured_pixels(path, colour):
    """How many pixels of the PNG have exactly this "#rrggbb" colour."""
    rgb = np.array([int(colour[i:i + 2], 16) for i in (1, 3, 5)], np.uint8)
    return int((opened(path)[3] == rgb).all(axis=-1).sum())


def two_groups():
    """Two groups of two series, with whiskers on the first series."""
    return [("small, 1 thr", [("simcore", 9161.0, 8900.0, 9400.0), ("torch", 7058.0, None, None)]),
            ("small, 2 thr", [("simcore", 17979.0, 17500.0, 18100.0), ("torch", 12870.0, None, None)])]


def test_bar_chart_writes_a_png_as_wide_as_documented_and_returns_its_path(tmp_path):
    path = tmp_path / "chart.png"
    out = charts.bar_chart(path, "Training step throughput", two_groups(), "tokens / s")
    assert out == path
    fmt, mode, size, _ = opened(path)
    assert (fmt, mode) == ("PNG", "RGB")
    assert size[0] == charts.CHART_WIDTH
    assert os.listdir(tmp_path) == ["chart.png"]


def test_bar_chart_height_grows_by_bar_and_group_sizes(tmp_path):
    one, two = tmp_path / "one.png", tmp_path / "two.png"
    groups = two_groups()
    charts.bar_chart(one, "t", groups[:1], "u")
    extra = ("small, 4 thr", [("simcore", 30000.0, None, None), ("torch", 20000.0, None, None),
                              ("simcore", 31000.0, None, None)])
    charts.bar_chart(two, "t", groups[:1] + [extra], "u")
    assert opened(two)[2][1] - opened(one)[2][1] == 3 * charts.BAR_H + charts.GROUP_GAP


def test_bar_chart_draws_each_series_in_its_palette_colour(tmp_path):
    path = tmp_path / "chart.png"
    charts.bar_chart(path, "t", two_groups(), "tokens / s")
    first, second = images.COLOURS[0], images.COLOURS[1]
    # Each bar is hundreds of pixels long; the legend swatches alone are a few hundred pixels.
    assert coloured_pixels(path, first) > 2000
    assert coloured_pixels(path, second) > 2000
    assert coloured_pixels(path, images.COLOURS[2]) == 0


def test_bar_chart_writes_none_as_n_a_without_a_bar(tmp_path):
    with_bar, without = tmp_path / "bar.png", tmp_path / "none.png"
    charts.bar_chart(with_bar, "t", [("g", [("s", 5.0, None, None)])], "u")
    charts.bar_chart(without, "t", [("g", [("s", None, None, None)])], "u")
    colour = images.COLOURS[0]
    assert coloured_pixels(without, colour) < 300  # the legend swatch only
    assert coloured_pixels(with_bar, colour) > coloured_pixels(without, colour) + 1000


def test_bar_chart_on_a_log_scale_spans_decades(tmp_path):
    path = tmp_path / "chart.png"
    groups = [("10 images", [("cached", 26.2, 25.0, 27.0), ("original", 0.197, None, None)]),
              ("100 images", [("cached", 16.9, None, None)])]
    charts.bar_chart(path, "Sampling speed", groups, "images / s", log=True, note="extrapolated")
    assert opened(path)[2][0] == charts.CHART_WIDTH
    assert coloured_pixels(path, images.COLOURS[0]) > 1000


def test_bar_chart_accepts_numpy_numbers_and_zero_on_a_linear_scale(tmp_path):
    path = tmp_path / "chart.png"
    charts.bar_chart(path, "t", [("g", [("a", np.float32(2.5), np.float64(2.0), 3),
                                        ("b", 0, None, None)])], "u")
    assert opened(path)[0] == "PNG"


@pytest.mark.parametrize("groups, log, match", [
    ([], False, "empty"),
    ([("g", [])], False, "no bars"),
    ([("g", [("s", 0.0, None, None)])], True, "positive"),
    ([("g", [("s", -1.0, None, None)])], False, ">= 0"),
    ([("g", [("s", 5.0, -1.0, 6.0)])], False, "lo"),
    ([("g", [("s", float("nan"), None, None)])], False, "finite"),
    ([("g", [("s", float("inf"), None, None)])], True, "finite"),
    ([("g", [("s", 5.0, 4.0, None)])], False, "both ends"),
    ([("g", [("s", 5.0, 6.0, 4.0)])], False, "lo"),
], ids=["no-groups", "no-bars", "zero-on-log", "negative", "negative-whisker", "nan", "inf",
        "one-ended-whisker", "whisker-reversed"])
def test_bar_chart_rejects_values_it_cannot_draw_with_value_error(tmp_path, groups, log, match):
    with pytest.raises(ValueError, match=match):
        charts.bar_chart(tmp_path / "chart.png", "t", groups, "u", log=log)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("groups", [
    {"g": [("s", 1.0, None, None)]},          # a dict, not a list of pairs
    [("g",)],                                 # not a pair
    [(1, [("s", 1.0, None, None)])],          # group label not a str
    [("g", [("s", 1.0)])],                    # a bar is (series, value, lo, hi)
    [("g", [(2, 1.0, None, None)])],          # series label not a str
    [("g", [("s", "1.0", None, None)])],      # value not a number
    [("g", [("s", True, None, None)])],
], ids=["dict", "single", "int-label", "short-bar", "int-series", "str-value", "bool-value"])
def test_bar_chart_rejects_malformed_groups_with_type_error(tmp_path, groups):
    with pytest.raises(TypeError):
        charts.bar_chart(tmp_path / "chart.png", "t", groups, "u")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("lo, hi", [(0.197, 26.2), (3.0, 3.0), (1e-5, 2e6)])
def test_log_ticks_are_powers_of_ten_covering_the_data(lo, hi):
    ticks, (a, b) = charts._log_ticks(np.array([lo, hi]))
    assert a <= lo and b >= hi and len(ticks) >= 2
    assert np.allclose(np.log10(ticks), np.round(np.log10(ticks)))
    assert np.allclose(np.diff(np.log10(ticks)), 1)
    labels = charts._log_tick_labels(ticks)
    assert len(set(labels)) == len(ticks)
