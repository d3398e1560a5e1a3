"""Layer plug-ins: found through package metadata, loaded lazily, and never able to break numbacnn.

Each test installs fake distributions into a temporary folder (a ``*.dist-info`` with METADATA and
entry_points.txt, next to the plug-in's modules) and puts that folder on ``sys.path``.
"""

from __future__ import annotations

import importlib
import json
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from numbacnn import PluginError, Sequential, SpecError, load, save
from numbacnn.cli import app
from numbacnn.layers.relu import ReLU
from numbacnn.registry import registry

BUILTINS = {"avgpool2d", "conv2d", "dense", "dropout", "flatten", "maxpool2d", "relu"}

SCALE_LAYER = '''
from numbacnn.layer import Layer


class {cls}(Layer):
    """Multiplies its input by ``factor``."""

    name = "{name}"

    def __init__(self, factor=2.0):
        super().__init__()
        self.factor = float(factor)

    def output_shape(self, in_shape):
        return in_shape

    def forward(self, x, *, training=False):
        out = self.device.empty(x.shape, self.dtype)
        self.kernels.scale(x.reshape(-1), self.factor, out.reshape(-1))
        return out

    def backward(self, dy):
        dx = self.device.empty(dy.shape, self.dtype)
        self.kernels.scale(dy.reshape(-1), self.factor, dx.reshape(-1))
        return dx
'''

SCALE_CPU = '''
def scale(x, factor, out):
    out[:] = x * factor
'''


class Plugins:
    """Writes fake installed distributions under ``root`` and makes them visible to the registry."""

    def __init__(self, root: Path):
        self.root = root

    def add(self, dist: str, layers: dict[str, str], files: dict[str, str], version: str = "1.0") -> None:
        info = self.root / f"{dist.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
        points = "".join(f"{name} = {target}\n" for name, target in layers.items())
        (info / "entry_points.txt").write_text(f"[numbacnn.layers]\n{points}")
        for rel, source in files.items():
            path = self.root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(textwrap.dedent(source))

    def scale_layer(self, dist: str, module: str, name: str = "scale2", cls: str = "Scale") -> None:
        """A working plug-in: ``module/__init__.py`` holds the layer, ``module/cpu.py`` its kernel."""
        self.add(dist, {name: f"{module}:{cls}"}, {
            f"{module}/__init__.py": SCALE_LAYER.format(cls=cls, name=name),
            f"{module}/cpu.py": SCALE_CPU,
        })

    def activate(self) -> None:
        sys.path.insert(0, str(self.root))
        importlib.invalidate_caches()
        registry.refresh()

    def modules(self) -> list[str]:
        return [name for name, mod in list(sys.modules.items())
                if str(getattr(mod, "__file__", None) or "").startswith(str(self.root))]


@pytest.fixture
def plugins(tmp_path):
    helper = Plugins(tmp_path / "site")
    helper.root.mkdir()
    yield helper
    if str(helper.root) in sys.path:
        sys.path.remove(str(helper.root))
    for name in helper.modules():
        del sys.modules[name]
    importlib.invalidate_caches()
    registry.refresh()


def entry(name: str, package: str | None = None):
    return next(e for e in registry.entries() if e.name == name and (package is None or e.package == package))


def builtins_still_work():
    model = Sequential("conv2d(2,3) relu maxpool2d(2) flatten dropout(0.1) dense(3)").build()
    assert model.predict(np.zeros((1, 28, 28, 1), np.float32)).shape == (1, 3)


# -- a working plug-in ---------------------------------------------------------------------------------------


def test_working_plugin_is_listed_and_usable(plugins):
    plugins.scale_layer("numbacnn-test-scale", "nbtest_scale")
    plugins.activate()
    e = entry("scale2")
    assert (e.package, e.version, e.builtin) == ("numbacnn-test-scale", "1.0", False)
    assert e.status == "ok"

    model = Sequential("scale2(3) flatten dense(2)", input_shape=(2, 2, 1)).build()
    x = np.arange(4, dtype=np.float32).reshape(1, 2, 2, 1)
    np.testing.assert_array_equal(model.layers[0].forward(x), 3 * x)
    assert model.spec.startswith("scale2(factor=3.0)")

    qualified = Sequential("numbacnn-test-scale:scale2 flatten dense(2)", input_shape=(2, 2, 1)).build()
    assert type(qualified.layers[0]) is type(model.layers[0])


