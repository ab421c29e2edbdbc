"""Datasets, transforms and loaders."""
from .data_manager import DatasetWrapper, build_data_loader
from .datasets import DATASET_REGISTRY, DatasetBase, Datum, build_dataset
from .transforms import build_transform

__all__ = [
    "DATASET_REGISTRY",
    "DatasetBase",
    "DatasetWrapper",
    "Datum",
    "build_data_loader",
    "build_dataset",
    "build_transform",
]
