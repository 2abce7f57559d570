"""runs.errors.prefixed: the one way a failed value's config key is put in front of its message."""

from __future__ import annotations

from runs.errors import prefixed


class TwoArgumentError(ValueError):
    def __init__(self, message: str, problems: list[str]) -> None:
        super().__init__(message)
        self.problems = problems


def test_same_type_with_the_key_and_the_hint():
    error = prefixed(ValueError("alpha must be in [0, 1]"), "loss.module.losses.focal")
    assert type(error) is ValueError and str(error) == "loss.module.losses.focal: alpha must be in [0, 1]"
    error = prefixed(FileNotFoundError("no such folder"), "datamodule.root")
    assert type(error) is FileNotFoundError and str(error) == "datamodule.root: no such folder"
    error = prefixed(ValueError("Invalid weight_decay value: -1"), "optimizer",
                     hint="check the optimizer.* values")
    assert str(error) == "optimizer: Invalid weight_decay value: -1 (check the optimizer.* values)"


def test_a_type_of_another_signature_is_kept_as_it_is():
    original = TwoArgumentError("bad", ["a"])
    assert prefixed(original, "datamodule") is original