def test_plugin_layer_can_be_built_from_objects_too(plugins):
    plugins.scale_layer("numbacnn-test-scale", "nbtest_scale_obj")
    plugins.activate()
    cls = registry.get("scale2")
    model = Sequential([cls(0.5)], input_shape=(3,)).build()
    np.testing.assert_array_equal(model.forward(np.ones((2, 3), np.float32)), np.full((2, 3), 0.5, np.float32))


def test_model_with_plugin_layer_survives_a_checkpoint(plugins, tmp_path):
    plugins.scale_layer("numbacnn-test-scale", "nbtest_scale_ckpt")
    plugins.activate()
    model = Sequential("scale2(4) flatten dense(2)", input_shape=(2, 2, 1)).build(seed=3)
    loaded, _ = load(save(model, tmp_path / "m.npz"))
    assert type(loaded.layers[0]) is type(model.layers[0]) and loaded.layers[0].factor == 4.0
    x = np.ones((1, 2, 2, 1), np.float32)
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))


def test_listing_does_not_import_plugin_modules(plugins):
    plugins.scale_layer("numbacnn-test-scale", "nbtest_lazy")
    plugins.add("numbacnn-test-boom", {"boom": "nbtest_lazy_boom:Boom"},
                {"nbtest_lazy_boom.py": "raise RuntimeError('imported too early')\n"})
    plugins.activate()
    names = {e.name for e in registry.entries()}
    assert {"scale2", "boom"} <= names and BUILTINS <= names
    assert "nbtest_lazy" not in sys.modules and "nbtest_lazy_boom" not in sys.modules
    registry.get("scale2")
    assert "nbtest_lazy" in sys.modules


# -- broken plug-ins -----------------------------------------------------------------------------------------

OK_LAYER = "from numbacnn.layer import Layer\n\nclass Fine(Layer):\n    name = 'fine'\n"

