"""Pictures of what a network holds and does: its convolution filters, and the feature maps of one image."""

from __future__ import annotations

import math

import numpy as np

from ..errors import NumbacnnError
from ..layers.conv2d import Conv2D
from ..model import Sequential
from .canvas import grid, hide_unused, indexed_layers, mosaic, new_figure, shape_text

PANEL_INCHES = 2.4


# -- filters ---------------------------------------------------------------------------------------------------


def convolutions(model: Sequential) -> list[tuple[str, Conv2D]]:
    """(index, layer) of every convolution, inside blocks too; ``NumbacnnError`` when there is none."""
    found = [(index, layer) for index, layer in indexed_layers(model.layers) if isinstance(layer, Conv2D)]
    if not found:
        raise NumbacnnError(f"This network has no conv2d layer, so it has no filters to show ({model.spec}).")
    return found


def filter_image(weight: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
    """A conv weight (kh, kw, channels, filters) as one 2-D image without gaps, and its (rows, columns) of
    tiles: with one input channel each filter is a tile, 8 to a row; with more, each filter is a column of
    tiles, one per input channel."""
    _, _, channels, filters = weight.shape
    if channels == 1:
        columns = min(filters, 8)
        return mosaic(weight[:, :, 0, :], columns=columns, gap=0), (-(-filters // columns), columns)
    return grid(weight.transpose(2, 3, 0, 1), gap=0), (channels, filters)


def colour_filter_image(weight: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
    """A first layer's conv weight (kh, kw, 3, filters) on colour images as one RGB picture, each filter a small
    RGB tile (as in the AlexNet paper's figure), 8 to a row with white gaps, and its (rows, columns) of tiles:
    mid-grey is a weight of 0, and each channel grows brighter with its positive weights, darker with negative
    ones, each filter on its own scale (its largest weight, by size, reaches black or full colour)."""
    _, _, _, filters = weight.shape
    limit = np.abs(weight).max(axis=(0, 1, 2))
    scaled = 0.5 + weight / (2 * np.where(limit > 0, limit, 1.0))
    columns = min(filters, 8)
    rows = -(-filters // columns)
    planes = []
    for channel in range(3):
        tiles = np.full((rows * columns, *weight.shape[:2]), np.nan)
        tiles[:filters] = np.moveaxis(scaled[:, :, channel, :], 2, 0)
        planes.append(grid(tiles.reshape(rows, columns, *weight.shape[:2]), gap=1))
    return np.nan_to_num(np.stack(planes, axis=-1), nan=1.0), (rows, columns)


def filters_figure(model: Sequential):
    """Every convolution's filters, one panel per layer, coloured blue (negative) to red (positive) around 0; a
    first layer on colour images as colour tiles instead (``colour_filter_image``)."""
    convs = convolutions(model)
    colour = [layer is model.layers[0] and layer.params["weight"].shape[2] == 3 for _, layer in convs]
    images = [(colour_filter_image if in_colour else filter_image)(layer.device.to_host(layer.params["weight"]))
              for (_, layer), in_colour in zip(convs, colour)]
    columns = 1 if len(convs) <= 2 else 2
    rows = math.ceil(len(convs) / columns)
    # Each row of panels as tall as its tallest picture at a picture width of 5.6 inches (capped: 1x1 filters
    # of many channels make very tall pictures), plus room for the titles.
    aspects = [min(image.shape[0] / image.shape[1], 1.5) for image, _ in images]
    heights = [max(aspects[r * columns:(r + 1) * columns]) for r in range(rows)]
    figure = new_figure(7 * columns, 5.6 * sum(heights) + 0.9 * rows + 0.5)
    axes = figure.subplots(rows, columns, squeeze=False, height_ratios=heights)
    for ax, (index, layer), (image, tiles), in_colour in zip(axes.flat, convs, images, colour):
        kh, kw, channels, filters = layer.params["weight"].shape
        if in_colour:
            ax.imshow(image, interpolation="nearest")
            ax.set_title(f"{index} conv2d: {filters} filters of {kh}x{kw}x{channels}, in colour", fontsize=10)
            ax.set_xlabel(f"each tile is one {kh}x{kw}x3 filter as an RGB picture, on its own scale:\nmid-grey is 0, "
                          f"a channel brighter for positive weights, darker for negative", fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
            continue
        limit = float(np.nanmax(np.abs(image))) or 1.0
        picture = ax.imshow(image, cmap="RdBu_r", vmin=-limit, vmax=limit, interpolation="nearest")
        _tile_lines(ax, image.shape, tiles)
        ax.set_title(f"{index} conv2d: {filters} filters of {kh}x{kw}x{channels}", fontsize=10)
        if channels == 1:
            ax.set_xlabel(f"each tile is one {kh}x{kw} filter", fontsize=8)
        else:
            ax.set_xlabel(f"one column per filter (1-{filters})", fontsize=8)
            ax.set_ylabel(f"input channels (1-{channels}),\na {kh}x{kw} tile each", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
        figure.colorbar(picture, ax=ax, shrink=0.8, label="weight")
    hide_unused(axes, set(axes.flat[:len(convs)]))
    figure.suptitle("Convolution filters" if all(colour) else
                    "Convolution filters (blue: negative weights, red: positive, white: near 0)", fontsize=11)
    return figure


def _tile_lines(ax, shape: tuple[int, int], tiles: tuple[int, int]) -> None:
    """Thin grey lines between the tiles of a filter picture: thinner the more tiles there are."""
    (height, width), (rows, columns) = shape, tiles
    width_points = min(1.5, 40 / max(rows, columns))
    for r in range(1, rows):
        ax.axhline(r * height / rows - 0.5, color="0.45", linewidth=width_points, antialiased=False)
    for c in range(1, columns):
        ax.axvline(c * width / columns - 0.5, color="0.45", linewidth=width_points, antialiased=False)


# -- feature maps ----------------------------------------------------------------------------------------------


def feature_maps(model: Sequential, image: np.ndarray) -> list[tuple[str, str, np.ndarray]]:
    """(index, layer name, output (h, w, channels)) after each top-level layer whose output is an image, for
    one prepared ``image`` (h, w, c); the layers run in the order written, as in evaluation."""
    x = model.device.to_device(np.ascontiguousarray(image[None], dtype=model.dtype))
    maps = []
    for number, layer in enumerate(model.layers, start=1):
        x = layer.forward(x, training=False)
        if len(layer.out_shape) == 3:
            maps.append((str(number), layer.name, model.device.to_host(x)[0].copy()))
    return maps


def feature_rows(model: Sequential, maps) -> list[list[int]]:
    """The panels' rows: a new row starts at each layer that does not continue a stage (``Layer.continues_stage``:
    a convolution, a block), so each row reads conv -> ReLU -> pooling. Panel 0 is the input; the items are
    indexes into ``maps`` (panel i + 1), whose first item is the layer's number."""
    rows: list[list[int]] = []
    for i, (number, _, _) in enumerate(maps):
        if not rows or not model.layers[int(number) - 1].continues_stage:
            rows.append([])
        rows[-1].append(i)
    return rows


def features_figure(model: Sequential, image: np.ndarray, title: str):
    """The input, then the feature maps after each image-shaped layer (conv, ReLU, pooling...), each panel all
    channels of one layer, in grey: black is the layer's lowest value, white its highest."""
    maps = feature_maps(model, image)
    rows = feature_rows(model, maps) or [[]]
    columns = 1 + max(len(r) for r in rows)
    figure = new_figure(PANEL_INCHES * columns, PANEL_INCHES * 1.1 * len(rows) + 0.5)
    axes = figure.subplots(len(rows), columns, squeeze=False)
    used = {axes[0, 0]}
    if image.shape[-1] == 3:  # a colour picture is shown as one, not as three grey channels
        _picture_panel(axes[0, 0], image, f"input {shape_text(image.shape)}")
    else:
        _grey_panel(axes[0, 0], np.asarray(image, dtype=np.float64), f"input {shape_text(image.shape)}")
    for r, row in enumerate(rows):
        for c, i in enumerate(row, start=1):
            index, name, output = maps[i]
            _grey_panel(axes[r, c], output, f"{index} {name} {shape_text(output.shape)}")
            used.add(axes[r, c])
    hide_unused(axes, used)
    figure.suptitle(title, fontsize=11)
    figure.supxlabel("Each panel: a layer's output, one small tile per channel; in each panel black is the "
                     "layer's lowest value and white its highest.", fontsize=9)
    return figure


def _picture_panel(ax, image: np.ndarray, title: str) -> None:
    """An RGB input image (values in [0, 1]) as it looks."""
    ax.imshow(np.clip(np.asarray(image, dtype=np.float64), 0, 1), interpolation="nearest")
    ax.set_title(title, fontsize=10)
    ax.set_xticks([])
    ax.set_yticks([])


def _grey_panel(ax, maps: np.ndarray, title: str) -> None:
    from matplotlib import colormaps

    colours = colormaps["gray"].with_extremes(bad="#3b6ea5")  # blue gaps between maps: unlike any grey value
    low, high = float(maps.min()), float(maps.max())
    ax.imshow(mosaic(maps), cmap=colours, vmin=low, vmax=high if high > low else low + 1, interpolation="nearest")
    ax.set_title(title, fontsize=10)
    ax.set_xticks([])
    ax.set_yticks([])

