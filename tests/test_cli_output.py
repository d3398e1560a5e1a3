"""What the listing commands print fits the terminal (names and numbers whole), `summary FILE` reads a
checkpoint as `evaluate FILE` does, and a checkpoint's layer from a disabled plug-in is named as disabled."""

from __future__ import annotations

import re
import sys

import pytest
from rich.console import Console
from test_registry import plugins  # noqa: F401  (the fixture that installs fake plug-ins)
from typer.testing import CliRunner

import numbacnn
from numbacnn import cli
from numbacnn.model import Sequential
from numbacnn.presets import PRESETS
from numbacnn.registry import registry


@pytest.fixture
def run_at(monkeypatch):
    """Runs the CLI as in a terminal (or a pipe) of the given width, told by $COLUMNS."""

    def run(width: int, *args: str):
        monkeypatch.setenv("COLUMNS", str(width))
        # The console the commands print through, made as cli makes it, now that $COLUMNS is set.
        monkeypatch.setattr(cli, "out", Console(highlight=False, soft_wrap=True))
        result = CliRunner().invoke(cli.app, list(args), env={"COLUMNS": str(width)})
        assert result.exit_code == 0, result.output
        return result.output

    return run


def assert_fits(output: str, width: int) -> None:
    """Every line fits, but for a line holding one word longer than the width (a layer spec without spaces)."""
    for line in output.splitlines():
        assert len(line) <= width or len(line.split()) == 1, line
    assert "…" not in output  # nothing cut short


@pytest.mark.parametrize("width", [200, 80, 40])
def test_models_keeps_names_and_numbers_whole(run_at, width):
    output = run_at(width, "models")
    assert_fits(output, width)
    words = output.split()
    for name, spec in PRESETS.items():
        assert name in words or f"{name}:" in words
        size = f"{Sequential(spec).build().count_params():,}"
        assert size in words, (size, output)
    assert "fashion-mnist" in output.replace(":", " ").split()


def test_models_is_a_table_where_it_fits_and_plain_lines_where_not(run_at):
    assert "┃ name" in run_at(200, "models")
    narrow = run_at(80, "models")
    assert "┃" not in narrow
    assert narrow.splitlines()[0] == "keras-convnet: 34,826 parameters"


@pytest.mark.parametrize("width", [200, 80, 40])
def test_layers_keeps_names_and_packages_whole(run_at, width):
    output = run_at(width, "layers")
    assert_fits(output, width)
    words = re.split(r"[\s(),:│]+", output)
    for entry in registry.entries():
        assert entry.name in words
        assert entry.package in words and entry.version in words
    assert ("┃ layer" in output) == (width >= 80)  # a table at 80 columns, the version below the package


def test_summary_takes_a_checkpoint_as_its_argument(tmp_path, run_at):
    path = tmp_path / "tiny.npz"
    numbacnn.save(Sequential("conv2d(4,3) relu minpool2d(2) flatten dense(10)").build(seed=0), path,
                  {"dataset": "mnist"})
    positional = run_at(200, "summary", str(path))
    assert positional == run_at(200, "summary", "-c", str(path))
    assert "minpool2d" in positional and "Total parameters: 6,810;" in positional


def test_summary_refuses_a_checkpoint_and_a_network_together(tmp_path):
    path = tmp_path / "tiny.npz"
    numbacnn.save(Sequential("flatten dense(10)").build(seed=0), path)
    result = CliRunner().invoke(cli.app, ["summary", str(path), "-m", "tiny"])
    assert result.exit_code == 1
    assert "Summarise either a checkpoint or a network given by -m/-l, not both." in result.output


def test_a_checkpoint_needing_a_disabled_plugin_says_it_is_disabled(plugins, tmp_path, monkeypatch):  # noqa: F811
    plugins.scale_layer("numbacnn-test-disabled", "nbtest_disabled")
    plugins.activate()
    path = tmp_path / "scaled.npz"
    numbacnn.save(Sequential("flatten scale2 dense(3)").build(seed=0), path)
    monkeypatch.setenv("NUMBACNN_NO_PLUGINS", "1")
    registry.refresh()
    try:
        with pytest.raises(numbacnn.CheckpointError) as failure:
            numbacnn.load(path)
        result = CliRunner().invoke(cli.app, ["summary", str(path)])
        result_layers = CliRunner().invoke(cli.app, ["layers"])
    finally:
        monkeypatch.delenv("NUMBACNN_NO_PLUGINS")
        registry.refresh()
    listed = result_layers.output
    assert "Plug-ins are disabled (NUMBACNN_NO_PLUGINS=1): only the built-in layers are listed." in listed
    assert "scale2" not in listed
    message = str(failure.value)
    assert "needs layer 'scale2' from package numbacnn-test-disabled 1.0, which is installed but disabled, because " \
           "NUMBACNN_NO_PLUGINS=1 loads the built-in layers only; unset NUMBACNN_NO_PLUGINS to use it" in message
    assert result.exit_code == 1 and "disabled" in result.output
    assert [layer.name for layer in numbacnn.load(path)[0].layers] == ["flatten", "scale2", "dense"]  # enabled again


def test_a_checkpoint_needing_a_missing_plugin_still_says_how_to_install_it(plugins, tmp_path):  # noqa: F811
    plugins.scale_layer("numbacnn-test-gone", "nbtest_gone")
    plugins.activate()
    path = tmp_path / "scaled.npz"
    numbacnn.save(Sequential("flatten scale2 dense(3)").build(seed=0), path)
    sys.path.remove(str(plugins.root))
    registry.refresh()
    with pytest.raises(numbacnn.CheckpointError, match="which is not installed; install it with: pip install "
                                                       "numbacnn-test-gone"):
        numbacnn.load(path)
