"""`numbacnn train` with --patience, --schedule plateau, --label-smoothing, --class-weight and --tensorboard: a short
real run whose TensorBoard files are read back, and one sentence for each bad value."""

from __future__ import annotations

import json

import numpy as np
import pytest

from test_show import one_line_error, run

pytestmark = pytest.mark.data

LAYERS = "conv2d(4,3) relu maxpool2d(2) flatten dense(10)"


def test_a_run_with_every_habit_writes_tensorboard_files(datasets_dir, tmp_path):
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    board = tmp_path / "tb"
    result = run("train", "--layers", LAYERS, "--limit", 600, "--validation", 200, "-e", 2, "-b", 100,
                 "--schedule", "plateau", "--plateau-patience", 1, "--patience", 3, "--label-smoothing", 0.1,
                 "--class-weight", "balanced", "--tensorboard", board, "--data-dir", datasets_dir,
                 "-o", tmp_path / "m.npz", "--threads", 1)
    assert result.exit_code == 0, result.output
    assert "Also: label smoothing 0.1; class weights balanced; the rate times 0.1 after 1 epoch" in result.output
    events = event_accumulator.EventAccumulator(str(board), size_guidance={event_accumulator.SCALARS: 0})
    events.Reload()
    steps = [e.step for e in events.Scalars("step/loss")]
    assert steps and steps[-1] == 12 and steps == sorted(steps)  # 6 batches an epoch, 2 epochs
    assert [e.step for e in events.Scalars("epoch/val_accuracy")] == [1, 2]
    assert len(events.Tags()["histograms"]) == 4 and len(events.Tags()["images"]) == 4
    history = [json.loads(line) for line in (tmp_path / "m.metrics.jsonl").read_text().splitlines()]
    assert [e.value for e in events.Scalars("epoch/loss")] == pytest.approx([h["loss"] for h in history])


@pytest.mark.parametrize("options, words", [
    (["--patience", 0], "--patience is a number of epochs, 1 or more; got 0."),
    (["--label-smoothing", 1], "Label smoothing must be a number from 0 up to (not including) 1"),
    (["--label-smoothing", -0.1], "Label smoothing must be a number from 0"),
    (["--class-weight", "1,2,3"], "3 class weights for a network with 10 classes; give one weight per class"),
    (["--class-weight", "1,1,1,1,1,-1,1,1,1,1"], "finite numbers >= 0; -1 is not"),
    (["--class-weight", "heavy"], "--class-weight takes 'balanced' or one number per class"),
    (["--plateau-factor", 0.5], "belong to --schedule plateau"),
    (["--schedule", "plateau", "--plateau-factor", 2], "between 0 and 1"),
    (["--patience", 2, "--validation", 0], "needs a validation set"),
])
def test_bad_habits_are_one_sentence(options, words, datasets_dir, tmp_path):
    error = one_line_error(run("train", "--layers", LAYERS, "--limit", 300, "-e", 1, *options, "--data-dir",
                               datasets_dir, "-o", tmp_path / "m.npz"))
    assert words in error
    assert not (tmp_path / "m.npz").exists()


def test_an_unwritable_tensorboard_folder_is_one_sentence(datasets_dir, tmp_path):
    (tmp_path / "taken").write_text("mine")
    error = one_line_error(run("train", "--layers", LAYERS, "--limit", 300, "-e", 1, "--tensorboard",
                               tmp_path / "taken" / "tb", "--data-dir", datasets_dir, "-o", tmp_path / "m.npz"))
    assert "Cannot write TensorBoard files to" in error and "choose a folder you can write to" in error
    assert (tmp_path / "taken").read_text() == "mine" and not (tmp_path / "m.npz").exists()


def test_a_run_with_every_habit_resumes_bit_for_bit(datasets_dir, tmp_path):
    """Interrupted after epoch 2 and resumed from its files, the run ends as the one that never stopped: the
    settings (and the counters in the run state) travel in the resume file."""
    import os
    import signal

    from numbacnn import checkpoint
    from numbacnn.run import Reporter, RunConfig, train
    from numbacnn.train import TrainingInterrupted

    options = dict(layers="conv2d(4,3) relu maxpool2d(2) flatten dropout(0.2) dense(10)", limit=600, validation=300,
                   epochs=5, batch_size=50, lr=0.05, schedule="plateau", plateau_patience=1, plateau_factor=0.5,
                   patience=2, label_smoothing=0.1, class_weight="balanced", data_dir=datasets_dir)

    class StopAfterEpoch2(Reporter):
        def epoch(self, result):
            if result.epoch == 2:
                os.kill(os.getpid(), signal.SIGINT)

    stopped = tmp_path / "stopped.npz"
    with pytest.raises(TrainingInterrupted):
        train(RunConfig(**options, output=stopped, tensorboard=tmp_path / "tb"), StopAfterEpoch2())
    resumed = train(RunConfig(resume=stopped, data_dir=datasets_dir))
    whole = train(RunConfig(**options, output=tmp_path / "whole.npz"))
    a, meta_a = checkpoint.load(stopped)
    b, meta_b = checkpoint.load(tmp_path / "whole.npz")
    assert all(np.array_equal(x[k], y[k]) for x, y in zip(a.get_weights(), b.get_weights()) for k in x)
    drop = ("seconds", "images_per_s")
    assert [{k: v for k, v in h.items() if k not in drop} for h in meta_a["history"]] == [
        {k: v for k, v in h.items() if k not in drop} for h in meta_b["history"]]
    assert (resumed.best_epoch, resumed.epochs_run, resumed.test_accuracy) == (
        whole.best_epoch, whole.epochs_run, whole.test_accuracy)
    assert len(list((tmp_path / "tb").glob("events.out.tfevents.*"))) == 2  # the resumed run writes there too
