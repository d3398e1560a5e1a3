"""TensorBoard: the event files a run writes are read back with TensorBoard's own reader."""

from __future__ import annotations

import sys

import numpy as np
import pytest

import numbacnn
from numbacnn.errors import NumbacnnError, OutputError
from numbacnn.tensorboard import TensorBoardLog, check_folder, pictures
from numbacnn.train import BatchStats, EpochResult

pytest.importorskip("tensorboardX")
event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")

SPEC = "conv2d(4,3) relu maxpool2d(2) residual(conv2d(4,3,padding=same) batchnorm2d) flatten dense(10)"


def read_events(folder):
    """TensorBoard's reader over every event file in ``folder``, holding all that was written."""
    events = event_accumulator.EventAccumulator(str(folder), size_guidance={
        event_accumulator.SCALARS: 0, event_accumulator.HISTOGRAMS: 0, event_accumulator.IMAGES: 0})
    events.Reload()
    return events


def test_scalars_histograms_and_pictures_are_read_back(tmp_path):
    model = numbacnn.Sequential(SPEC).build(seed=0)
    image = np.random.default_rng(0).random((28, 28, 1)).astype(np.float32)
    with TensorBoardLog(tmp_path / "tb", batches=3, image=image) as log:
        for epoch in (1, 2):
            for batch in (1, 2, 3):
                log.batch(BatchStats(epoch, batch, 3, 2.0 / (epoch * batch), 0.1 * batch, 100.0), lr=0.01 * batch)
            log.epoch(model, EpochResult(epoch, 1.0 / epoch, 0.5 + 0.1 * epoch, 100.0, 1.0, val_loss=0.9 / epoch,
                                         val_accuracy=0.6, lr=0.03))
    events = read_events(tmp_path / "tb")
    tags = events.Tags()
    loss = events.Scalars("step/loss")
    assert [e.step for e in loss] == [1, 2, 3, 4, 5, 6]
    assert [e.value for e in loss] == pytest.approx([2.0, 1.0, 2 / 3, 1.0, 0.5, 1 / 3])
    assert [e.value for e in events.Scalars("step/lr")] == pytest.approx([0.01, 0.02, 0.03] * 2)
    assert [e.value for e in events.Scalars("epoch/val_loss")] == pytest.approx([0.9, 0.45])
    assert {"epoch/loss", "epoch/accuracy", "epoch/val_accuracy", "epoch/lr", "step/accuracy"} <= set(tags["scalars"])
    histograms = set(tags["histograms"])
    assert {"weights/1_conv2d/weight", "weights/1_conv2d/bias", "weights/4_residual/0.weight",
            "weights/4_residual/1.weight", "weights/6_dense/weight"} <= histograms
    conv = events.Histograms("weights/1_conv2d/weight")
    assert [h.step for h in conv] == [1, 2] and conv[0].histogram_value.num == 36
    weight = model.get_weights()[0]["weight"]
    assert conv[0].histogram_value.min == pytest.approx(weight.min()) and conv[0].histogram_value.sum == pytest.approx(
        weight.sum(), abs=1e-4)
    images = set(tags["images"])
    assert {"filters/1_conv2d", "filters/4.1_conv2d", "features/1_conv2d", "features/4_residual"} <= images
    picture = events.Images("features/1_conv2d")[0]
    assert picture.width == picture.height == 5 * 53  # 2x2 maps of 26x26, a pixel between, scaled up 5 times


def test_pictures_are_the_models_filters(tmp_path):
    model = numbacnn.Sequential("conv2d(8,3) relu flatten dense(10)").build(seed=1)
    found = dict(pictures(model, None))
    assert list(found) == ["filters/1_conv2d"]
    picture = found["filters/1_conv2d"]
    assert picture.dtype == np.uint8 and picture.shape[2] == 3
    # Blue where a weight is negative, red where it is positive (RdBu reversed), the tiles in reading order.
    weight = model.get_weights()[0]["weight"][:, :, 0, :]
    scale = picture.shape[1] // 31  # 8 tiles of 3 columns and 7 between them, each pixel repeated
    assert picture.shape[:2] == (3 * scale, 31 * scale)
    tiles = np.delete(picture[::scale, ::scale].astype(int), [3, 7, 11, 15, 19, 23, 27], axis=1)
    laid_out = np.moveaxis(weight, 2, 0).reshape(8, 3, 3).transpose(1, 0, 2).reshape(3, 24)
    clear = np.abs(laid_out) > 0.1 * np.abs(laid_out).max()
    red_minus_blue = tiles[..., 0] - tiles[..., 2]
    np.testing.assert_array_equal(np.sign(red_minus_blue[clear]), np.sign(laid_out[clear]))


def test_an_unwritable_folder_is_one_sentence(tmp_path):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    with pytest.raises(OutputError, match=r"is a file, not a folder; choose a folder"):
        check_folder(a_file)
    with pytest.raises(OutputError, match=r"^Cannot write TensorBoard files to .*; choose a folder you can write to"):
        check_folder(a_file / "runs")
    assert a_file.read_text() == "mine"


def test_without_the_extra_it_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboardX", None)
    with pytest.raises(NumbacnnError, match=r'pip install "numbacnn\[tensorboard\]"'):
        TensorBoardLog(tmp_path / "tb", batches=1)
    assert not (tmp_path / "tb").exists()


def test_a_second_writer_in_the_same_folder_keeps_the_first_ones_events(tmp_path):
    """A resumed run writes into the folder again, possibly within the same second: nothing is written over."""
    for epoch in (1, 2):
        with TensorBoardLog(tmp_path, batches=1) as log:
            log.batch(BatchStats(epoch, 1, 1, 1.0 / epoch, 0.5, 10.0), lr=0.1)
    assert [e.step for e in read_events(tmp_path).Scalars("step/loss")] == [1, 2]
