"""Live training curves in TensorBoard: ``numbacnn train --tensorboard DIR``, then ``tensorboard --logdir DIR``.

The event files are written by tensorboardX (the ``numbacnn[tensorboard]`` extra), in TensorBoard's own format:
- scalars per step: ``step/loss`` and ``step/accuracy`` (the epoch's running means, as the progress line shows
  them) and ``step/lr`` (the rate of the step just taken);
- scalars per epoch: ``epoch/loss``, ``epoch/accuracy``, ``epoch/val_loss``, ``epoch/val_accuracy``, ``epoch/lr``;
- per epoch, a histogram of each layer's parameters (``weights/<index>_<layer>/<name>``, numbered as
  ``numbacnn summary`` numbers the layers), each convolution's filters as a picture (``filters/...``: blue
  negative, red positive) and, for one fixed image, the feature maps after each layer that keeps an image
  (``features/...``: black the layer's lowest value, white its highest).
A resumed run goes on writing into the same folder at the steps where it stopped. On a GPU the step figures are
written as often as the progress line reads them (a few times a second), not after every step.

From Python, hand ``fit`` the writer's methods: ``on_batch=lambda s: log.batch(s, optimizer.lr)`` and
``on_epoch=lambda r: log.epoch(model, r)``.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import numpy as np

from .errors import NumbacnnError, OutputError
from .model import Sequential, numbered_layers

INSTALL = 'pip install "numbacnn[tensorboard]"'
_WRITERS = itertools.count(1)  # writers made in this process
SHOWN_WIDTH = 256  # pixels: TensorBoard shows a picture at its own size, and a 3x3 filter is tiny


def _writer_class():
    try:
        from tensorboardX import SummaryWriter
    except ImportError:
        raise NumbacnnError(f"--tensorboard needs the tensorboardX package, which is not installed; {INSTALL} "
                            f"(it brings tensorboard too, to view the curves).") from None
    return SummaryWriter


def check_folder(folder: str | Path) -> Path:
    """``folder`` made if need be and checked to be writable; ``OutputError`` in one sentence otherwise."""
    folder = Path(folder).expanduser()
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"--tensorboard {folder} is a file, not a folder; choose a folder for the event files.")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".numbacnn-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise OutputError(f"Cannot write TensorBoard files to {folder} ({error.strerror or error}); choose a folder "
                          f"you can write to for --tensorboard.") from None
    return folder


class TensorBoardLog:
    """Writes a run's curves, histograms and pictures into ``folder`` as TensorBoard event files.

    ``batches``: the steps an epoch has (the step number of batch b of epoch e is (e - 1) * batches + b);
    ``image``: one prepared image whose feature maps are drawn each epoch (None: no feature maps)."""

    def __init__(self, folder: str | Path, batches: int, image: np.ndarray | None = None):
        writer = _writer_class()
        self.folder = check_folder(folder)
        self.batches, self.image = batches, image
        # Event files are named by the second they start in: a suffix keeps a run resumed within the same
        # second from writing over the first part's file.
        suffix = f".{os.getpid()}.{next(_WRITERS)}"
        self.writer = writer(logdir=str(self.folder), flush_secs=10, filename_suffix=suffix)

    def batch(self, stats, lr: float) -> None:
        """One step's figures (``stats``: ``numbacnn.train.BatchStats``; ``lr``: the rate of that step)."""
        step = (stats.epoch - 1) * self.batches + stats.batch
        self.writer.add_scalar("step/loss", stats.loss, step)
        self.writer.add_scalar("step/accuracy", stats.accuracy, step)
        self.writer.add_scalar("step/lr", lr, step)

    def epoch(self, model: Sequential, result) -> None:
        """An epoch's figures (``result``: ``numbacnn.train.EpochResult``), histograms and pictures."""
        e = result.epoch
        for name in ("loss", "accuracy", "val_loss", "val_accuracy", "lr"):
            value = getattr(result, name)
            if value is not None:
                self.writer.add_scalar(f"epoch/{name}", value, e)
        for index, depth, layer in numbered_layers(model.layers):
            if depth == 0:  # a block's params already hold its children's, keyed "<child>.<name>"
                for key, values in layer.params.items():
                    self.writer.add_histogram(f"weights/{index}_{layer.name}/{key}",
                                              model.device.to_host(values).astype(np.float64).ravel(), e)
        for tag, picture in pictures(model, self.image):
            self.writer.add_image(tag, picture, e, dataformats="HWC")
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def pictures(model: Sequential, image: np.ndarray | None) -> list[tuple[str, np.ndarray]]:
    """(tag, uint8 RGB picture (h, w, 3)) of every convolution's filters and, for ``image``, the feature maps
    after each top-level layer whose output is an image; each scaled up to be seen (a 3x3 filter is tiny)."""
    from .show.canvas import grid, mosaic
    from .show.network import feature_maps

    found = []
    for index, _, layer in numbered_layers(model.layers):
        weight = layer.params.get("weight") if not hasattr(layer, "named_children") else None
        if weight is not None and len(weight.shape) == 4:
            # As ``numbacnn show filters`` lays them out (one tile per filter, 8 to a row, for one input
            # channel; else a column of tiles per filter), with a line of the gap colour between tiles.
            w = model.device.to_host(weight).astype(np.float64)
            tiles = mosaic(w[:, :, 0, :], columns=min(w.shape[3], 8)) if w.shape[2] == 1 else grid(
                w.transpose(2, 3, 0, 1))
            found.append((f"filters/{index}_{layer.name}", _coloured(tiles, "RdBu_r", symmetric=True, gap="#404040")))
    if image is not None:
        for index, name, maps in feature_maps(model, image):
            found.append((f"features/{index}_{name}", _coloured(mosaic(maps.astype(np.float64)), "gray")))
    return found


def _coloured(values: np.ndarray, colour_map: str, symmetric: bool = False, gap: str = "#3b6ea5") -> np.ndarray:
    """A 2-D array (NaN between tiles) as a uint8 RGB picture, each value a square of pixels, at least
    ``SHOWN_WIDTH`` pixels wide in all."""
    from matplotlib import colormaps

    finite = values[np.isfinite(values)]
    if symmetric:
        top = float(np.abs(finite).max()) if finite.size else 1.0
        low, high = -(top or 1.0), top or 1.0
    else:
        low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        high = high if high > low else low + 1
    colours = colormaps[colour_map].with_extremes(bad=gap)  # a colour no value has, between the tiles
    rgb = colours(np.ma.masked_invalid((values - low) / (high - low)))[..., :3]
    scale = max(1, -(-SHOWN_WIDTH // max(values.shape[1], 1)))
    return (np.repeat(np.repeat(rgb, scale, axis=0), scale, axis=1) * 255).astype(np.uint8)
