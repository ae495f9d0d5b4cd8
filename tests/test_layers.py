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


# Words a format is named by that are also ordinary words or the product's name where they appear outside
# storage/: "none" (prose: "calibration: none"), and "projclust" as optimum-cli's command and the prefix of the
# initializers the passes write.
_NOT_FORMAT_NAMES = {("projclust_onnx/cli/optimum.py", "projclust"), ("passes/builder.py", "projclust")}


def _format_words() -> set[str]:
    from projclust_onnx.pipeline.config import SECTION_OF
    from projclust_onnx.storage.registry import FORMATS, methods, plain_storages

    words = {cls.name for cls in FORMATS} | set(methods()) | {fmt.label for fmt in plain_storages(128)}
    return words - {"none"} - set(SECTION_OF)  # a setting's name ("quantize") is a key, not a format


def test_no_module_outside_storage_names_a_format_or_tests_a_stored_type():
    """Issue 28: format knowledge lives in storage/; the rest asks the registry (format_of, method_format)."""
    from projclust_onnx.storage.registry import FORMATS

    words = _format_words()
    stored_types = {cls.__name__ for cls in FORMATS} | {"EmbeddingFactorization", "BlockQuantized", "Codebooks",
                                                         "PerTensorQuantized", "StorageFormat"}
    found = []
    for layer, path in modules():
        if layer == "storage":
            continue
        name = path.relative_to(ROOT).as_posix()
        tree = ast.parse(path.read_text())
        docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                      if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                      and node.body and isinstance(node.body[0], ast.Expr)
                      and isinstance(node.body[0].value, ast.Constant)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings and \
                    node.value in words and (name, node.value) not in _NOT_FORMAT_NAMES:
                found.append(f"{name}:{node.lineno} names {node.value!r}")
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "isinstance" and len(node.args) == 2:
                named = {n.id for n in ast.walk(node.args[1]) if isinstance(n, ast.Name)} | \
                    {n.attr for n in ast.walk(node.args[1]) if isinstance(n, ast.Attribute)}
                if named & stored_types:
                    found.append(f"{name}:{node.lineno} tests the type {sorted(named & stored_types)}")
    assert not found, found
