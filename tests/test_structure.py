"""The package stays readable (issue 29): no function in imgfit_batch/ over 60 lines,
and the job's run is an outline a reader takes in at once."""

from __future__ import annotations

import ast
import os

import imgfit_batch

PACKAGE = os.path.dirname(imgfit_batch.__file__)
MAX_FUNCTION_LINES = 60
MAX_RUN_LINES = 50


def functions(tree: ast.AST) -> list[tuple[str, int]]:
    """(qualified name, lines) of every function and method in `tree`, nested ones included."""
    found = []

    def walk(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                assert child.end_lineno is not None
                found.append((prefix + child.name, child.end_lineno - child.lineno + 1))
                walk(child, f"{prefix}{child.name}.")
            elif isinstance(child, ast.ClassDef):
                walk(child, f"{prefix}{child.name}.")
            else:
                walk(child, prefix)

    walk(tree, "")
    return found


def package_functions() -> dict[str, int]:
    out = {}
    for folder, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                with open(path, encoding="utf-8") as fh:
                    for qualname, lines in functions(ast.parse(fh.read())):
                        out[f"{os.path.relpath(path, PACKAGE)}:{qualname}"] = lines
    return out


def test_no_function_in_the_package_is_over_60_lines():
    found = package_functions()
    assert len(found) > 300 and "job.py:Job.run" in found, "the walk sees the package's functions"
    long = sorted(((lines, name) for name, lines in found.items() if lines > MAX_FUNCTION_LINES), reverse=True)
    assert not long, f"over {MAX_FUNCTION_LINES} lines (split them into named steps): {long}"


def test_the_jobs_run_is_an_outline_of_at_most_50_lines():
    assert package_functions()["job.py:Job.run"] <= MAX_RUN_LINES


def test_the_walk_counts_a_long_function_and_a_method():
    source = "class A:\n    def m(self):\n" + "        x = 1\n" * 70 + "def f():\n    return 1\n"
    assert dict(functions(ast.parse(source))) == {"A.m": 71, "f": 2}
