"""What every picture shares: headless figures, PNG files, mosaics of small images, the layers by index.

Figures are made with ``matplotlib.figure.Figure`` directly, never through pyplot, so no window opens, no
backend is switched for the rest of the program, and nothing is kept alive after a picture is saved.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..model import numbered_layers
from ..errors import NumbacnnError

DPI = 100
COLORBAR = "<colorbar>"  # matplotlib's label of the axes it makes for a colour bar


def new_figure(width: float, height: float):
    """An empty figure of ``width`` x ``height`` inches that lays out its panels itself."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise NumbacnnError("Pictures need matplotlib: pip install matplotlib.") from None
    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def save_png(figure, path: str | Path) -> Path:
    """Writes ``figure`` as a PNG file at ``path``, atomically (an ``OutputError`` when it cannot be written)."""
    from ..files import write_atomically

    return write_atomically(Path(path), lambda f: figure.savefig(f, format="png", dpi=DPI))


def panels(figure) -> list:
    """The figure's panels: its axes, without colour bars and the empty places a grid leaves."""
    return [ax for ax in figure.axes if ax.get_label() != COLORBAR and ax.get_visible()]


def hide_unused(axes_grid, used: set) -> None:
    """Hides the axes of a grid that hold nothing (``used``: the axes that do)."""
    for ax in np.ravel(axes_grid):
        if ax not in used:
            ax.set_visible(False)


def grid(tiles: np.ndarray, gap: int = 1) -> np.ndarray:
    """Tiles (rows, columns, h, w) as one 2-D image, ``gap`` NaN pixels between them (NaN shows in the colour
    map's "bad" colour, so the gaps never look like values)."""
    rows, columns, h, w = tiles.shape
    image = np.full((rows * (h + gap) - gap, columns * (w + gap) - gap), np.nan)
    for r in range(rows):
        for c in range(columns):
            top, left = r * (h + gap), c * (w + gap)
            image[top:top + h, left:left + w] = tiles[r, c]
    return image


def mosaic(maps: np.ndarray, columns: int | None = None, gap: int = 1) -> np.ndarray:
    """Maps (h, w, k) as a grid of tiles in reading order, map i in row i // columns and column i % columns;
    places left over are NaN. By default the grid is about square, with no place left over where it can be."""
    h, w, k = maps.shape
    columns = columns or grid_columns(k)
    rows = math.ceil(k / columns)
    tiles = np.full((rows * columns, h, w), np.nan)
    tiles[:k] = np.moveaxis(maps, 2, 0)
    return grid(tiles.reshape(rows, columns, h, w), gap)


def grid_columns(count: int) -> int:
    """Columns for ``count`` tiles: the smallest divisor of ``count`` from its square root up to twice that
    (32 -> 8, 64 -> 8, 6 -> 3), else the rounded-up square root."""
    root = math.ceil(math.sqrt(count))
    return next((c for c in range(root, 2 * root + 1) if count % c == 0), root)


def indexed_layers(layers) -> list[tuple[str, object]]:
    """(index, layer) of every layer, a block's children right after it, numbered as ``numbacnn summary``
    numbers them: "1", "2", ..., "5.1", "5.2", "5.skip"."""
    return [(index, layer) for index, _, layer in numbered_layers(layers)]


def shape_text(shape) -> str:
    """(26, 26, 32) as "26x26x32"."""
    return "x".join(str(d) for d in shape)
