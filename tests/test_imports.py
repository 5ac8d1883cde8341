"""The package's modules import each other without a circle (issue 21): a module that
needs another only as a type imports it under TYPE_CHECKING, and the walk below counts
every import, the lazy ones inside functions included."""

from __future__ import annotations

import ast
import os

import imgfit_batch

PACKAGE = os.path.dirname(imgfit_batch.__file__)


def modules() -> dict[str, str]:
    out = {}
    for folder, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                dotted = "imgfit_batch." + os.path.relpath(path, PACKAGE)[:-3].replace(os.sep, ".")
                out[dotted.removesuffix(".__init__")] = path
    return out


def imported(path: str, name: str, known: set[str], type_checking: bool = False) -> set[str]:
    """The package modules `path` imports anywhere, except under `if TYPE_CHECKING:` (there
    too with `type_checking`)."""
    found: set[str] = set()
    package = name if path.endswith("__init__.py") else name.rsplit(".", 1)[0]

    class Walk(ast.NodeVisitor):
        def visit_If(self, node: ast.If) -> None:
            test = node.test
            checking = getattr(test, "id", None) == "TYPE_CHECKING" or getattr(test, "attr", None) == "TYPE_CHECKING"
            if checking and not type_checking:
                for child in node.orelse:
                    self.visit(child)
                return
            self.generic_visit(node)

        def visit_Import(self, node: ast.Import) -> None:
            found.update(alias.name for alias in node.names)

        def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            for alias in node.names:  # `from pkg import module` imports the module; `from m import name`, m
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)

    with open(path, encoding="utf-8") as fh:
        Walk().visit(ast.parse(fh.read()))
    return {m for m in found if m in known and m != name}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt, path + [nxt])):
                return cycle
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start, [start])):
            return cycle
    return None


def test_the_package_has_no_import_cycle():
    known = modules()
    graph = {name: imported(path, name, set(known)) for name, path in known.items()}
    assert len(graph) > 20 and graph["imgfit_batch.job"], "the walk sees the package and its imports"
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_spec_and_the_recipe_do_not_import_each_other_not_even_for_types():
    """The spec is the schema: it knows nothing of the recipe that fills in what it leaves
    unset, and the recipe reads a spec's fields without importing its module."""
    known = modules()
    for a, b in (("imgfit_batch.spec", "imgfit_batch.recipe"), ("imgfit_batch.recipe", "imgfit_batch.spec")):
        assert b not in imported(known[a], a, set(known), type_checking=True), f"{a} imports {b}"


def test_the_walk_sees_imports_made_for_types_only_when_asked():
    known = modules()
    train = known["imgfit_batch.train"]  # imports the checkpoint policy for its type only
    assert "imgfit_batch.checkpoint" not in imported(train, "imgfit_batch.train", set(known))
    assert "imgfit_batch.checkpoint" in imported(train, "imgfit_batch.train", set(known), type_checking=True)


def test_no_module_reaches_into_another_modules_private_names():
    """`from imgfit_batch.x import _name` and `x._name` (x an imported package module) are
    a private name used across a boundary: make it public where it is defined instead.
    A package may re-export its own submodules' names (storage/__init__)."""
    known = set(modules())
    found = []
    for name, path in sorted(modules().items()):
        tree = ast.parse(open(path).read())
        aliases = {}  # local name -> package module
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("imgfit_batch"):
                for alias in node.names:
                    target = f"{node.module}.{alias.name}"
                    if target in known:
                        aliases[alias.asname or alias.name] = target
                    elif _private(alias.name) and not node.module.startswith(name + "."):
                        found.append(f"{name}: from {node.module} import {alias.name}")
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in aliases
                and _private(node.attr)
            ):
                found.append(f"{name}:{node.lineno}: {node.value.id}.{node.attr}")
    assert not found, found


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))
