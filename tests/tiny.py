"""Tiny networks and data for the models tests (32x32 images, a ~0.1M-parameter smp U-Net); the fixtures of
``tests/conftest.py`` hand these out."""

from __future__ import annotations

import functools

import pytorch_lightning as pl
import segmentation_models_pytorch as smp
import torch
from torch.utils.data import DataLoader, Dataset

from models import SegmentationModule, build_network


class RandomSegmentation(Dataset):
    """Images whose first channel encodes the class (learnable), masks with a few ignored pixels."""

    def __init__(
        self, n: int = 8, num_classes: int = 3, size: int = 32, ignore_index: int | None = 255, seed: int = 0
    ) -> None:
        g = torch.Generator().manual_seed(seed)
        self.masks = torch.randint(0, num_classes, (n, size, size), generator=g)
        self.images = torch.randn(n, 3, size, size, generator=g) * 0.1
        self.images[:, 0] += self.masks.float()
        if ignore_index is not None:
            self.masks[:, 0, :4] = ignore_index

    def __len__(self) -> int:
        return len(self.masks)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i], "mask": self.masks[i], "name": f"sample_{i}"}


class RandomMultilabelSegmentation(Dataset):
    """Multilabel (C, H, W) {0, 1} masks (labels overlap) with image channel c encoding label c; the first
    4 pixels of row 0 ignored (``ignore_index`` in every channel), as the datamodules deliver them."""

    def __init__(
        self, n: int = 8, num_labels: int = 3, size: int = 32, ignore_index: int = 255, seed: int = 0
    ) -> None:
        g = torch.Generator().manual_seed(seed)
        self.masks = torch.randint(0, 2, (n, num_labels, size, size), generator=g)
        self.images = torch.randn(n, num_labels, size, size, generator=g) * 0.1 + self.masks.float()
        self.masks[:, :, 0, :4] = ignore_index

    def __len__(self) -> int:
        return len(self.masks)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i], "mask": self.masks[i], "name": f"sample_{i}"}


def loader(**kwargs) -> DataLoader:
    return DataLoader(RandomSegmentation(**kwargs), batch_size=4)


def multilabel_loader(**kwargs) -> DataLoader:
    return DataLoader(RandomMultilabelSegmentation(**kwargs), batch_size=4)


def tiny_network(num_classes: int = 3, mode: str = "multiclass"):
    arch = functools.partial(smp.Unet, decoder_channels=(16, 8, 8))
    return build_network(
        arch, num_classes=num_classes, mode=mode, encoder_name="tu-test_resnet", encoder_depth=3
    )


def make_module(loss: torch.nn.Module, num_classes: int = 3, mode: str = "multiclass", **kwargs):
    torch.manual_seed(0)
    options = {
        "class_names": ["background", "Car", "Pedestrian"][:num_classes],
        "ignore_index": 255,
        "print_tables": "none",
        **kwargs,
    }
    return SegmentationModule(
        tiny_network(num_classes, mode),
        loss,
        functools.partial(torch.optim.Adam, lr=1e-2),
        num_classes=num_classes,
        mode=mode,
        **options,
    )


def trainer(**kwargs) -> pl.Trainer:
    options = {
        "accelerator": "cpu",
        "devices": 1,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
    }
    return pl.Trainer(**{**options, **kwargs})
