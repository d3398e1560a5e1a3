"""The layer-spec text, ``"conv2d(32,3) relu maxpool2d(2) flatten dense(10)"``, and back.

Each layer is a name, optionally followed by arguments in parentheses: positional in the order of the
layer's ``__init__``, or ``key=value``. Values are Python literals; a bare word (``padding=same``) is a string.
A name may be qualified by its package, ``numbacnn-contrib:leaky_relu``, to pick among plug-ins.
"""

from __future__ import annotations

import ast
import inspect
import re
from dataclasses import dataclass, field
from typing import Any

from .errors import NumbacnnError, SpecError

_NAME = re.compile(r"[A-Za-z_][\w.\-]*(?::[A-Za-z_]\w*)?")


@dataclass
class LayerSpec:
    """One layer of a spec: its (possibly qualified) name and its arguments."""

    name: str
    args: list[Any] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)


def parse(text: str) -> list[LayerSpec]:
    """The layers written in ``text``; ``SpecError`` pointing at the first thing that is not a layer."""
    specs, pos = [], 0
    while True:
        while pos < len(text) and (text[pos].isspace() or text[pos] == ","):
            pos += 1
        if pos >= len(text):
            break
        match = _NAME.match(text, pos)
        if not match:
            raise SpecError(f"Cannot read the layer spec at {text[pos:pos + 20]!r}; write layers like conv2d(32,3) relu.")
        name, pos = match.group(), match.end()
        args, kwargs = [], {}
        if pos < len(text) and text[pos] == "(":
            end = _closing_paren(text, pos)
            args, kwargs = _arguments(name, text[pos + 1:end])
            pos = end + 1
        specs.append(LayerSpec(name, args, kwargs))
    if not specs:
        raise SpecError("The layer spec is empty; give at least one layer, e.g. \"flatten dense(10)\".")
    return specs


def _closing_paren(text: str, start: int) -> int:
    depth = 0
    for i in range(start, len(text)):
        depth += {"(": 1, ")": -1}.get(text[i], 0)
        if depth == 0:
            return i
    raise SpecError(f"Unclosed parenthesis in the layer spec at {text[start:start + 20]!r}.")


def _arguments(name: str, inside: str) -> tuple[list, dict]:
    shown = " ".join(inside.split())  # a spec written over several lines still gets a one-line message
    try:
        call = ast.parse(f"f({inside})", mode="eval").body
    except SyntaxError:
        raise SpecError(f"Cannot read the arguments of {name}({shown}); write them like conv2d(32, 3, padding=same).") from None
    try:
        args = [_value(a) for a in call.args]
        kwargs = {k.arg: _value(k.value) for k in call.keywords}
    except ValueError:
        raise SpecError(f"The arguments of {name}({shown}) must be numbers, words or lists of them.") from None
    if any(k is None for k in kwargs):
        raise SpecError(f"{name}({shown}): ** is not allowed in a layer spec.")
    if len(kwargs) < len(call.keywords):
        raise SpecError(f"{name}({shown}) gives the same argument twice; give each once.")
    return args, kwargs


def _value(node: ast.AST) -> Any:
    if isinstance(node, ast.Name):  # bare words: padding=same
        return {"True": True, "False": False, "None": None}.get(node.id, node.id)
    if isinstance(node, (ast.Tuple, ast.List)):
        return [_value(e) for e in node.elts]
    return ast.literal_eval(node)


def make_layer(spec: LayerSpec, registry=None):
    """An unbuilt layer for ``spec``, found through the registry; ``SpecError`` for wrong arguments."""
    from .registry import registry as default_registry

    cls = (registry or default_registry).get(spec.name)
    try:
        inspect.signature(cls).bind(*spec.args, **spec.kwargs)
    except TypeError as error:
        raise SpecError(f"{spec.name}: {error}; it takes {cls.name}{signature_text(cls)}.") from None
    try:
        return cls(*spec.args, **spec.kwargs)
    except NumbacnnError:
        raise
    except (TypeError, ValueError) as error:
        raise SpecError(f"{spec.name}: {error}; it takes {cls.name}{signature_text(cls)}.") from None


def signature_text(cls) -> str:
    """``(filters, kernel_size=3, ...)``: how to write the layer's arguments in a spec."""
    return str(inspect.signature(cls))


def layer_text(name: str, config: dict[str, Any]) -> str:
    """One layer as spec text, every argument by keyword so it reads back the same."""
    if not config:
        return name
    return f"{name}(" + ", ".join(f"{k}={v!r}" for k, v in config.items()) + ")"
