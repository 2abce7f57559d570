"""LightningDataModules (synthetic default, image/mask folders, CamVid preset), label statistics,
class weights, class-aware crops and rare-class sampling."""

from .base import SegDataModule, collate_samples, seed_worker
from .class_weights import compute_class_weights, print_class_weights, weights_from_statistics
from .crops import ClassFocusedCrop
from .dataset import FolderDataset, SegmentationDataset
from .folder import FolderDataModule
from .inputs import InputImage, InputListing, list_inputs
from .io import read_image_converted, write_index_mask, write_rgb
from .labels import LabelSpec
from .pairing import SamplePair, find_pairs
from .preflight import PreflightError, PreflightReport, SplitCheck
from .samplers import RareClassSampler
from .statistics import LabelStatistics, count_labels
from .synthetic import SHAPES, SyntheticDataModule, SyntheticDataset, render_sample

__all__ = [
    "SHAPES",
    "ClassFocusedCrop",
    "FolderDataModule",
    "FolderDataset",
    "InputImage",
    "InputListing",
    "LabelSpec",
    "LabelStatistics",
    "PreflightError",
    "PreflightReport",
    "RareClassSampler",
    "SamplePair",
    "SegDataModule",
    "SegmentationDataset",
    "SplitCheck",
    "SyntheticDataModule",
    "SyntheticDataset",
    "collate_samples",
    "compute_class_weights",
    "count_labels",
    "find_pairs",
    "list_inputs",
    "print_class_weights",
    "read_image_converted",
    "render_sample",
    "seed_worker",
    "weights_from_statistics",
    "write_index_mask",
    "write_rgb",
]
