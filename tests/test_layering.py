"""The packages' layers (README, "Packages"): a layer imports only the layers below it.

Lowest first: ``seglosses`` and ``safeio`` import nothing of ours; ``datamodules`` and ``evaluation`` (beside
each other: neither imports the other) import only those two; ``models`` adds ``evaluation``;
``inference`` adds ``models``; ``runs`` may import anything; the entry points ``train.py``, ``predict.py``,
``export.py`` and ``evaluate.py`` sit on top. Every ``import`` in a module counts, also one inside a
function."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BASE = {"seglosses", "safeio"}
#: The packages of ours each package may import (besides itself).
ALLOWED: dict[str, set[str]] = {
    "seglosses": set(),
    "safeio": set(),
    "datamodules": BASE,
    "evaluation": BASE,
    "models": BASE | {"evaluation"},
    "inference": BASE | {"evaluation", "models"},
    "runs": BASE | {"datamodules", "evaluation", "models", "inference"},
}
ENTRY_POINTS = ("train", "predict", "export", "evaluate")
OURS = set(ALLOWED) | set(ENTRY_POINTS)


def imported_packages(source: str, package: str) -> set[str]:
    """The top-level packages of ours that ``source`` (a module of ``package``) imports."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [package] if node.level else [node.module or ""]
        else:
            continue
        found |= {name.split(".")[0] for name in names if name.split(".")[0] in OURS}
    return found - {package}


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """``{module path: packages of ours it imports}`` of every module of the packages and entry points."""
    graph = {}
    for package in ALLOWED:
        for path in sorted((root / package).rglob("*.py")):
            graph[str(path.relative_to(root))] = imported_packages(path.read_text(), package)
    for name in ENTRY_POINTS:
        graph[f"{name}.py"] = imported_packages((root / f"{name}.py").read_text(), name)
    return graph


def violations(graph: dict[str, set[str]]) -> list[str]:
    """One line per import of a layer above (or beside) the importing module's."""
    found = []
    for module, imports in sorted(graph.items()):
        package = module.split("/")[0].removesuffix(".py")
        if package in ENTRY_POINTS:
            allowed = set(ALLOWED)  # the entry points sit on top (and import no other entry point)
        else:
            allowed = ALLOWED[package]
        for imported in sorted(imports - allowed):
            found.append(f"{module} imports {imported}, a layer not below {package}")
    return found


def test_every_layer_imports_only_the_layers_below_it():
    found = violations(import_graph())
    assert not found, "\n".join(found)


def test_an_import_of_a_layer_above_is_reported():
    graph = {
        "datamodules/base.py": {"seglosses", "models"},
        "evaluation/files.py": {"datamodules"},
        "models/module.py": {"evaluation", "inference"},
        "seglosses/focal.py": set(),
        "train.py": {"runs"},
    }
    assert violations(graph) == [
        "datamodules/base.py imports models, a layer not below datamodules",
        "evaluation/files.py imports datamodules, a layer not below evaluation",
        "models/module.py imports inference, a layer not below models",
    ]


def test_imports_are_found_anywhere_in_a_module():
    source = ("import models.networks\nfrom . import cache\nfrom runs.build import build\n"
              "def f():\n    from inference import predict_probabilities\n    import torch\n")
    assert imported_packages(source, "datamodules") == {"models", "runs", "inference"}
