"""The package is layered: a module imports only from its own layer or those below it.

common < storage < core < passes < pipeline < nn, benchmark < cli (see the README's layout)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = {"common": 0, "storage": 1, "core": 2, "passes": 3, "pipeline": 4, "nn": 5, "benchmark": 5, "cli": 6}


def modules():
    for path in sorted((ROOT / "projclust_onnx").rglob("*.py")):
        parts = path.relative_to(ROOT / "projclust_onnx").parts
        if len(parts) > 1 and parts[0] in LAYERS:
            yield parts[0], path
    for path in sorted((ROOT / "passes").rglob("*.py")):
        yield "passes", path


def imported_layers(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        names = [node.module] if isinstance(node, ast.ImportFrom) and node.module else \
            [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
        for name in names:
            parts = name.split(".")
            if parts[0] == "projclust_onnx" and len(parts) > 1 and parts[1] in LAYERS:
                yield parts[1], name


@pytest.mark.parametrize(("layer", "path"), list(modules()), ids=lambda x: str(x).rsplit("/", 2)[-2:][-1])
def test_imports_only_go_down(layer, path):
    upward = [name for other, name in imported_layers(path)
              if LAYERS[other] > LAYERS[layer] or (LAYERS[other] == LAYERS[layer] and other != layer)]
    assert not upward, f"{path.relative_to(ROOT)} ({layer}) imports from above or beside its layer: {upward}"


def test_every_subpackage_is_a_layer():
    found = {p.name for p in (ROOT / "projclust_onnx").iterdir() if (p / "__init__.py").is_file()}
    assert found - {"optimum_register"} <= set(LAYERS), found


def module_name(path: Path) -> str:
    if path.is_relative_to(ROOT / "passes"):
        return "projclust_onnx.passes." + ".".join(path.relative_to(ROOT / "passes").with_suffix("").parts)
    return ".".join(path.relative_to(ROOT).with_suffix("").parts)


def test_no_import_circle_even_through_function_local_imports():
    """Issue 28: an import made inside a function (to keep --help from loading torch) must not hide a circle."""
    paths = [*(ROOT / "projclust_onnx").rglob("*.py"), *(ROOT / "passes").rglob("*.py")]
    names = {module_name(p).removesuffix(".__init__"): p for p in paths}
    edges = {name: set() for name in names}
    for name, path in names.items():
        for node in ast.walk(ast.parse(path.read_text())):
            targets = [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level else \
                [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
            for target in targets:
                # `from package import module` names the module; `from module import name` the module
                found = [t for t in (f"{target}.{a.name}" for a in getattr(node, "names", [])) if t in names] \
                    if isinstance(node, ast.ImportFrom) else []
                found += [target] if target in names and not found else []
                edges[name] |= {t for t in found if t != name and not t.startswith(name + ".")}
    # a package's __init__ re-exporting its modules is not a circle with them
    circles, state = [], {}

    def visit(node, stack):
        state[node] = "open"
        for other in sorted(edges[node]):
            if other.startswith(node + ".") or node.startswith(other + "."):
                continue
            if state.get(other) == "open":
                circles.append(stack[stack.index(other):] + [other])
            elif other not in state:
                visit(other, [*stack, other])
        state[node] = "done"

    for name in sorted(edges):
        if name not in state:
            visit(name, [name])
    assert not circles, circles
