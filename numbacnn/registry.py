"""Layer discovery through the entry-point group ``numbacnn.layers``.

Built-in layers and plug-ins take the same path. Listing reads only package metadata; a layer's module is
imported the first time the layer is used. A plug-in that fails to load breaks only itself: using it ends in
a ``PluginError`` naming the layer, its package and the error, and every other layer keeps working.

Names: a built-in name always means the built-in layer (a plug-in offering the same name is reachable only as
``package:name``, with a warning). Two plug-ins offering one name: a warning, and the plain name is refused
until the spec says which, as ``package:name``.

Set ``NUMBACNN_NO_PLUGINS=1`` to load the built-in layers only (for debugging a broken environment).
"""

from __future__ import annotations

import inspect
import os
import warnings
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, distribution, distributions

from .errors import NumbacnnError, PluginError, SpecError

GROUP = "numbacnn.layers"
NO_PLUGINS_ENV = "NUMBACNN_NO_PLUGINS"
BUILTIN_PACKAGE = "numbacnn"


@dataclass
class LayerEntry:
    """One registered layer: what its entry point says, and (once loaded) its class or its load error."""

    name: str
    package: str
    version: str
    target: str  # "module:attribute", as written in the entry point
    entry_point: EntryPoint = field(repr=False)
    _loaded: type | None = field(default=None, repr=False)
    _error: str | None = field(default=None, repr=False)

    @property
    def builtin(self) -> bool:
        return self.package == BUILTIN_PACKAGE

    @property
    def qualified_name(self) -> str:
        return f"{self.package}:{self.name}"

    def load(self) -> type:
        """The layer class, imported on first use; ``PluginError`` if it cannot be loaded."""
        if self._loaded is None and self._error is None:
            self._loaded, self._error = _import_layer(self)
        if self._error is not None:
            raise PluginError(
                f"Layer {self.name!r} from package {self.package} {self.version} failed to load: {self._error}; "
                f"reinstall or fix that package, or use another layer."
            )
        return self._loaded

    @property
    def status(self) -> str:
        """"ok", or "failed: <reason>" (loads the layer to find out)."""
        try:
            self.load()
        except PluginError:
            return f"failed: {self._error}"
        return "ok"


def _import_layer(entry: LayerEntry) -> tuple[type | None, str | None]:
    from .layer import Layer

    try:
        obj = entry.entry_point.load()
    except BaseException as error:  # a plug-in may raise anything at import, even SystemExit
        if isinstance(error, KeyboardInterrupt):
            raise
        return None, f"{type(error).__name__}: {error} (while importing {entry.target})"
    if not (isinstance(obj, type) and issubclass(obj, Layer)):
        return None, f"{entry.target} is {obj!r}, not a numbacnn.Layer subclass"
    if obj.name != entry.name:
        return None, f"{entry.target} calls itself {obj.name!r} but is registered as {entry.name!r}"
    return obj, None


class Registry:
    """The registered layers, read once from package metadata and cached until ``refresh()``."""

    def __init__(self) -> None:
        self._entries: list[LayerEntry] | None = None

    def refresh(self) -> None:
        """Forget what was read: the next look-up reads the installed packages again."""
        self._entries = None

    def entries(self) -> list[LayerEntry]:
        """Every registered layer, built-ins first, then plug-ins by package and name."""
        if self._entries is None:
            self._entries = _discover()
            _warn_about_collisions(self._entries)
        return self._entries

    def lookup(self, name: str) -> LayerEntry:
        """The entry for ``name`` or ``package:name``; ``SpecError`` when there is none or it is ambiguous."""
        entries = self.entries()
        if ":" in name:
            package, _, plain = name.partition(":")
            matches = [e for e in entries if e.name == plain and _same_package(e.package, package)]
            if not matches:
                raise SpecError(f"No layer {plain!r} in package {package!r}; `numbacnn layers` lists them all.")
            return matches[0]
        matches = [e for e in entries if e.name == name]
        if not matches:
            known = ", ".join(sorted({e.name for e in entries}))
            raise SpecError(f"Unknown layer {name!r}; known layers: {known} (`numbacnn layers` says more).")
        builtin = [e for e in matches if e.builtin]
        if builtin:
            return builtin[0]
        if len(matches) > 1:
            choices = " or ".join(e.qualified_name for e in matches)
            raise SpecError(f"Layer {name!r} is offered by several packages; write {choices} in the spec.")
        return matches[0]

    def get(self, name: str) -> type:
        """The layer class for ``name`` or ``package:name``, loaded on first use."""
        return self.lookup(name).load()

    def make(self, name: str, /, *args, **hyper):
        """A new, unbuilt layer, as the spec text ``name(*args, **hyper)`` makes it: ``make("conv2d", 16, 3,
        padding="same")``; ``SpecError`` for an unknown name or wrong arguments. A block's ``__init__`` calls it
        (as ``numbacnn.make_layer``) to make its inner layers from code."""
        return construct(self.get(name), name, args, hyper)

    def why_missing(self, package: str) -> str:
        """Why no layer of ``package`` is registered, as the end of a sentence: "which is not installed; ..." or,
        where ``NUMBACNN_NO_PLUGINS`` turned plug-ins off, that it is disabled."""
        if plugins_disabled() and not _same_package(package, BUILTIN_PACKAGE) and _installed(package):
            return (f"which is installed but disabled, because {NO_PLUGINS_ENV}=1 loads the built-in layers only; "
                    f"unset {NO_PLUGINS_ENV} to use it")
        return f"which is not installed; install it with: pip install {package}"

    def entry_for(self, layer_class: type) -> LayerEntry:
        """The entry that provides ``layer_class``, even when its plain name means another package's layer
        (what a checkpoint records, so that ``package:name`` brings back the same class)."""
        for e in self.entries():
            if e.name == layer_class.name:
                try:
                    if e.load() is layer_class:
                        return e
                except PluginError:
                    continue
        return self.lookup(layer_class.name)

    def spec_name(self, layer_class: type) -> str:
        """The name a spec text needs for ``layer_class``: plain when that means this class, else package:name."""
        entry = self.entry_for(layer_class)
        try:
            plain_means_it = self.lookup(layer_class.name) is entry
        except SpecError:  # the plain name is ambiguous
            plain_means_it = False
        return layer_class.name if plain_means_it else entry.qualified_name


