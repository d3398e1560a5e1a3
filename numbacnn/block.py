"""Blocks: layers that hold layers, such as a residual block; and the order a chain of layers runs in.

To the model, checkpoints, the summary, optimisers, the conformance kit and plug-ins, a block is a layer. Its
``params``, ``grads`` and ``state`` are views of its children's, keyed ``"<child>.<name>"`` (``"0.weight"``,
``"skip.weight"``), so whatever reads or replaces ``layer.params[key]`` reaches the child that owns it.

A block's first hyperparameter is ``layers``: the spec text of its children, as written inside its
parentheses, ``residual(conv2d(32,3,padding=same) batchnorm2d relu)``; further hyperparameters follow as
``key=value`` after the layers. A subclass implements ``combine`` (what the block makes of its input and of
the children's output) and the forward and backward passes, using ``forward_children`` and
``backward_children`` for the chain.
"""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import NumbacnnError, ShapeError, SpecError
from .layer import Layer, Shape


def run_order(layers: list[Layer]) -> list:
    """The order a chain of layers runs in: as written, except where a layer declares that the one written
    just before it runs just after it (``Layer.moves_ahead_of``: max pooling, for a ReLU), and where two
    layers in a row run as one step (``Layer.fused_with``). Training outputs and gradients are exactly those of
    the order as written (outside training a convolution with batch normalisation folded into its filters
    agrees to float32 rounding). The layers keep the shapes they were built with, as the summary shows them."""
    order = list(layers)
    for i in range(len(order) - 1):
        if type(order[i]) in order[i + 1].moves_ahead_of:
            order[i], order[i + 1] = order[i + 1], order[i]
    steps = []
    for layer in order:
        fused = steps[-1].fused_with(layer) if steps else None
        if fused is not None:
            steps[-1] = fused
        else:
            steps.append(layer)
    return steps


def build_chain(layers: list[Layer], in_shape: Shape, *, rng, dtype, device, owner: str = "Layer",
                after_each=None) -> Shape:
    """Builds ``layers`` one after the other from ``in_shape``; returns the last output shape. An error names
    the layer that does not fit (``owner`` says where it sits: "Layer", or "residual layer"). ``after_each(i,
    layer)`` runs after each layer is built and may raise to stop before the next one allocates anything."""
    shape = tuple(in_shape)
    for i, layer in enumerate(layers):
        try:
            out_shape = layer.build(shape, rng=rng, dtype=dtype, device=device)
            if after_each is not None:
                after_each(i, layer)
        except NumbacnnError as error:
            raise type(error)(f"{owner} {i + 1} ({layer.name}) with input {shape}: {error}") from None
        except MemoryError as error:  # parameters too large to allocate at all
            raise ShapeError(f"{owner} {i + 1} ({layer!r}) with input {shape}: its parameters do not fit in memory "
                             f"({error}); make the layer smaller.") from None
        shape = out_shape
    return shape


def forward_chain(order: list[Layer], x, training: bool):
    for layer in order:
        x = layer.forward(x, training=training)
    return x


def forward_chain_for_gradients(order: list, x):
    """The evaluation-time outputs of a chain, keeping what ``backward_chain`` needs for their gradients."""
    for step in order:
        x = forward_for_gradients(step, x)
    return x


def forward_for_gradients(step, x):
    """``step.forward_for_gradients(x)``, or for a step that is not a ``Layer`` (two layers run as one),
    its training pass."""
    hook = getattr(step, "forward_for_gradients", None)
    return hook(x) if hook is not None else step.forward(x, training=True)


def backward_chain(order: list[Layer], dy):
    """The input gradient of the chain, or None once a layer that was told it need not give one returns None."""
    for layer in reversed(order):
        dy = layer.backward(dy)
        if dy is None:
            return None
    return dy


class ChildArrays(MutableMapping):
    """One dict made of the children's dicts (``params``, ``grads`` or ``state``), keyed ``"<child>.<name>"``.

    Setting a key replaces the array in the child's own dict, as setting it in a plain layer's dict does."""

    def __init__(self, block: Block, attribute: str):
        self._block, self._attribute = block, attribute

    def _parts(self) -> Iterator[tuple[str, dict]]:
        for prefix, child in self._block.named_children():
            yield prefix, getattr(child, self._attribute)

    def _locate(self, key: str) -> tuple[dict, str]:
        prefix, dot, name = key.partition(".")
        for p, part in self._parts():
            if p == prefix and dot and name in part:
                return part, name
        raise KeyError(key)

    def __getitem__(self, key):
        part, name = self._locate(key)
        return part[name]

    def __setitem__(self, key, value):
        part, name = self._locate(key)
        part[name] = value

    def __delitem__(self, key):
        raise TypeError("A block's arrays belong to its children; they cannot be removed.")

    def __iter__(self):
        for prefix, part in self._parts():
            for name in part:
                yield f"{prefix}.{name}"

    def __len__(self):
        return sum(len(part) for _, part in self._parts())

    def __repr__(self):
        return f"ChildArrays({list(self)})"


