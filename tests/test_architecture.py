"""The shape of the house: numbacnn's modules import one another without circles.

Every import counts, at the top of a file or inside a function: a function-level import only puts off the
moment a circle bites. The graph is read from the source (nothing is imported), so the test also names the
modules of a circle when there is one.
"""

from __future__ import annotations

import ast
from pathlib import Path

import numbacnn

PACKAGE = Path(numbacnn.__file__).parent


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The numbacnn modules that the module ``name`` imports anywhere in its source."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            # "from . import checkpoint" names a module; "from .model import Sequential" a name in one.
            found.update(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names)
    return {module for module in found if module in known and module != name}


def import_graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imports(name, path, set(found)) for name, path in found.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm), each sorted."""
    index, low, stack, on_stack, components = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components


def test_the_graph_is_read_from_the_source():
    graph = import_graph()
    assert "numbacnn.model" in graph["numbacnn.train"] and "numbacnn.layer" in graph["numbacnn.layers.conv2d"]
    assert "numbacnn.checkpoint" in graph["numbacnn.run"]  # "from . import checkpoint", inside a function


def test_a_circle_is_found_and_named():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_module_of_numbacnn_imports_itself_back():
    graph = import_graph()
    assert cycles(graph) == [], "import circles: " + "; ".join(" <-> ".join(c) for c in cycles(graph))


def test_outside_layers_only_the_filter_pictures_name_a_layer():
    """What the house needs from a layer (its export, its PyTorch twin, its place in the pictures and in the
    run order) is asked of the layer: only the filter pictures, which are pictures of conv2d's weights,
    import a layer package."""
    graph = import_graph()
    naming = {name: sorted(t for t in targets if t.startswith("numbacnn.layers."))
              for name, targets in graph.items() if not name.startswith("numbacnn.layers")}
    assert {name: found for name, found in naming.items() if found} == {
        "numbacnn.show.network": ["numbacnn.layers.conv2d"]}


def test_a_layer_declares_the_run_order_it_takes():
    from numbacnn.block import run_order
    from numbacnn.layers.avgpool2d import AvgPool2D
    from numbacnn.layers.maxpool2d import MaxPool2D
    from numbacnn.layers.relu import ReLU

    class PoolingThatCommutes(AvgPool2D):  # as a plug-in would declare it (true of max pooling only)
        moves_ahead_of = (ReLU,)

    relu, pool, avg, other = ReLU(), PoolingThatCommutes(), AvgPool2D(), MaxPool2D()
    assert run_order([relu, pool]) == [pool, relu]
    assert run_order([relu, avg]) == [relu, avg]  # nothing declared: as written
    # On the CPU max pooling's kernels do not fuse the ReLU after it, so the two stay two steps.
    other.kernels = object()
    assert run_order([ReLU(), other])[0] is other and len(run_order([ReLU(), other])) == 2