def construct(cls: type, name: str, args, kwargs: dict):
    """``cls(*args, **kwargs)``; ``SpecError`` saying how ``name`` is written when the arguments do not fit."""
    try:
        inspect.signature(cls).bind(*args, **kwargs)
    except TypeError as error:
        raise SpecError(f"{name}: {error}; it takes {cls.name}{inspect.signature(cls)}.") from None
    try:
        return cls(*args, **kwargs)
    except NumbacnnError:
        raise
    except (TypeError, ValueError) as error:
        raise SpecError(f"{name}: {error}; it takes {cls.name}{inspect.signature(cls)}.") from None


def _same_package(a: str, b: str) -> bool:
    """Distribution names compare as pip does: case, '-', '_' and '.' do not matter."""
    return _normalise(a) == _normalise(b)


def plugins_disabled() -> bool:
    """Whether ``NUMBACNN_NO_PLUGINS`` is set (to anything but "" or "0"): only built-in layers load."""
    return os.environ.get(NO_PLUGINS_ENV, "").strip() not in ("", "0")


def _installed(package: str) -> bool:
    try:
        distribution(package)
    except Exception:  # noqa: BLE001 - not found, or a name no distribution can have (a corrupt checkpoint's)
        return False
    return True


def _discover() -> list[LayerEntry]:
    skip_plugins = plugins_disabled()
    found: dict[tuple[str, str], LayerEntry] = {}
    seen: set[str] = set()
    # Distribution by distribution rather than entry_points(group=...), which fails as a whole when any
    # installed package, numbacnn plug-in or not, has a malformed entry_points.txt.
    for dist in distributions():
        package, version = _name_and_version(dist)
        if _normalise(package) in seen:  # the same distribution seen twice on sys.path: the first one wins
            continue
        seen.add(_normalise(package))
        if skip_plugins and package != BUILTIN_PACKAGE:
            continue
        try:
            points = [ep for ep in dist.entry_points if ep.group == GROUP]
        except Exception as error:
            if GROUP in (_read_text(dist, "entry_points.txt") or ""):
                warnings.warn(f"Skipping the layers of package {package}: its entry_points.txt cannot be read "
                              f"({type(error).__name__}: {error}); reinstall it.", stacklevel=3)
            continue
        for ep in points:
            found.setdefault((package, ep.name), LayerEntry(ep.name, package, version, ep.value, ep))
    return sorted(found.values(), key=lambda e: (not e.builtin, e.package.lower(), e.name))


def _normalise(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def _read_text(dist, filename: str) -> str | None:
    try:
        return dist.read_text(filename)
    except Exception:
        return None


def _name_and_version(dist) -> tuple[str, str]:
    """A distribution's name and version; a half-installed one without metadata is named after its folder."""
    try:
        name, version = dist.name, dist.version
    except Exception:
        name = version = None
    if not name:
        folder = os.path.basename(str(getattr(dist, "_path", "")).rstrip("/\\"))  # name-1.0.dist-info
        name = folder.partition("-")[0] or "unknown"
    return name, version or "?"


def _warn_about_collisions(entries: list[LayerEntry]) -> None:
    by_name: dict[str, list[LayerEntry]] = {}
    for e in entries:
        by_name.setdefault(e.name, []).append(e)
    for name, group in by_name.items():
        if len(group) < 2:
            continue
        plugins = ", ".join(e.package for e in group if not e.builtin)
        if any(e.builtin for e in group):
            warnings.warn(
                f"Plug-in package(s) {plugins} offer a layer named {name!r}, which is built in; "
                f"{name!r} means the built-in one, write package:{name} for the other.",
                stacklevel=3,
            )
        else:
            warnings.warn(
                f"Packages {plugins} all offer a layer named {name!r}; write package:{name} to choose one.",
                stacklevel=3,
            )


registry = Registry()
