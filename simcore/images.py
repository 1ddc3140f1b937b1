"""Pictures for people: sample grids and loss curves as PNG, drawn with Pillow alone.

    grid(samples, rows=4, cols=10)                 # PIL image, samples uint8 [40, 28, 28]
    save_grid("samples.png", samples, 4, 10)       # the same, 2x upscaled, written atomically
    read_grid(png_bytes, side=28)                  # back: uint8 [rows, cols, 28, 28] (or one digit)
    save_loss_curve("loss.png", {"train": (steps, bpd), "test": (steps2, bpd2)},
                    title="bits/dim", xlabel="step")

The benchmarks' bar charts (benchmarks/charts.py) share this module's palette (COLOURS),
font, ticks and PNG writer. Every writer goes through a temp file and ``os.replace``, like
checkpoints, so a reader never sees half a PNG.
"""
from __future__ import annotations

import io
import math
from collections.abc import Mapping

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from simcore.files import write_atomic

PAD_VALUE = 128  # mid grey: stands out against MNIST's black background and white strokes
# Refuse to build a picture bigger than this many pixels (a typo in scale, not a wish).
MAX_PIXELS = 2**26
# Distinct colours (the Tableau 10 palette), used in order: the lines of a loss curve,
# the series of a benchmark's bar chart.
COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd",
           "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]

__all__ = ["grid", "png_bytes", "read_grid", "save_grid", "save_loss_curve"]


# ---- sample grids ------------------------------------------------------------------------


def grid(images, rows: int, cols: int, pad: int = 2, scale: int = 1) -> Image.Image:
    """A grayscale ("L") image of ``rows x cols`` cells, ``pad`` grey pixels between cells,
    then upscaled ``scale`` times (nearest neighbour, so pixels stay crisp).

    ``images`` is uint8 [rows*cols, H, W] in row-major order, or [rows, cols, H, W]. The
    result is ``(cols*W + (cols-1)*pad) * scale`` wide and likewise high; there is no border.
    """
    rows, cols = _int("rows", rows, 1), _int("cols", cols, 1)
    pad, scale = _int("pad", pad, 0), _int("scale", scale, 1)
    if not isinstance(images, np.ndarray):
        raise TypeError(f"images must be a numpy array, got {type(images).__name__}")
    if images.dtype != np.uint8:
        raise TypeError(f"images must be uint8, got dtype {images.dtype}")
    if images.ndim == 4:
        if images.shape[:2] != (rows, cols):
            raise ValueError(f"images has shape {list(images.shape)}, expected "
                             f"[{rows}, {cols}, H, W] for rows={rows}, cols={cols}")
        images = images.reshape(rows * cols, *images.shape[2:])
    elif images.ndim == 3:
        if images.shape[0] != rows * cols:
            raise ValueError(f"images has {images.shape[0]} images, expected rows*cols = "
                             f"{rows * cols}")
    else:
        raise ValueError(f"images must have shape [N, H, W] or [rows, cols, H, W], "
                         f"got {list(images.shape)}")
    H, W = images.shape[1:]
    if H == 0 or W == 0:
        raise ValueError(f"images must not be empty, got shape {list(images.shape)}")
    height, width = rows * H + (rows - 1) * pad, cols * W + (cols - 1) * pad
    if height * width * scale * scale > MAX_PIXELS:
        raise ValueError(f"a {width * scale} x {height * scale} grid exceeds {MAX_PIXELS} "
                         "pixels; use a smaller scale or fewer images")
    canvas = np.full((height, width), PAD_VALUE, np.uint8)
    for i in range(rows):
        for j in range(cols):
            y, x = i * (H + pad), j * (W + pad)
            canvas[y:y + H, x:x + W] = images[i * cols + j]
    if scale > 1:
        canvas = canvas.repeat(scale, axis=0).repeat(scale, axis=1)
    return Image.fromarray(canvas)  # 2-D uint8 -> mode "L"


def save_grid(path, images, rows: int, cols: int, pad: int = 2, scale: int = 2) -> None:
    """Write ``grid(images, rows, cols, pad, scale)`` to ``path`` as a PNG, atomically."""
    _save_png(path, grid(images, rows, cols, pad, scale))


