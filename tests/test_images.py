"""Spec for simcore.images: sample grids and loss-curve PNGs (Pillow only, atomic writes)."""

import os

import numpy as np
import pytest
from PIL import Image

from simcore import images


def cells(n, S=3, H=None):
    """n images of S x S (or H x S) where image k is filled with the value 10 + k."""
    H = H or S
    return (10 + np.arange(n, dtype=np.uint8))[:, None, None] * np.ones((1, H, S), np.uint8)


def opened(path):
    with Image.open(path) as im:
        im.load()
        return im.format, im.mode, im.size, np.asarray(im)


# ---- grid ----------------------------------------------------------------------------------


def test_grid_size_is_cells_plus_padding_between_them():
    im = images.grid(cells(6, S=3), rows=2, cols=3, pad=2)
    assert im.mode == "L"
    assert im.size == (3 * 3 + 2 * 2, 2 * 3 + 1 * 2)  # (width, height)


def test_grid_places_images_row_major_with_grey_padding():
    a = np.asarray(images.grid(cells(6, S=3), rows=2, cols=3, pad=2))
    for i in range(2):
        for j in range(3):
            y, x = i * 5, j * 5
            assert (a[y:y + 3, x:x + 3] == 10 + i * 3 + j).all(), (i, j)
    assert (a[3:5, :] == images.PAD_VALUE).all()        # between rows
    assert (a[:, 3:5] == images.PAD_VALUE).all()        # between columns


def test_grid_accepts_rows_cols_layout_identically():
    flat = cells(6, S=4)
    assert np.array_equal(np.asarray(images.grid(flat.reshape(2, 3, 4, 4), 2, 3)),
                          np.asarray(images.grid(flat, 2, 3)))


def test_grid_scale_upsamples_by_nearest_neighbour():
    small = np.asarray(images.grid(cells(4, S=3), 2, 2, pad=1))
    big = np.asarray(images.grid(cells(4, S=3), 2, 2, pad=1, scale=3))
    assert big.shape == (small.shape[0] * 3, small.shape[1] * 3)
    assert np.array_equal(big, small.repeat(3, axis=0).repeat(3, axis=1))


def test_grid_without_padding_is_the_tiled_images():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(2, 2, 5, 5), dtype=np.uint8)
    a = np.asarray(images.grid(x, 2, 2, pad=0))
    assert np.array_equal(a, x.transpose(0, 2, 1, 3).reshape(10, 10))


def test_grid_of_one_rectangular_image_is_that_image():
    x = np.arange(12, dtype=np.uint8).reshape(1, 3, 4)
    assert np.array_equal(np.asarray(images.grid(x, 1, 1)), x[0])


@pytest.mark.parametrize("bad", [np.zeros((6, 3, 3), np.float32), np.zeros((6, 3, 3), np.int64),
                                 np.zeros((6, 3, 3), bool), [[[0]]]],
                         ids=["float32", "int64", "bool", "list"])
def test_grid_rejects_non_uint8_images_with_type_error(bad):
    with pytest.raises(TypeError, match="images"):
        images.grid(bad, 2, 3)


@pytest.mark.parametrize("shape", [(5, 3, 3), (7, 3, 3), (3, 2, 3, 3), (6, 9), (1, 6, 3, 3),
                                   (6, 0, 3)],
                         ids=["too-few", "too-many", "rows-cols-swapped", "2-d", "5-d-ish",
                              "empty-image"])
def test_grid_rejects_wrong_shapes_with_value_error(shape):
    with pytest.raises(ValueError, match="images"):
        images.grid(np.zeros(shape, np.uint8), 2, 3)


@pytest.mark.parametrize("kwargs, error", [
    (dict(rows=0), ValueError), (dict(rows=2.0), TypeError), (dict(cols=True), TypeError),
    (dict(pad=-1), ValueError), (dict(scale=0), ValueError), (dict(scale=1.5), TypeError),
])
def test_grid_rejects_bad_sizes(kwargs, error):
    args = dict(rows=2, cols=3) | kwargs
    with pytest.raises(error):
        images.grid(cells(6), **args)


def test_grid_refuses_absurd_scale():
    with pytest.raises(ValueError, match="pixels"):
        images.grid(cells(6), 2, 3, scale=100_000)


# ---- save_grid -----------------------------------------------------------------------------


def test_save_grid_writes_a_png_of_the_scaled_grid(tmp_path):
    path = tmp_path / "samples.png"
    x = cells(6, S=28)
    images.save_grid(path, x, 2, 3)  # pad=2, scale=2 by default
    fmt, mode, size, pixels = opened(path)
    assert (fmt, mode) == ("PNG", "L")
    assert size == ((3 * 28 + 2 * 2) * 2, (2 * 28 + 2) * 2)
    assert np.array_equal(pixels, np.asarray(images.grid(x, 2, 3, pad=2, scale=2)))


def test_save_grid_leaves_no_temp_files_and_replaces_old_file(tmp_path):
    path = tmp_path / "samples.png"
    path.write_bytes(b"old")
    images.save_grid(path, cells(1), 1, 1)
    assert os.listdir(tmp_path) == ["samples.png"]
    assert opened(path)[0] == "PNG"


def test_save_grid_with_bad_images_writes_nothing(tmp_path):
    with pytest.raises(TypeError):
        images.save_grid(tmp_path / "x.png", cells(6).astype(np.float64), 2, 3)
    assert os.listdir(tmp_path) == []


# ---- save_loss_curve -----------------------------------------------------------------------


