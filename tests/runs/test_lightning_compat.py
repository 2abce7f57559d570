"""The private Lightning members the project uses (runs.lightning_compat) exist in the installed
pytorch_lightning, which is at least the floor of pyproject.toml."""

from __future__ import annotations

import re
from pathlib import Path

import pytorch_lightning
from pytorch_lightning.callbacks import EMAWeightAveraging, ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter
from pytorch_lightning.strategies import DDPStrategy

from runs.lightning_compat import CHECKED_WITH, PRIVATE_MEMBERS

ROOT = Path(__file__).resolve().parents[2]


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


def floor() -> str:
    """The ``pytorch-lightning>=`` of pyproject.toml."""
    match = re.search(r'"pytorch-lightning>=([\d.]+)"', (ROOT / "pyproject.toml").read_text())
    assert match, "pyproject.toml names no pytorch-lightning floor"
    return match.group(1)


def test_private_members_exist_in_the_installed_version(tmp_path, record_property):
    record_property("pytorch_lightning", pytorch_lightning.__version__)
    missing = [f"{cls.__name__}.{name}" for cls, name in PRIVATE_MEMBERS if not hasattr(cls, name)]
    instances = {
        "ModelCheckpoint._last_global_step_saved": ModelCheckpoint(dirpath=tmp_path),
        "ModelCheckpoint._last_checkpoint_saved": ModelCheckpoint(dirpath=tmp_path),
        "EMAWeightAveraging._average_model": EMAWeightAveraging(),
        "CSVLogger._fs": CSVLogger(tmp_path),
        "CSVLogger._experiment": CSVLogger(tmp_path),
        "ExperimentWriter._fs": ExperimentWriter(str(tmp_path / "log")),
        "DDPStrategy._launcher": DDPStrategy(),
    }
    missing += [key for key, obj in instances.items() if not hasattr(obj, key.split(".")[1])]
    assert not missing, (
        f"pytorch_lightning {pytorch_lightning.__version__} lacks {missing}: update runs/lightning_compat.py "
        f"(checked with {CHECKED_WITH})"
    )


def test_installed_version_is_at_least_the_floor_and_the_floor_was_checked():
    assert _version(pytorch_lightning.__version__) >= _version(floor())
    assert floor() == min(CHECKED_WITH, key=_version)