def png_bytes(image: np.ndarray) -> bytes:
    """One grayscale image uint8 [H, W] as the bytes of a PNG file."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 2:
        raise TypeError("image must be a uint8 numpy array [H, W]")
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def read_grid(data: bytes, side: int, pad: int = 2) -> np.ndarray:
    """The digits of a PNG (its bytes) as save_grid writes them, or of one digit alone:
    uint8 [rows, cols, side, side]. The grid's scale (1 for a plain side x side digit, 2 as
    save_grid writes) follows from its size: W = scale * (cols * (side + pad) - pad), and
    likewise H; colour is made gray (Pillow's "L"). ValueError naming the size when it is
    not such a grid, or when it is not a PNG."""
    if not isinstance(data, (bytes, bytearray)):
        raise TypeError(f"data must be the bytes of a PNG file, got {type(data).__name__}")
    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        raise ValueError("not a PNG file (it does not start with the PNG signature)")
    try:
        with Image.open(io.BytesIO(data)) as im:
            W, H = im.size
            if W * H > MAX_PIXELS:
                raise ValueError(f"a {W} x {H} PNG exceeds {MAX_PIXELS} pixels")
            pixels = np.asarray(im.convert("L"))
    except (OSError, SyntaxError, Image.DecompressionBombError) as err:
        raise ValueError(f"not a readable PNG file ({err})") from None
    for scale in range(1, 15):  # scales below 15 cannot be mistaken for one another
        cols, rows = ((n // scale + pad) // (side + pad) if n % scale == 0 else 0 for n in (W, H))
        if cols and rows and (W, H) == (scale * (cols * (side + pad) - pad), scale * (rows * (side + pad) - pad)):
            small = pixels[::scale, ::scale]
            out = np.empty((rows, cols, side, side), np.uint8)
            for i in range(rows):
                for j in range(cols):
                    y, x = i * (side + pad), j * (side + pad)
                    out[i, j] = small[y:y + side, x:x + side]
            return out
    raise ValueError(f"a {W} x {H} PNG is not one {side} x {side} digit nor a grid of them as "
                     f"`python -m simcore.generate` writes (cells of {side} x {side}, {pad} pixels apart, "
                     "scaled 1 to 14 times)")


# ---- loss curves -------------------------------------------------------------------------


def save_loss_curve(path, series, title: str = "", width: int = 640, height: int = 360, *,
                    xlabel: str = "", ylabel: str = "") -> None:
    """Plot ``series`` (label -> (xs, ys), e.g. bits/dim against step) as lines on one set of
    axes, with tick labels and a legend, and write a PNG atomically.

    Points where x or y is NaN or infinite are skipped: the line breaks there. A lone point
    is drawn as a dot; with no points at all the axes are drawn empty.
    """
    width, height = _int("width", width, 160), _int("height", height, 120)
    for name, text in (("title", title), ("xlabel", xlabel), ("ylabel", ylabel)):
        if not isinstance(text, str):
            raise TypeError(f"{name} must be a str, got {type(text).__name__}")
    curves = _check_series(series)

    font = _font()
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    text_h = _text_size(draw, "0.9Ag", font)[1]

    finite = [(x[ok], y[ok]) for _, x, y, ok in curves]
    xs = np.concatenate([x for x, _ in finite]) if finite else np.empty(0)
    ys = np.concatenate([y for _, y in finite]) if finite else np.empty(0)
    xticks, (x0, x1) = _ticks(xs)
    yticks, (y0, y1) = _ticks(ys)
    xlabels, ylabels = _tick_labels(xticks), _tick_labels(yticks)

    # Margins sized to the text that goes in them.
    left = 12 + max(_text_size(draw, s, font)[0] for s in ylabels) + (text_h + 6 if ylabel else 0)
    top = 10 + (text_h + 8 if title else 0)
    bottom = 10 + text_h + 6 + (text_h + 6 if xlabel else 0)
    right = 12 + _text_size(draw, xlabels[-1], font)[0] // 2
    plot = (left, top, width - right, height - bottom)
    if plot[2] - plot[0] < 40 or plot[3] - plot[1] < 30:
        raise ValueError(f"a {width} x {height} image leaves no room for the plot; "
                         "make it larger")

    def px(x, y):
        X = plot[0] + (x - x0) / (x1 - x0) * (plot[2] - plot[0])
        Y = plot[3] - (y - y0) / (y1 - y0) * (plot[3] - plot[1])
        return float(X), float(Y)

    # Grid lines, ticks and their labels.
    for t, s in zip(xticks, xlabels):
        X = px(t, y0)[0]
        draw.line([(X, plot[1]), (X, plot[3])], fill="#e6e6e6")
        draw.line([(X, plot[3]), (X, plot[3] + 4)], fill="black")
        w = _text_size(draw, s, font)[0]
        draw.text((X - w / 2, plot[3] + 6), s, fill="black", font=font)
    for t, s in zip(yticks, ylabels):
        Y = px(x0, t)[1]
        draw.line([(plot[0], Y), (plot[2], Y)], fill="#e6e6e6")
        draw.line([(plot[0] - 4, Y), (plot[0], Y)], fill="black")
        w = _text_size(draw, s, font)[0]
        draw.text((plot[0] - 6 - w, Y - text_h / 2), s, fill="black", font=font)
    draw.rectangle(plot, outline="black")
    if title:
        w = _text_size(draw, title, font)[0]
        draw.text(((width - w) / 2, 8), title, fill="black", font=font)
    if xlabel:
        w = _text_size(draw, xlabel, font)[0]
        draw.text(((plot[0] + plot[2] - w) / 2, height - text_h - 6), xlabel, fill="black",
                  font=font)
    if ylabel:  # drawn sideways: render it on its own strip, rotate, paste
        w = _text_size(draw, ylabel, font)[0]
        strip = Image.new("RGB", (w + 4, text_h + 4), "white")
        ImageDraw.Draw(strip).text((2, 2), ylabel, fill="black", font=font)
        strip = strip.rotate(90, expand=True)
        image.paste(strip, (4, max(0, int((plot[1] + plot[3] - strip.height) / 2))))

    # The curves: one polyline per run of finite points.
    for k, (_, x, y, ok) in enumerate(curves):
        colour = COLOURS[k % len(COLOURS)]
        for run in _runs(ok):
            points = [px(x[i], y[i]) for i in run]
            if len(points) == 1:
                X, Y = points[0]
                draw.ellipse([X - 2.5, Y - 2.5, X + 2.5, Y + 2.5], fill=colour)
            else:
                draw.line(points, fill=colour, width=2)

    # Legend, top right inside the axes.
    if curves:
        labels = [label for label, *_ in curves]
        box_w = 30 + max(_text_size(draw, s, font)[0] for s in labels) + 8
        box_h = len(labels) * (text_h + 6) + 6
        bx, by = plot[2] - box_w - 8, plot[1] + 8
        draw.rectangle([bx, by, bx + box_w, by + box_h], fill="white", outline="#999999")
        for k, label in enumerate(labels):
            Y = by + 6 + k * (text_h + 6)
            colour = COLOURS[k % len(COLOURS)]
            draw.line([(bx + 6, Y + text_h / 2), (bx + 24, Y + text_h / 2)], fill=colour, width=2)
            draw.text((bx + 30, Y), label, fill="black", font=font)
    _save_png(path, image)


def _check_series(series):
    """[(label, xs, ys, finite-mask)] as float64 arrays, after checking types and shapes."""
    if not isinstance(series, Mapping):
        raise TypeError(f"series must be a dict label -> (xs, ys), got {type(series).__name__}")
    curves = []
    for label, value in series.items():
        if not isinstance(label, str):
            raise TypeError(f"series labels must be str, got {label!r}")
        if not isinstance(value, (tuple, list)) or len(value) != 2:
            raise TypeError(f"series[{label!r}] must be a pair (xs, ys)")
        arrays = []
        for axis, values in zip("xy", value):
            arr = np.asarray(values)
            if arr.dtype.kind not in "iuf":
                raise TypeError(f"series[{label!r}] {axis}s must be real numbers, "
                                f"got dtype {arr.dtype}")
            if arr.ndim != 1:
                raise ValueError(f"series[{label!r}] {axis}s must be 1-D, "
                                 f"got shape {list(arr.shape)}")
            arrays.append(arr.astype(np.float64))
        x, y = arrays
        if x.shape != y.shape:
            raise ValueError(f"series[{label!r}] has {x.size} xs but {y.size} ys")
        curves.append((label, x, y, np.isfinite(x) & np.isfinite(y)))
    return curves


def _runs(ok: np.ndarray):
    """Index ranges of the maximal runs of True in ``ok``."""
    start = None
    for i, good in enumerate(ok):
        if good and start is None:
            start = i
        elif not good and start is not None:
            yield range(start, i)
            start = None
    if start is not None:
        yield range(start, len(ok))


# ---- axes: shared with the bar charts (benchmarks/charts.py) -----------------------------


def _ticks(values: np.ndarray, target: int = 5):
    """About ``target`` round tick values (1, 2, 2.5 or 5 times a power of ten) and the axis
    range they span, which covers every value."""
    if values.size == 0:
        lo, hi = 0.0, 1.0
    else:
        lo, hi = float(values.min()), float(values.max())
    if lo == hi:  # a single value: centre it
        d = max(abs(lo) * 0.1, 1e-9)
        lo, hi = lo - d, hi + d
    span = hi - lo
    if not math.isfinite(span):
        raise ValueError(f"values from {lo:g} to {hi:g} are too far apart to plot")
    raw = span / target
    power = 10.0 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw * (1 - 1e-9))
    first, last = math.floor(lo / step), math.ceil(hi / step)
    ticks = [k * step for k in range(first, last + 1)]
    return ticks, (ticks[0], ticks[-1])


def _tick_labels(ticks) -> list[str]:
    """Fixed-point labels with just the decimals the tick step needs (%g when extreme)."""
    step = ticks[1] - ticks[0]
    if step < 1e-4 or max(abs(t) for t in ticks) >= 1e7:
        return [f"{t:.3g}" for t in ticks]
    decimals = next((d for d in range(8) if abs(round(step, d) - step) <= step * 1e-6), 6)
    return [f"{t + 0.0:.{decimals}f}" for t in ticks]  # + 0.0: no "-0"


# ---- shared ------------------------------------------------------------------------------


def _save_png(path, image: Image.Image) -> None:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    write_atomic(path, buf.getvalue())


def _font(size: int | None = None):
    """Pillow's built-in font: its default (the scalable Aileron at 10 px where Pillow has
    FreeType) with no ``size``, else Aileron at ``size`` where this Pillow has it (10.1+)."""
    if size is None:
        return ImageFont.load_default()
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):  # Pillow < 10.1, or no FreeType
        return ImageFont.load_default()


def _text_size(draw: ImageDraw.ImageDraw, text: str, font) -> tuple[int, int]:
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    return right - left, bottom - top


def _int(name: str, value, minimum: int) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)

