"""The picture of a learning-rate search (``numbacnn.lrfind``): the loss against the rate, the suggestion marked."""

from __future__ import annotations

import numpy as np

from .canvas import new_figure


def lr_find_figure(result, title: str):
    """The loss of each step (faint) and its running average (the line) against the learning rate on a log
    scale, with the suggested rate marked; the loss axis stops a little above where the curve started, so
    the final blow-up does not flatten the part that matters."""
    figure = new_figure(8, 4.6)
    ax = figure.subplots()
    ax.plot(result.rates, result.losses, color="0.75", linewidth=0.8, label="loss of each step")
    ax.plot(result.rates, result.smoothed, color="#1f5fa8", linewidth=2, label="running average")
    ax.set_xscale("log")
    finite = result.smoothed[np.isfinite(result.smoothed)]
    if finite.size:
        low, start = float(finite.min()), float(finite[0])
        ax.set_ylim(max(0.0, low - 0.1 * (start - low)), start + 0.4 * max(start - low, 0.1 * start))
    if result.suggested is not None:
        ax.axvline(result.suggested, color="#c0392b", linestyle="--", linewidth=1.5,
                   label=f"suggested rate {result.suggested:.2g} (steepest fall)")
        at = int(np.argmin(np.abs(result.rates - result.suggested)))
        ax.plot([result.suggested], [result.smoothed[at]], "o", color="#c0392b", markersize=8)
    ax.set_xlabel("learning rate (log scale)")
    ax.set_ylabel("training loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=9, loc="upper left")
    ax.set_title(title, fontsize=10)
    return figure