BROKEN = {
    "missing-dependency": ("nbtest_dep:Layer1", {"nbtest_dep.py": "import numbacnn_no_such_dependency\n"},
                           "ModuleNotFoundError: No module named 'numbacnn_no_such_dependency'"),
    "syntax-error": ("nbtest_syntax:Layer1", {"nbtest_syntax.py": "def broken(:\n    pass\n"}, "SyntaxError"),
    "raises-at-import": ("nbtest_raise:Layer1", {"nbtest_raise.py": "raise RuntimeError('plug-in exploded')\n"},
                         "RuntimeError: plug-in exploded"),
    "exits-at-import": ("nbtest_exit:Layer1", {"nbtest_exit.py": "raise SystemExit(3)\n"}, "SystemExit"),
    "missing-attribute": ("nbtest_attr:NoSuchLayer", {"nbtest_attr.py": OK_LAYER}, "NoSuchLayer"),
    "not-a-layer": ("nbtest_notlayer:Thing", {"nbtest_notlayer.py": "Thing = 42\n"},
                    "not a numbacnn.Layer subclass"),
    "not-a-class": ("nbtest_func:make", {"nbtest_func.py": "def make():\n    return None\n"},
                    "not a numbacnn.Layer subclass"),
    "name-mismatch": ("nbtest_name:Fine", {"nbtest_name.py": OK_LAYER},
                      "calls itself 'fine' but is registered as 'brokenlayer'"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_plugin_fails_alone(plugins, case):
    target, files, reason = BROKEN[case]
    package = f"numbacnn-test-{case}"
    plugins.add(package, {"brokenlayer": target}, files)
    plugins.activate()

    broken = entry("brokenlayer")
    assert broken.package == package
    assert broken.status.startswith("failed: ") and reason in broken.status
    assert all(entry(name).status == "ok" for name in BUILTINS)

    for _ in range(2):  # the failure is remembered, and reported the same way each time
        with pytest.raises(PluginError) as info:
            Sequential("conv2d(2,3) brokenlayer", input_shape=(8, 8, 1))
        message = str(info.value)
        assert "'brokenlayer'" in message and package in message and reason in message
        assert "\n" not in message
    builtins_still_work()


def test_broken_plugin_beside_a_working_one(plugins):
    plugins.scale_layer("numbacnn-test-scale", "nbtest_pair_ok")
    plugins.add("numbacnn-test-bad", {"bad": "nbtest_pair_bad:X"}, {"nbtest_pair_bad.py": "1/0\n"})
    plugins.activate()
    assert entry("bad").status.startswith("failed: ZeroDivisionError")
    assert entry("scale2").status == "ok"
    Sequential("scale2 flatten dense(2)", input_shape=(2, 2, 1)).build()


# -- name collisions -------------------------------------------------------------------------------------------


def test_plugin_shadowing_a_builtin_warns_and_needs_its_package_name(plugins):
    plugins.scale_layer("numbacnn-test-shadow", "nbtest_shadow", name="relu", cls="OtherReLU")
    plugins.activate()
    with pytest.warns(UserWarning, match="numbacnn-test-shadow.*'relu'.*built"):
        registry.entries()
    assert registry.get("relu") is ReLU
    assert registry.get("numbacnn:relu") is ReLU
    theirs = registry.get("numbacnn-test-shadow:relu")
    assert theirs is not ReLU and theirs.__name__ == "OtherReLU"
    assert type(Sequential("relu").layers[0]) is ReLU
    assert type(Sequential("numbacnn-test-shadow:relu").layers[0]) is theirs


def test_qualified_names_compare_like_pip(plugins):
    plugins.scale_layer("Numbacnn_Test.Scale", "nbtest_norm")
    plugins.activate()
    assert registry.get("numbacnn-test-scale:scale2").__name__ == "Scale"


def test_two_plugins_with_one_name_must_be_told_apart(plugins):
    plugins.scale_layer("numbacnn-test-a", "nbtest_dup_a", name="dup", cls="DupA")
    plugins.scale_layer("numbacnn-test-b", "nbtest_dup_b", name="dup", cls="DupB")
    plugins.activate()
    with pytest.warns(UserWarning, match="numbacnn-test-a, numbacnn-test-b.*'dup'"):
        registry.entries()
    with pytest.raises(SpecError) as info:
        Sequential("dup")
    assert "numbacnn-test-a:dup" in str(info.value) and "numbacnn-test-b:dup" in str(info.value)
    assert type(Sequential("numbacnn-test-a:dup").layers[0]).__name__ == "DupA"
    assert type(Sequential("numbacnn-test-b:dup").layers[0]).__name__ == "DupB"


def test_unknown_package_in_a_qualified_name(plugins):
    plugins.scale_layer("numbacnn-test-scale", "nbtest_unknown_pkg")
    plugins.activate()
    with pytest.raises(SpecError, match="No layer 'scale2' in package 'numbacnn-test-other'"):
        Sequential("numbacnn-test-other:scale2")


def test_no_warning_without_collisions(plugins):
    plugins.scale_layer("numbacnn-test-scale", "nbtest_quiet")
    plugins.activate()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        registry.entries()


# -- switching plug-ins off --------------------------------------------------------------------------------------


def test_no_plugins_env_hides_plugins(plugins, monkeypatch):
    plugins.scale_layer("numbacnn-test-scale", "nbtest_hidden")
    plugins.add("numbacnn-test-bad", {"bad": "nbtest_hidden_bad:X"}, {"nbtest_hidden_bad.py": "1/0\n"})
    plugins.activate()
    monkeypatch.setenv("NUMBACNN_NO_PLUGINS", "1")
    registry.refresh()
    assert all(e.builtin for e in registry.entries())
    assert BUILTINS <= {e.name for e in registry.entries()}
    with pytest.raises(SpecError, match="Unknown layer 'scale2'"):
        Sequential("scale2")
    monkeypatch.setenv("NUMBACNN_NO_PLUGINS", "0")
    registry.refresh()
    assert {"scale2", "bad"} <= {e.name for e in registry.entries()}


def test_builtins_come_first_and_are_all_ok():
    registry.refresh()
    entries = registry.entries()
    builtin = [e for e in entries if e.builtin]
    assert {e.name for e in builtin} >= BUILTINS
    assert entries[:len(builtin)] == builtin
    assert all(e.status == "ok" and e.package == "numbacnn" for e in builtin)


# -- the `numbacnn layers` command ------------------------------------------------------------------------------


@pytest.fixture
def broken_and_working(plugins):
    plugins.scale_layer("numbacnn-test-scale", "nbtest_cli_ok")
    plugins.add("numbacnn-test-broken", {"brokenlayer": "nbtest_cli_bad:Layer1"},
                {"nbtest_cli_bad.py": "raise ImportError('install numbacnn-test-broken[gpu] first')\n"})
    plugins.activate()
    return plugins


def test_layers_command_shows_the_broken_plugin_and_the_rest(broken_and_working):
    result = CliRunner().invoke(app, ["layers"], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    assert "brokenlayer" in result.output and "numbacnn-test-broken 1.0" in result.output
    assert "failed: ImportError: install numbacnn-test-broken[gpu] first" in result.output
    assert "scale2" in result.output
    for name in BUILTINS:
        assert name in result.output
    assert "Traceback" not in result.output


def test_layers_json_shows_the_broken_plugin_and_the_rest(broken_and_working):
    result = CliRunner().invoke(app, ["layers", "--json"])
    assert result.exit_code == 0, result.output
    rows = {(r["package"], r["name"]): r for r in json.loads(result.stdout)}
    broken = rows[("numbacnn-test-broken", "brokenlayer")]
    assert broken["status"].startswith("failed: ImportError") and broken["devices"] == []
    assert rows[("numbacnn-test-scale", "scale2")]["status"] == "ok"
    assert rows[("numbacnn-test-scale", "scale2")]["devices"] == ["cpu"]
    for name in BUILTINS:
        row = rows[("numbacnn", name)]
        assert row["status"] == "ok" and "cpu" in row["devices"]
    assert rows[("numbacnn", "dense")]["arguments"] == "(units, bias=True)"


def test_checkpoint_keeps_the_package_of_a_shadowing_layer(plugins, tmp_path):
    plugins.scale_layer("numbacnn-test-shadow", "nbtest_shadow_ckpt", name="relu", cls="OtherReLU")
    plugins.activate()
    with pytest.warns(UserWarning):
        registry.entries()
    model = Sequential("numbacnn-test-shadow:relu(3) relu flatten dense(2)", input_shape=(2, 2, 1)).build()
    loaded, _ = load(save(model, tmp_path / "m.npz"))
    assert [type(layer).__name__ for layer in loaded.layers[:2]] == ["OtherReLU", "ReLU"]


def test_checkpoint_of_one_of_two_same_named_layers(plugins, tmp_path):
    plugins.scale_layer("numbacnn-test-a", "nbtest_dup_ckpt_a", name="dup", cls="DupA")
    plugins.scale_layer("numbacnn-test-b", "nbtest_dup_ckpt_b", name="dup", cls="DupB")
    plugins.activate()
    with pytest.warns(UserWarning):
        registry.entries()
    model = Sequential("numbacnn-test-b:dup flatten dense(2)", input_shape=(2, 2, 1)).build()
    loaded, _ = load(save(model, tmp_path / "m.npz"))
    assert type(loaded.layers[0]).__name__ == "DupB"


def test_half_installed_distribution_without_a_name(plugins):
    plugins.add("numbacnn-test-scale", {"scale2": "nbtest_noname:Scale"}, {})
    info = next(plugins.root.glob("*.dist-info"))
    (info / "METADATA").write_text("Metadata-Version: 2.1\n")  # an interrupted install
    plugins.activate()
    names = {e.name for e in registry.entries()}
    assert BUILTINS <= names
    assert entry("scale2").package == "numbacnn_test_scale"  # named after its folder
    assert entry("scale2").status.startswith("failed: ")
    builtins_still_work()


def test_malformed_entry_points_file(plugins):
    plugins.add("numbacnn-test-malformed", {}, {})
    info = next(plugins.root.glob("*.dist-info"))
    (info / "entry_points.txt").write_text("[numbacnn.layers]\nthis line has no equals sign\nok = nbtest_mal:X [\n")
    plugins.activate()
    with pytest.warns(UserWarning, match="numbacnn-test-malformed: its entry_points.txt cannot be read"):
        names = {e.name for e in registry.entries()}
    assert BUILTINS <= names
    builtins_still_work()


def test_malformed_entry_points_of_an_unrelated_package_are_ignored_quietly(plugins):
    plugins.add("some-other-tool", {}, {})
    info = next(plugins.root.glob("*.dist-info"))
    (info / "entry_points.txt").write_text("[console_scripts]\nno equals sign here\n")
    plugins.activate()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert BUILTINS <= {e.name for e in registry.entries()}
