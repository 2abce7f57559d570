"""Reading checkpoints, one way for every reader (:func:`read_checkpoint`: resume checks, ``train=false``
evaluation, inference, export), and loading their weights into a model with a clear error when they do not
fit it (:func:`check_checkpoint`, :func:`load_checkpoint_weights`)."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from models.gamma_schedule import restore_loss_gammas

__all__ = ["CheckpointMismatchError", "check_checkpoint", "load_checkpoint_weights", "read_checkpoint"]

HPARAMS_CHECKED = ("mode", "num_classes", "class_names")


class CheckpointMismatchError(ValueError):
    """The checkpoint's weights or label metadata do not fit the model built from the config."""


def read_checkpoint(path: str | Path, *, weights_only: bool = True) -> dict[str, Any]:
    """The Lightning checkpoint at ``path``, loaded on the CPU.

    ``weights_only=True`` (default) loads tensors and plain containers only, so loading cannot run code from
    the file (inference, export: checkpoints of anyone); ``False`` also loads the optimizer and callback
    states of the project's own training checkpoints (resume, ``train=false``).

    Raises:
        FileNotFoundError: no file at ``path`` (the message names the ``ckpt_path=`` override).
        ValueError: the file is truncated, not a PyTorch checkpoint, holds Python objects other than tensors
            and plain values (``weights_only``), or has no ``state_dict``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"checkpoint not found: {path} (ckpt_path={path}); give the path of a .ckpt file, e.g. "
            "<run dir>/checkpoints/last.ckpt"
        )
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=weights_only)
    except pickle.UnpicklingError as e:
        if not weights_only or not zipfile.is_zipfile(path):  # not torch.save's zip: no checkpoint at all
            raise ValueError(_unreadable(path, e)) from None
        raise ValueError(
            f"{path} holds Python objects other than tensors and plain values, so it was not written by "
            f"this project's training; it is not loaded (weights_only): {str(e).splitlines()[0]}"
        ) from None
    except Exception as e:  # RuntimeError, EOFError, zipfile errors, KeyError of a text file, ...
        raise ValueError(_unreadable(path, e)) from None
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        raise ValueError(f"{path} is not a PyTorch Lightning checkpoint (no 'state_dict' entry)")
    return checkpoint


def _unreadable(path: Path, error: BaseException) -> str:
    first = str(error).splitlines()[0] if str(error) else ""
    return (f"cannot read checkpoint {path} ({path.stat().st_size} bytes): the file is truncated or not a "
            f"PyTorch checkpoint ({type(error).__name__}: {first})")


def check_checkpoint(
    module: nn.Module, checkpoint: dict[str, Any], path: str | Path = "<checkpoint>"
) -> None:
    """Raise :class:`CheckpointMismatchError` naming the cause if ``checkpoint`` cannot be loaded into
    ``module`` strictly: different label metadata (mode, num_classes, class names, from the saved
    hyperparameters), missing or unexpected weights (another architecture or encoder), or weights of
    another shape (e.g. another number of classes or decoder width)."""
    problems: list[str] = []
    saved = checkpoint.get("hyper_parameters") or {}
    current = getattr(module, "hparams", {}) or {}
    for key in HPARAMS_CHECKED:
        in_checkpoint, in_model = _tuples_to_lists(saved.get(key)), _tuples_to_lists(current.get(key))
        if key in saved and key in current and in_checkpoint != in_model:
            problems.append(f"{key}: checkpoint {in_checkpoint!r}, model {in_model!r}")

    state = checkpoint["state_dict"]
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k}: checkpoint {tuple(state[k].shape)}, model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and hasattr(state[k], "shape") and tuple(state[k].shape) != tuple(v.shape)
    ]
    if shapes:
        problems.append(f"{len(shapes)} weights differ in shape, e.g. " + "; ".join(shapes[:3]))
    if missing:
        problems.append(f"{len(missing)} weights of the model are missing, e.g. {missing[:3]}")
    if unexpected:
        problems.append(f"{len(unexpected)} weights are not in the model, e.g. {unexpected[:3]}")
    if problems:
        raise CheckpointMismatchError(
            f"checkpoint {path} does not match the model built from the config:\n  - "
            + "\n  - ".join(problems)
            + "\nBuild the model with the options of the training run (model=, model.encoder_*, datamodule=, "
            "see <run dir>/.hydra/config.yaml)."
        )


def load_checkpoint_weights(module: nn.Module, path: str | Path) -> dict[str, Any]:
    """:func:`read_checkpoint` (the project's own training checkpoint: not ``weights_only``),
    :func:`check_checkpoint`, then load the weights strictly, call the module's ``on_load_checkpoint`` and
    set the focal gammas the checkpoint recorded (:func:`models.gamma_schedule.restore_loss_gammas`).
    Returns the checkpoint."""
    checkpoint = read_checkpoint(path, weights_only=False)
    check_checkpoint(module, checkpoint, path)
    module.load_state_dict(checkpoint["state_dict"], strict=True)
    hook = getattr(module, "on_load_checkpoint", None)
    if callable(hook):
        hook(checkpoint)
    restore_loss_gammas(getattr(module, "loss", module), checkpoint)
    return checkpoint


def _tuples_to_lists(value: Any) -> Any:
    """``value`` with every list and tuple in it made a list, so that saved and current hyperparameters
    compare equal whichever sequence type each side holds."""
    if isinstance(value, (list, tuple)):
        return [_tuples_to_lists(v) for v in value]
    return value
