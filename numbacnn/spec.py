"""The layer-spec text, ``"conv2d(32,3) relu maxpool2d(2) flatten dense(10)"``, and back.

Each layer is a name, optionally followed by arguments in parentheses: positional in the order of the
layer's ``__init__``, or ``key=value``. Values are Python literals; a bare word (``padding=same``) is a string.
A name may be qualified by its package, ``numbacnn-contrib:leaky_relu``, to pick among plug-ins.

A block (see ``numbacnn.block``) holds layers: inside its parentheses come its layers, written the same way,
then optionally its own ``key=value`` arguments: ``residual(conv2d(32,3,padding=same) batchnorm2d relu)``.
"""

from __future__ import annotations

import ast
import inspect
import re
from dataclasses import dataclass, field
from typing import Any

from .errors import NumbacnnError, SpecError

_NAME = re.compile(r"[A-Za-z_][\w.\-]*(?::[A-Za-z_]\w*)?")
_KEYWORD = re.compile(r"[A-Za-z_]\w*\s*=(?!=)")  # where a block's own key=value arguments begin


@dataclass
class LayerSpec:
    """One layer of a spec: its (possibly qualified) name and its arguments."""

    name: str
    args: list[Any] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)


def parse(text: str, registry=None) -> list[LayerSpec]:
    """The layers written in ``text``; ``SpecError`` pointing at the first thing that is not a layer.

    ``registry`` (default: the installed layers) tells which names are blocks, whose parentheses hold layers.
    """
    _check_nesting(text)
    specs, _ = _parse_layers(text, registry)
    if not specs:
        raise SpecError("The layer spec is empty; give at least one layer, e.g. \"flatten dense(10)\".")
    return specs


MAX_NESTING = 32  # parentheses within parentheses: blocks in blocks, far beyond any network's design


def _check_nesting(text: str) -> None:
    """A ``SpecError`` for parentheses nested deeper than ``MAX_NESTING`` (reading them would exhaust
    Python's stack)."""
    depth = deepest = 0
    for character in text:
        depth += (character == "(") - (character == ")")
        deepest = max(deepest, depth)
    if deepest > MAX_NESTING:
        raise SpecError(f"The layer spec nests parentheses {deepest} deep; at most {MAX_NESTING} are read, so put "
                        f"fewer blocks inside blocks.")


def _parse_layers(text: str, registry, stop_at_keyword: bool = False) -> tuple[list[LayerSpec], str]:
    """The layers of ``text`` (maybe none) and what follows them: with ``stop_at_keyword`` the reading ends
    where ``key=value`` arguments begin (a block's own), and their text is returned; else ""."""
    specs, pos = [], 0
    while True:
        while pos < len(text) and (text[pos].isspace() or text[pos] == ","):
            pos += 1
        if pos >= len(text):
            break
        if stop_at_keyword and _KEYWORD.match(text, pos):
            return specs, text[pos:]
        match = _NAME.match(text, pos)
        if not match:
            raise SpecError(f"Cannot read the layer spec at {text[pos:pos + 20]!r}; write layers like conv2d(32,3) relu.")
        name, pos = match.group(), match.end()
        args, kwargs = [], {}
        if pos < len(text) and text[pos] == "(":
            end = _closing_paren(text, pos)
            inside = text[pos + 1:end]
            args, kwargs = _block_arguments(name, inside, registry) if _names_block(name, registry) else _arguments(name, inside)
            pos = end + 1
        specs.append(LayerSpec(name, args, kwargs))
    return specs, ""


def _names_block(name: str, registry) -> bool:
    """Whether ``name`` is a block; an unknown name is not (making the layer then says it is unknown)."""
    from .registry import registry as default_registry

    try:
        return _holds_layers((registry or default_registry).get(name))
    except NumbacnnError:
        return False


def _holds_layers(cls) -> bool:
    """Whether layers of ``cls`` take the spec text of their children first (a block: ``Layer.holds_layers``)."""
    return bool(getattr(cls, "holds_layers", False))


def _block_arguments(name: str, inside: str, registry) -> tuple[list, dict]:
    """A block's arguments: its layers' spec text (checked here, so an error points into the block), then its
    own ``key=value`` arguments."""
    _, rest = _parse_layers(inside, registry, stop_at_keyword=True)
    layers_part = inside[:len(inside) - len(rest)].strip().rstrip(",").strip()
    _, kwargs = _arguments(name, rest) if rest.strip() else ([], {})
    if "layers" in kwargs:
        raise SpecError(f"{name}: write its layers inside the parentheses, not as layers=...")
    return [layers_part], kwargs


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
    from .registry import construct, registry as default_registry

    return construct((registry or default_registry).get(spec.name), spec.name, spec.args, spec.kwargs)


def signature_text(cls) -> str:
    """``(filters, kernel_size=3, ...)``: how to write the layer's arguments in a spec."""
    return str(inspect.signature(cls))


def layer_text(name: str, config: dict[str, Any], *, block: bool = False) -> str:
    """One layer as spec text, every argument by keyword so it reads back the same; a ``block``'s layers come
    first inside its parentheses, as written."""
    if block:
        others = "".join(f", {k}={v!r}" for k, v in config.items() if k != "layers")
        return f"{name}({config['layers']}{others})"
    if not config:
        return name
    return f"{name}(" + ", ".join(f"{k}={v!r}" for k, v in config.items()) + ")"


def layers_text(layers) -> str:
    """The spec text that rebuilds ``layers`` (built or not): plug-in names qualified where they must be."""
    from .registry import registry

    return " ".join(layer_text(registry.spec_name(type(layer)), layer.get_config(), block=_holds_layers(type(layer)))
                    for layer in layers)
