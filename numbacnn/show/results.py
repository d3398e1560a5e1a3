"""Pictures of how a network learned and how it answers: training curves, confusion matrix, worst mistakes."""

from __future__ import annotations

import math

import numpy as np

from ..errors import NumbacnnError
from ..metrics import confusion_matrix
from .canvas import hide_unused, new_figure

# -- training curves ---------------------------------------------------------------------------------------------


def history_figure(history: list[dict]):
    """Loss and accuracy per epoch: training, validation, and the test figures of the epochs that have them.

    ``history`` holds one dict per epoch, as training saves it in the checkpoint's metadata.
    """
    if not history:
        raise NumbacnnError("This checkpoint has no saved metrics; train it again with this version of numbacnn.")
    epochs = [h["epoch"] for h in history]
    figure = new_figure(9, 3.6)
    loss_ax, accuracy_ax = figure.subplots(1, 2)
    for ax, key, title in ((loss_ax, "loss", "loss (lower is better)"),
                           (accuracy_ax, "accuracy", "accuracy (higher is better)")):
        ax.plot(epochs, [h[key] for h in history], "o-", label="training (mean over the epoch)")
        for prefix, style, label in (("val_", "s--", "validation (after the epoch)"), ("test_", "D", "test")):
            points = [(h["epoch"], h[prefix + key]) for h in history if h.get(prefix + key) is not None]
            if points:
                ax.plot(*zip(*points), style, label=label, markersize=7 if prefix == "test_" else 6)
        ax.set_title(title, fontsize=11)
        ax.set_xlabel("epoch")
        if len(epochs) <= 15:
            ax.set_xticks(epochs)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    accuracy_ax.yaxis.set_major_formatter(_percent())
    return figure


def _percent():
    from matplotlib.ticker import PercentFormatter

    return PercentFormatter(xmax=1.0, decimals=1)


# -- confusion matrix ------------------------------------------------------------------------------------------


def confusion_figure(labels: np.ndarray, predicted: np.ndarray, class_names: list[str], title: str):
    """How often each true class (row) was predicted as each class (column), with the counts written in; the
    colour grows with the share of the row, so the few mistakes show beside the many right answers."""
    from matplotlib.colors import PowerNorm

    matrix = confusion_matrix(labels, predicted, len(class_names))
    share = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    figure = new_figure(7.5, 6.5)
    ax = figure.subplots()
    image = ax.imshow(share, cmap="Blues", norm=PowerNorm(0.3, vmin=0, vmax=1))
    for (row, column), count in np.ndenumerate(matrix):
        if count:
            colour = "white" if share[row, column] > 0.4 else "black"
            ax.text(column, row, str(count), ha="center", va="center", fontsize=7, color=colour)
    ticks = range(len(class_names))
    ax.set_xticks(ticks, class_names, rotation=45 if max(map(len, class_names)) > 2 else 0, ha="right",
                  rotation_mode="anchor", fontsize=8)
    ax.set_yticks(ticks, class_names, fontsize=8)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title, fontsize=11)
    figure.colorbar(image, ax=ax, shrink=0.8, label="share of the true class", format=_percent())
    return figure


# -- worst mistakes --------------------------------------------------------------------------------------------


def most_confident_mistakes(labels: np.ndarray, probabilities: np.ndarray, count: int) -> np.ndarray:
    """Indexes of up to ``count`` wrong answers, the most confident first."""
    predicted = probabilities.argmax(axis=1)
    wrong = np.flatnonzero(predicted != labels)
    confidence = probabilities[wrong, predicted[wrong]]
    return wrong[np.argsort(-confidence, kind="stable")][:count]


def errors_figure(images: np.ndarray, labels: np.ndarray, probabilities: np.ndarray, class_names: list[str],
                  count: int, title: str):
    """The ``count`` most confident mistakes, each image with its test number, true and predicted label."""
    worst = most_confident_mistakes(labels, probabilities, count)
    if len(worst) == 0:
        raise NumbacnnError(f"The network classifies all {len(labels):,} images right; there are no mistakes to show.")
    columns = min(len(worst), 8)
    rows = math.ceil(len(worst) / columns)
    figure = new_figure(1.45 * columns, 1.65 * rows + 0.4)
    axes = figure.subplots(rows, columns, squeeze=False)
    for ax, i in zip(axes.flat, worst):
        guess = int(probabilities[i].argmax())
        if images.shape[-1] == 3:  # colour pictures in colour
            ax.imshow(np.clip(images[i], 0, 1), interpolation="nearest")
        else:
            ax.imshow(images[i, :, :, 0], cmap="gray", vmin=0, vmax=1)
        ax.set_title(f"#{i}: true {class_names[labels[i]]}\n"
                     f"predicted {class_names[guess]} ({probabilities[i, guess]:.1%})", fontsize=8, color="#b00000")
        ax.set_xticks([])
        ax.set_yticks([])
    hide_unused(axes, set(axes.flat[:len(worst)]))
    figure.suptitle(title, fontsize=10)
    return figure
