"""Runs the ``>>>`` examples of every seglosses module and checks that the loss modules have them."""

from __future__ import annotations

import doctest
import importlib
import pkgutil
from types import ModuleType

import pytest

import seglosses

MODULES = sorted(
    {"seglosses"} | {f"seglosses.{info.name}" for info in pkgutil.iter_modules(seglosses.__path__)}
)
# The loss modules whose classes must show examples (and so must run some).
WITH_EXAMPLES = {
    "seglosses.focal": ("FocalLoss", "CrossEntropyLoss"),
    "seglosses.dice": ("DiceLoss",),
    "seglosses.combined": ("CombinedLoss",),
    "seglosses.tversky": ("TverskyLoss",),
    "seglosses.lovasz": ("LovaszLoss",),
    "seglosses.generalized_dice": ("GeneralizedDiceLoss",),
    "seglosses.mining": ("OhemCrossEntropyLoss", "TopKCrossEntropyLoss"),
}


def run_examples(module: ModuleType) -> tuple[int, int, str]:
    """(failed, attempted, report) of the doctests found in ``module``."""
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
    report: list[str] = []
    failed = attempted = 0
    for test in finder.find(module, module.__name__):
        result = runner.run(test, out=report.append, clear_globs=True)
        failed += result.failed
        attempted += result.attempted
    return failed, attempted, "".join(report)


def test_every_loss_module_is_covered():
    assert set(WITH_EXAMPLES) <= set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_examples_pass(name):
    module = importlib.import_module(name)
    failed, attempted, report = run_examples(module)
    assert failed == 0, report
    if name in WITH_EXAMPLES:
        assert attempted > 0, f"{name} has no doctest examples"


@pytest.mark.parametrize(("name", "cls"), [(m, c) for m, classes in WITH_EXAMPLES.items() for c in classes])
def test_loss_modules_document_shapes_and_examples(name, cls):
    doc = getattr(importlib.import_module(name), cls).__doc__
    assert "Shape:" in doc and "Examples::" in doc and ">>>" in doc, cls


def test_a_failing_example_is_reported():
    """The runner above does fail on a wrong output (so a passing test means something)."""
    broken = ModuleType("broken")
    broken.__doc__ = ">>> 1 + 1\n3\n"
    failed, attempted, report = run_examples(broken)
    assert (failed, attempted) == (1, 1) and "Expected" in report
