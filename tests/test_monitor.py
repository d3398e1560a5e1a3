"""Patience and the plateau schedule: when they act, that a run stopped and resumed with them (and with label
smoothing and class weights) ends bit for bit as the run that never stopped, and their bad settings."""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest

from numbacnn import checkpoint
from numbacnn.errors import SpecError
from numbacnn.model import Sequential
from numbacnn.monitor import check_monitoring, plateau_update
from numbacnn.optim import Adam
from numbacnn.run import RunSettings
from numbacnn.train import RunState, TrainingInterrupted, fit

SPEC = "conv2d(4,3) batchnorm2d relu maxpool2d(2) flatten dropout(0.3) dense(3)"


def blobs(n: int, seed: int, random_labels: bool = False):
    """Three classes of 8x8 images, a bright square in a corner each, with noise; ``random_labels`` gives a
    validation set nothing can be learned from, whose loss soon stops falling."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    images = rng.random((n, 8, 8, 1)).astype(np.float32) * 0.5
    for i, label in enumerate(labels):
        row, column = [(0, 0), (0, 4), (4, 2)][label]
        images[i, row:row + 4, column:column + 4] += 0.5
    if random_labels:
        labels = rng.integers(0, 3, n)
    return images, labels.astype(np.int64)


def tiny_fit(monkeypatch, val_scores, **options):
    """fit on a flat network whose validation figures are ``val_scores`` [(loss, accuracy)] in turn."""
    import numbacnn.train as train_module

    scores = iter(val_scores)
    monkeypatch.setattr(train_module, "evaluate", lambda *a, **k: next(scores))
    images, labels = np.zeros((8, 6, 6, 1), np.float32), np.arange(8) % 2
    model = Sequential("flatten dense(2)", input_shape=(6, 6, 1)).build()
    run = RunState()
    results = fit(model, Adam(1e-2), images, labels, batch_size=4, validation=(images, labels), run=run, **options)
    return results, run


def test_patience_stops_after_that_many_epochs_without_a_better_accuracy(monkeypatch):
    scores = [(1.0, a) for a in (0.5, 0.9, 0.8, 0.9, 0.95, 0.99)]  # a tie is no better
    results, run = tiny_fit(monkeypatch, scores, epochs=6, patience=2)
    assert [r.epoch for r in results] == [1, 2, 3, 4]
    assert run.finished and run.best_epoch == 2


def test_the_plateau_schedule_lowers_the_rate_when_the_validation_loss_stops_falling(monkeypatch):
    losses = [1.0, 0.8, 0.9, 0.85, 0.7, 0.75, 0.76, 0.5]
    results, run = tiny_fit(monkeypatch, [(loss, 0.5) for loss in losses], epochs=8, schedule="plateau",
                            plateau_factor=0.5, plateau_patience=2)
    # Epochs 3 and 4 do not beat 0.8: the rate halves for epoch 5; epochs 6 and 7 do not beat 0.7: again.
    assert [r.lr for r in results] == pytest.approx([1e-2] * 4 + [5e-3] * 3 + [2.5e-3])
    assert (run.lr_scale, run.plateau_best, run.plateau_wait) == (0.25, 0.5, 0)


def test_plateau_update_counts_as_keras_does():
    run = RunState()
    lowered = [plateau_update(run, loss, 0.1, 1) for loss in (2.0, 1.0, 1.0, 0.5, 0.6, 0.7)]
    assert lowered == [False, False, True, False, True, True]
    assert run.lr_scale == pytest.approx(0.001)


def _scores(history):
    """Each epoch's figures, without its times."""
    return [{k: v for k, v in h.items() if k not in ("seconds", "images_per_s")} for h in history]


def _interrupt():
    os.kill(os.getpid(), signal.SIGINT)


FIT = dict(epochs=8, batch_size=16, seed=3, schedule="plateau", plateau_factor=0.5, plateau_patience=1, patience=3,
           label_smoothing=0.1, class_weight="balanced")


def _fresh():
    return Sequential(SPEC, (8, 8, 1)).build(seed=1), Adam(3e-3)


@pytest.mark.parametrize("where", ["at the end of epoch 2", "in epoch 3 after 2 batches"])
def test_patience_and_plateau_resume_bit_for_bit(tmp_path, where):
    train, val = blobs(96, 0), blobs(48, 1, random_labels=True)
    model, optimizer = _fresh()
    reference = RunState()
    fit(model, optimizer, *train, validation=val, run=reference, **FIT)
    expected = [*model.get_weights(), *model.get_state()]
    # The run exercises both: the rate was lowered, and patience ended it early.
    assert reference.lr_scale < 1 and len(reference.history) < FIT["epochs"]

    model, optimizer = _fresh()
    run = RunState()

    def on_epoch(result):
        if where.startswith("at") and result.epoch == 2:
            _interrupt()

    def on_batch(stats):
        if where.startswith("in") and (stats.epoch, stats.batch) == (3, 2):
            _interrupt()

    with pytest.raises(TrainingInterrupted):
        fit(model, optimizer, *train, validation=val, run=run, on_epoch=on_epoch, on_batch=on_batch, **FIT)
    path = checkpoint.save_resume(tmp_path / "run.resume.npz", model, optimizer, run, {"note": where})
    del model, optimizer, run
    model, optimizer, run, _ = checkpoint.load_resume(path)
    fit(model, optimizer, *train, validation=val, run=run, **FIT)
    got = [*model.get_weights(), *model.get_state()]
    assert all(a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a) for a, b in zip(got, expected))
    assert _scores(run.history) == _scores(reference.history)
    assert (run.lr_scale, run.plateau_best, run.plateau_wait, run.best_epoch) == (
        reference.lr_scale, reference.plateau_best, reference.plateau_wait, reference.best_epoch)


def test_the_run_settings_keep_the_new_options_for_a_resumed_run():
    settings = RunSettings(name="n", dataset="mnist", epochs=3, batch_size=8, schedule="plateau", augment="none",
                           validation=10, label_smoothing=0.1, class_weight=[1.0, 2.0], patience=2,
                           plateau_factor=0.5, plateau_patience=3, tensorboard="tb")
    assert RunSettings.from_dict(settings.as_dict()) == settings
    older = {k: v for k, v in settings.as_dict().items()
             if k not in ("label_smoothing", "class_weight", "patience", "plateau_factor", "plateau_patience",
                          "tensorboard")}
    assert RunSettings.from_dict({**older, "schedule": "cosine"}).label_smoothing == 0.0
    with pytest.raises(ValueError, match="patience"):
        RunSettings.from_dict({**settings.as_dict(), "patience": 0})


@pytest.mark.parametrize("options, words", [
    (dict(patience=0), "--patience is a number of epochs, 1 or more; got 0."),
    (dict(patience=-2), "got -2"),
    (dict(patience=2, has_validation=False), "needs a validation set; keep --validation above 0."),
    (dict(schedule="plateau", has_validation=False), "--schedule plateau lowers the rate"),
    (dict(schedule="plateau", plateau_factor=1.5), "between 0 and 1"),
    (dict(schedule="plateau", plateau_patience=0), "--plateau-patience is a number of epochs"),
    (dict(plateau_given=True), "belong to --schedule plateau"),
])
def test_bad_patience_and_plateau_settings_are_one_sentence(options, words):
    arguments = dict(schedule="cosine", patience=None, has_validation=True, plateau_factor=0.1, plateau_patience=2)
    plateau_given = options.pop("plateau_given", False)
    arguments.update(options)
    with pytest.raises(SpecError, match=words.replace("(", r"\(").replace(".", r"\.")):
        check_monitoring(**arguments, plateau_given=plateau_given)