def coloured_pixels(path, colour):
    """How many pixels of the PNG have exactly this "#rrggbb" colour."""
    rgb = np.array([int(colour[i:i + 2], 16) for i in (1, 3, 5)], np.uint8)
    return int((opened(path)[3] == rgb).all(axis=-1).sum())


def test_loss_curve_png_has_requested_size(tmp_path):
    path = tmp_path / "loss.png"
    steps = np.arange(0, 1000, 10)
    images.save_loss_curve(path, {"train": (steps, 3 * np.exp(-steps / 300) + 1)},
                           title="bits/dim", width=500, height=300)
    fmt, mode, size, _ = opened(path)
    assert (fmt, mode, size) == ("PNG", "RGB", (500, 300))


def test_loss_curve_draws_each_series_in_its_own_colour(tmp_path):
    path = tmp_path / "loss.png"
    steps = np.arange(100)
    images.save_loss_curve(path, {"train": (steps, 2.0 - steps / 100),
                                  "test": (steps, steps / 100)})
    train, test = images.COLOURS[0], images.COLOURS[1]
    assert coloured_pixels(path, train) > 100
    assert coloured_pixels(path, test) > 100


def test_loss_curve_with_empty_series_draws_empty_axes(tmp_path):
    path = tmp_path / "loss.png"
    images.save_loss_curve(path, {"train": ([], []), "test": (np.array([]), np.array([]))})
    _, _, size, pixels = opened(path)
    assert size == (640, 360)
    assert (pixels == 0).all(axis=-1).any()  # black axes and tick labels are there
    # Only the legend swatches carry the series colours; no curve is drawn.
    assert coloured_pixels(path, images.COLOURS[0]) < 60


def test_loss_curve_with_no_series_at_all_draws_empty_axes(tmp_path):
    path = tmp_path / "loss.png"
    images.save_loss_curve(path, {}, title="nothing yet")
    _, _, size, pixels = opened(path)
    assert size == (640, 360) and (pixels == 0).all(axis=-1).any()


def test_loss_curve_with_one_point_draws_a_dot(tmp_path):
    path = tmp_path / "loss.png"
    images.save_loss_curve(path, {"test": ([500], [1.7])})
    swatch_only = tmp_path / "empty.png"
    images.save_loss_curve(swatch_only, {"test": ([], [])})
    colour = images.COLOURS[0]
    assert coloured_pixels(path, colour) > coloured_pixels(swatch_only, colour)


def test_loss_curve_skips_nan_and_inf_points(tmp_path):
    path = tmp_path / "loss.png"
    steps = np.arange(50, dtype=float)
    ys = 2.0 - steps / 50
    ys[[3, 20, 21]] = [np.nan, np.inf, -np.inf]
    steps[40] = np.nan
    images.save_loss_curve(path, {"train": (steps, ys)})
    assert opened(path)[2] == (640, 360)
    assert coloured_pixels(path, images.COLOURS[0]) > 100


def test_loss_curve_with_only_non_finite_values_draws_empty_axes(tmp_path):
    path = tmp_path / "loss.png"
    images.save_loss_curve(path, {"train": ([1, 2, 3], [np.nan, np.inf, np.nan])})
    assert opened(path)[2] == (640, 360)


def test_loss_curve_leaves_no_temp_files(tmp_path):
    images.save_loss_curve(tmp_path / "loss.png", {"train": ([0, 1], [2, 1])})
    assert os.listdir(tmp_path) == ["loss.png"]


@pytest.mark.parametrize("series, error", [
    ([([0], [1])], TypeError),                      # not a dict
    ({1: ([0], [1])}, TypeError),                   # label not a str
    ({"train": ([0, 1],)}, TypeError),              # not a pair
    ({"train": (["a"], [1])}, TypeError),           # not numbers
    ({"train": ([0, 1], [1.0 + 1j, 2])}, TypeError),
    ({"train": ([0, 1], [1, 2, 3])}, ValueError),   # lengths differ
    ({"train": ([[0, 1]], [[1, 2]])}, ValueError),  # not 1-D
], ids=["list", "int-label", "single", "strings", "complex", "lengths", "2-d"])
def test_loss_curve_rejects_malformed_series(tmp_path, series, error):
    with pytest.raises(error, match="series"):
        images.save_loss_curve(tmp_path / "loss.png", series)
    assert os.listdir(tmp_path) == []


def test_loss_curve_rejects_an_image_too_small_to_plot(tmp_path):
    with pytest.raises(ValueError, match="width"):
        images.save_loss_curve(tmp_path / "loss.png", {}, width=10)


@pytest.mark.parametrize("values", [[1e-6, 2e-6], [123456.0, 123457.0], [-5.0, 5.0],
                                    [1e9, 3e9], [0.0, 0.0]])
def test_loss_curve_handles_any_value_range(tmp_path, values):
    path = tmp_path / "loss.png"
    images.save_loss_curve(path, {"y": ([0, 1], values)})
    assert opened(path)[2] == (640, 360)


@pytest.mark.parametrize("lo, hi", [(0, 1), (1.2, 4.7), (-3, 0.5), (1e-6, 2e-6), (0, 7e8)])
def test_ticks_are_evenly_spaced_and_cover_the_data(lo, hi):
    ticks, (a, b) = images._ticks(np.array([lo, hi]))
    assert a <= lo and b >= hi
    assert 3 <= len(ticks) <= 8
    assert np.allclose(np.diff(ticks), ticks[1] - ticks[0])
    assert len(set(images._tick_labels(ticks))) == len(ticks)
