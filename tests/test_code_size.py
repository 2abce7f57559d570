"""Size limits of the packages' code: no module over :data:`MAX_MODULE_LINES` lines, no function whose body
has over :data:`MAX_FUNCTION_LINES` lines of code (its signature, docstring, comments and blank lines not
counted). Tests and benchmarks are not checked."""

from __future__ import annotations

import ast
import io
import tokenize
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("seglosses", "safeio", "datamodules", "evaluation", "models", "inference", "runs")
ENTRY_POINTS = ("train.py", "predict.py", "export.py", "evaluate.py")
MAX_MODULE_LINES = 450
MAX_FUNCTION_LINES = 60


def package_files(root: Path = ROOT) -> list[Path]:
    files = [p for package in PACKAGES for p in sorted((root / package).rglob("*.py"))]
    return files + [root / name for name in ENTRY_POINTS]


def _code_lines(source: str) -> set[int]:
    """Line numbers that hold code: not blank, not only a comment (a string on its own is code here; the
    docstrings are taken out by :func:`function_sizes`)."""
    lines: set[int] = set()
    skip = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT,
            tokenize.ENCODING, tokenize.ENDMARKER}
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type not in skip:
            lines.update(range(token.start[0], token.end[0] + 1))
    return lines


def function_sizes(source: str) -> list[tuple[str, int, int]]:
    """``(qualified name, line of its ``def``, lines of code of its body)`` of every function and method in
    ``source``; a function's body includes the functions nested in it."""
    tree = ast.parse(source)
    code = _code_lines(source)
    docstrings: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Module)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                docstrings.update(range(body[0].lineno, body[0].end_lineno + 1))
    sizes = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                name = prefix + child.name
                first = child.body[0].lineno  # the body: not the signature
                lines = set(range(first, child.end_lineno + 1)) & code - docstrings
                sizes.append((name, child.lineno, len(lines)))
                visit(child, name + ".")
            elif isinstance(child, ast.ClassDef):
                visit(child, prefix + child.name + ".")
            else:
                visit(child, prefix)

    visit(tree, "")
    return sizes


def offenders(files: list[Path], root: Path = ROOT) -> list[str]:
    """One line per module over :data:`MAX_MODULE_LINES` lines and per function over
    :data:`MAX_FUNCTION_LINES` lines of code."""
    found = []
    for path in files:
        source = path.read_text()
        where = path.relative_to(root)
        lines = len(source.splitlines())
        if lines > MAX_MODULE_LINES:
            found.append(f"{where}: {lines} lines (at most {MAX_MODULE_LINES})")
        for name, line, size in function_sizes(source):
            if size > MAX_FUNCTION_LINES:
                found.append(f"{where}:{line} {name}: {size} lines of code (at most {MAX_FUNCTION_LINES})")
    return found


def test_no_module_or_function_of_the_packages_is_too_long():
    found = offenders(package_files())
    assert not found, "split these:\n" + "\n".join(found)


def test_an_over_long_function_and_module_are_named(tmp_path):
    body = "\n".join(f"    x{i} = {i}  # comment" for i in range(MAX_FUNCTION_LINES))
    doc = '"""Docstring\n    of two lines."""'
    source = f"def long(\n    a,\n    b,\n):\n    {doc}\n    # a comment\n\n{body}\n    return x0\n"
    assert function_sizes(source) == [("long", 1, MAX_FUNCTION_LINES + 1)]  # the body and the return
    short = f"def short():\n    {doc}\n{body}\n"
    assert function_sizes(short) == [("short", 1, MAX_FUNCTION_LINES)]
    path = tmp_path / "pkg" / "big.py"
    path.parent.mkdir()
    path.write_text(source + "\n" * MAX_MODULE_LINES)
    found = offenders([path], tmp_path)
    lines = len(path.read_text().splitlines())
    assert found == [
        f"pkg/big.py: {lines} lines (at most {MAX_MODULE_LINES})",
        f"pkg/big.py:1 long: {MAX_FUNCTION_LINES + 1} lines of code (at most {MAX_FUNCTION_LINES})",
    ]


def test_methods_and_nested_functions_are_counted():
    source = "class A:\n    def f(self):\n        def g():\n            return 1\n        return g()\n"
    assert function_sizes(source) == [("A.f", 2, 3), ("A.f.g", 3, 1)]