class Block(Layer):
    """A layer made of layers: the base class of residual blocks, built in or from a plug-in.

    Args:
        layers: the children, as spec text (``"conv2d(32,3,padding=same) relu"``) or a list of ``Layer``s.

    Subclasses implement ``combine(in_shape, children_shape, rng)``, which returns the block's output shape
    (and may build extra children, such as a projection, listed by ``named_children``), and ``forward`` and
    ``backward``. ``devices`` lists where the block's own kernels run; the children check theirs when built.
    """

    holds_layers = True

    def __init__(self, layers=""):
        super().__init__()
        self.children: list[Layer] = children_from(self.name, layers)
        # The config keeps the children as canonical spec text (every argument by keyword).
        from .spec import layers_text

        self.layers = layers_text(self.children)
        self.params, self.grads, self.state = (ChildArrays(self, a) for a in ("params", "grads", "state"))
        self.execution_order = list(self.children)

    def named_children(self) -> list[tuple[str, Layer]]:
        """(key prefix, layer) of every child: the chain's by position, then any the block added itself."""
        return [(str(i), child) for i, child in enumerate(self.children)]

    def build(self, in_shape: Shape, *, rng: np.random.Generator, dtype=np.float32, device="cpu") -> Shape:
        self.place(in_shape, dtype, device)
        shape = build_chain(self.children, self.in_shape, rng=rng, dtype=self.dtype, device=self.device,
                            owner=f"{self.name} layer")
        self.out_shape = tuple(self.combine(self.in_shape, shape, rng))
        self.execution_order = run_order(self.children)
        return self.out_shape

    def combine(self, in_shape: Shape, children_shape: Shape, rng: np.random.Generator) -> Shape:
        """The block's output shape from its input's and its children's; ``ShapeError`` when they do not go
        together."""
        raise NotImplementedError

    def forward_children(self, x, training: bool):
        if getattr(self, "_for_gradients", False):  # see forward_for_gradients
            return forward_chain_for_gradients(self.execution_order, x)
        return forward_chain(self.execution_order, x, training)

    def forward_for_gradients(self, x):
        """The block's ``forward`` while training, its children running through their own
        ``forward_for_gradients`` (see ``Layer.forward_for_gradients``)."""
        self._for_gradients = True
        try:
            return self.forward(x, training=True)
        finally:
            self._for_gradients = False

    def backward_children(self, dy):
        """The children's input gradient (None when the block need not give one); fills their grads."""
        if self.execution_order:
            self.execution_order[0].needs_input_grad = self.needs_input_grad
        return backward_chain(self.execution_order, dy)

    def output_shape(self, in_shape: Shape) -> Shape:
        raise NotImplementedError("A block's output shape comes from building its children: call build().")

    def param_counts(self) -> tuple[int, int]:
        counts = [child.param_counts() for _, child in self.named_children()]
        return sum(w for w, _ in counts), sum(b for _, b in counts)

    def state_count(self) -> int:
        return sum(child.state_count() for _, child in self.named_children())

    def __repr__(self) -> str:
        others = {k: v for k, v in self.get_config().items() if k != "layers"}
        extra = "".join(f", {k}={v!r}" for k, v in others.items())
        count = len(self.children)
        return f"{self.name}({count} layer{'' if count == 1 else 's'}{extra})"


def children_from(name: str, layers) -> list[Layer]:
    """The children of block ``name`` from spec text or a list of layers; ``SpecError`` when there are none."""
    from .spec import make_layer, parse

    if isinstance(layers, str):
        children = [make_layer(s) for s in parse(layers)] if layers.strip() else []
    elif isinstance(layers, (list, tuple)) and all(isinstance(layer, Layer) for layer in layers):
        children = list(layers)
    else:
        raise SpecError(f"{name}: layers must be a layer spec text or a list of layers, got {layers!r}.")
    if not children:
        raise SpecError(f"{name} needs at least one layer inside its parentheses, e.g. {name}(conv2d(8,3,padding=same) relu).")
    return children


@dataclass(frozen=True)
class Place:
    """Where ``layer`` sits among a chain's layers and their blocks' children: ``key`` counts from 0 and
    names a block's own children as the block does ("0", "3.0", "3.skip"; saved random states are keyed by
    it), ``index`` numbers as ``numbacnn summary`` shows ("1", "4.1", "4.skip"), ``depth`` is 0 for the
    chain's own layers and 1 and more inside blocks."""

    key: str
    index: str
    depth: int
    layer: Layer


def walk(layers: list[Layer]) -> Iterator[Place]:
    """Every layer of the chain ``layers``, each block followed by its children at every depth: the one walk
    that numbering, random states, batch parts and pictures all take."""
    for i, layer in enumerate(layers):
        yield from _walk_from(layer, str(i), str(i + 1), 0)


def _walk_from(layer: Layer, key: str, index: str, depth: int) -> Iterator[Place]:
    yield Place(key, index, depth, layer)
    if isinstance(layer, Block):
        for n, (child_key, child) in enumerate(layer.named_children()):
            child_index = f"{index}.{n + 1}" if child_key.isdigit() else f"{index}.{child_key}"
            yield from _walk_from(child, f"{key}.{child_key}", child_index, depth + 1)


def is_block(cls: Any) -> bool:
    return isinstance(cls, type) and issubclass(cls, Block)
