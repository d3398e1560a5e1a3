"""The run as a library: ``numbacnn.run.train`` does what ``numbacnn train`` does, from a typed config."""

from __future__ import annotations

import json
import zipfile
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest

from numbacnn import RunConfig, checkpoint
from numbacnn.errors import NumbacnnError
from numbacnn.run import Reporter, RunSettings, option_name, train

from test_cli import run

SMALL = dict(layers="conv2d(4,3) relu maxpool2d(2) flatten dropout(0.2) dense(10)", limit=300, validation=200,
             batch_size=50, epochs=1, augment="shift=1", seed=3)


def _contents(path: Path) -> dict:
    """Every array of a checkpoint file, and its header with the timings (which no two runs share) left out."""
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    arrays = dict(np.load(path))
    header = json.loads(arrays.pop("__meta__").tobytes())
    for row in header["metadata"]["history"]:
        assert row.pop("seconds") > 0 and row.pop("images_per_s") > 0
    return {"names": names, "header": header, "arrays": arrays}


@pytest.mark.data
def test_the_same_run_from_python_and_from_the_command_line_gives_the_same_checkpoint(datasets_dir, tmp_path):
    from_cli = tmp_path / "cli.npz"
    args = [a for field, value in SMALL.items() for a in (option_name(field), value)]
    done = run("train", *args, "--data-dir", datasets_dir, "-o", from_cli)
    assert done.exit_code == 0, done.output

    said = []

    class Listener(Reporter):
        def started(self, start):
            said.append(("started", start.train_images, start.validation_images, start.settings.augment))

        def epoch(self, result):
            said.append(("epoch", result.epoch))

        def finished(self, result):
            said.append(("finished", result.best_epoch, result.test_images))

    from_python = tmp_path / "python.npz"
    result = train(RunConfig(**SMALL, data_dir=datasets_dir, output=from_python), Listener())
    assert said == [("started", 300, 200, "shift=1"), ("epoch", 1), ("finished", 1, 10_000)]
    assert result.path == from_python and result.test_accuracy == checkpoint.load(from_python)[1]["test_accuracy"]
    assert f"Test accuracy: {result.test_accuracy:.2%}" in done.stdout

    cli, python = _contents(from_cli), _contents(from_python)
    assert cli["names"] == python["names"] and cli["header"] == python["header"]
    assert cli["arrays"].keys() == python["arrays"].keys()
    for name, array in cli["arrays"].items():
        assert array.dtype == python["arrays"][name].dtype
        assert array.tobytes() == python["arrays"][name].tobytes(), name  # bit for bit


def test_resume_refuses_settings_by_their_option_names(tmp_path):
    with pytest.raises(NumbacnnError, match="leave out --batch-size, --stop-at"):
        train(RunConfig(resume=tmp_path / "m.npz", batch_size=32, stop_at=0.9))


def test_every_train_option_is_a_config_field_and_back():
    from typer.main import get_command

    from numbacnn.cli import app

    command = get_command(app).get_command(None, "train")
    options = {name for p in command.params for name in p.opts if name.startswith("--")} - {"--threads", "--help"}
    assert options == {option_name(f.name) for f in fields(RunConfig)}


def test_settings_of_an_older_resume_state_load_and_missing_ones_are_named():
    saved = {"name": "tiny", "dataset": "mnist", "epochs": 2, "batch_size": 8, "schedule": "cosine",
             "augment": "none", "validation": 10, "stop_at": None, "seed": 0, "limit": None}
    assert RunSettings.from_dict(saved).as_dict().items() >= saved.items()  # newer settings take defaults
    with pytest.raises((TypeError, ValueError), match="epochs"):
        RunSettings.from_dict({k: v for k, v in saved.items() if k != "epochs"})
