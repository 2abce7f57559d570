"""Datamodule test helpers: tiny image/mask files, the CamVid location, composed configs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[2]
CONF_DIR = REPO_ROOT / "conf"
CAMVID = REPO_ROOT.parent / "shared" / "data" / "camvid"


def write_pair(
    root: Path,
    split: str,
    name: str,
    mask: np.ndarray,
    image: np.ndarray | None = None,
    *,
    image_ext: str = ".png",
    mask_suffix: str = "",
) -> None:
    """Write ``<root>/<split>/images/<name><ext>`` and ``<root>/<split>/masks/<name><suffix>.png``."""
    (root / split / "images").mkdir(parents=True, exist_ok=True)
    (root / split / "masks").mkdir(parents=True, exist_ok=True)
    if image is None:
        rng = np.random.default_rng(abs(hash(name)) % 2**32)
        image = rng.integers(0, 256, size=(*mask.shape, 3), dtype=np.uint8)
    Image.fromarray(image).save(root / split / "images" / f"{name}{image_ext}")
    Image.fromarray(mask).save(root / split / "masks" / f"{name}{mask_suffix}.png")


def brute_force_counts(masks: list[np.ndarray], num_classes: int, ignore_index: int | None) -> dict:
    """Per-class pixel counts and image pixel counts by explicit loops (the reference)."""
    pixel = [0] * num_classes
    image_pixel = [0] * num_classes
    total = ignored = 0
    for m in masks:
        labelled = 0
        present = set()
        for v in m.ravel().tolist():
            total += 1
            if v == ignore_index:
                ignored += 1
                continue
            labelled += 1
            pixel[v] += 1
            present.add(v)
        for c in present:
            image_pixel[c] += labelled
    return {"pixel": pixel, "image_pixel": image_pixel, "total": total, "ignored": ignored}


def compose_config(overrides: list[str]):
    """Compose ``conf/`` with only the given overrides (e.g. ``+datamodule=camvid``), no primary config."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(overrides=overrides)
