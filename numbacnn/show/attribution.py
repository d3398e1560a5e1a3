"""Pictures of where a network looks: saliency maps and Grad-CAM (computed by ``numbacnn.attribution``).

Each image gets two panels side by side: the image as the network saw it, with its label and the network's
answer, and the heat map for the class asked about (the saliency beside the image; Grad-CAM over it).
"""

from __future__ import annotations

import math

import numpy as np

from .canvas import hide_unused, new_figure

PAIRS_PER_ROW = 4
PANEL_INCHES = 1.9


def saliency_figure(images: np.ndarray, heat: np.ndarray, captions: list[str], classes: list[str], title: str):
    """Per image: the image, then its saliency heat map (black: the score does not care about the pixel,
    bright: changing the pixel moves the score most), each map scaled to its own largest value.
    ``captions``: a caption per image (its number, label and the network's answer); ``classes``: the name of the
    class whose score each map is the gradient of."""
    figure, pairs = _pairs(len(images))
    for (image_ax, heat_ax), image, h, caption, cls in zip(pairs, images, heat, captions, classes):
        _image_panel(image_ax, image, caption)
        heat_ax.imshow(h, cmap="inferno", vmin=0, vmax=float(h.max()) or 1.0, interpolation="nearest")
        _label(heat_ax, f"saliency for {cls}")
    _words(figure, title, "Right of each image: how strongly each pixel moves the class's score (the gradient's "
                          "size; bright: most).")
    return figure


def gradcam_figure(images: np.ndarray, heat: np.ndarray, captions: list[str], classes: list[str], title: str,
                   layer: str):
    """Per image: the image, then Grad-CAM's map for the class drawn over it in colour (red: where the
    layer's feature maps speak most for the class; clear: not at all), each map scaled to its own largest
    value; a map that is zero everywhere (nothing speaks for the class) says so."""
    from matplotlib import colormaps

    colours = colormaps["jet"]
    figure, pairs = _pairs(len(images))
    for (image_ax, heat_ax), image, h, caption, cls in zip(pairs, images, heat, captions, classes):
        _image_panel(image_ax, image, caption)
        _image_panel(heat_ax, image, None)
        top = float(h.max())
        if top > 0:
            overlay = colours(h / top)
            overlay[..., 3] = 0.65 * np.sqrt(h / top)  # faint where weak, so the image shows through
            heat_ax.imshow(overlay, interpolation="nearest")
            _label(heat_ax, f"Grad-CAM for {cls}")
        else:
            _label(heat_ax, f"nothing for {cls}")
    _words(figure, title, f"Right of each image: where layer {layer}'s feature maps speak for the class (red: "
                          f"most; clear: not at all).")
    return figure


def _pairs(count: int):
    """A figure with ``count`` pairs of panels, up to ``PAIRS_PER_ROW`` pairs a row; the unused ones hidden."""
    per_row = min(count, PAIRS_PER_ROW)
    rows = math.ceil(count / per_row)
    figure = new_figure(max(2 * per_row * PANEL_INCHES, 5.5), rows * PANEL_INCHES * 1.3 + 0.8)
    axes = figure.subplots(rows, 2 * per_row, squeeze=False)
    pairs = [(axes[i // per_row, 2 * (i % per_row)], axes[i // per_row, 2 * (i % per_row) + 1]) for i in range(count)]
    hide_unused(axes, {ax for pair in pairs for ax in pair})
    return figure, pairs


def _words(figure, title: str, explanation: str) -> None:
    """The title above and the explanation below, wrapped to the figure's width (a single pair is narrow)."""
    import textwrap

    characters = int(figure.get_figwidth() * 12)
    figure.suptitle(textwrap.fill(title, characters), fontsize=11)
    figure.supxlabel(textwrap.fill(explanation, int(characters * 1.2)), fontsize=9)


def _image_panel(ax, image: np.ndarray, caption: str | None) -> None:
    """A prepared image (h, w, 1) in grey, (h, w, 3) in colour, values 0 to 1."""
    picture = image[..., 0] if image.shape[-1] == 1 else image
    ax.imshow(np.clip(picture, 0, 1), cmap="gray" if image.shape[-1] == 1 else None, vmin=0, vmax=1,
              interpolation="nearest")
    if caption is not None:
        _label(ax, caption)
    else:
        ax.set_xticks([])
        ax.set_yticks([])


def _label(ax, text: str) -> None:
    ax.set_title(text, fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])
