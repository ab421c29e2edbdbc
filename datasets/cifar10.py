"""CIFAR-10 in torchvision's format: ``<root>/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}``.

When the folder is absent and ``DATASET.DOWNLOAD`` is True, torchvision downloads it (network needed);
otherwise the error says where to put the files. Class names come from ``batches.meta`` (label order).
"""
from __future__ import annotations

import os

import numpy as np

from dassl.data.datasets import DATASET_REGISTRY

from .common import DatasetFilesMissing, RealDataset, dataset_root
from .torchvision_format import cifar_images, read_cifar_batch, to_items


def ensure_cifar(cls: type[RealDataset], cfg, torchvision_name: str) -> str:
    """``<root>/<cls.dataset_dir>``; downloads with torchvision when it is absent and ``DATASET.DOWNLOAD``."""
    root = dataset_root(cfg)
    if cls.missing(root) and cfg.DATASET.DOWNLOAD:
        import torchvision

        try:
            getattr(torchvision.datasets, torchvision_name)(root=root, train=True, download=True)
        except Exception as err:  # noqa: BLE001  (any network/IO failure: explain and fall through)
            missing = cls.missing(root)
            raise DatasetFilesMissing(cls.missing_message(root, [*missing, f"(download failed: {err})"])) from None
    cls.check(root)
    return os.path.join(root, cls.dataset_dir)


@DATASET_REGISTRY.register()
class CIFAR10(RealDataset):
    dataset_dir = "cifar-10-batches-py"
    REQUIRED = tuple((f"data_batch_{i}", "train batch") for i in range(1, 6)) + (
        ("test_batch", "test batch"), ("batches.meta", "class names"))
    HOW_TO = ("download cifar-10-python.tar.gz (https://www.cs.toronto.edu/~kriz/cifar.html) and extract it in the "
              "data root (giving cifar-10-batches-py/), or run once with network access (DATASET.DOWNLOAD True)")
    TEMPLATE = "a photo of a {}."

    def __init__(self, cfg):
        folder = ensure_cifar(type(self), cfg, "CIFAR10")
        classnames = read_cifar_batch(os.path.join(folder, "batches.meta"), ("label_names",))["label_names"]
        splits = {}
        for split, names in (("train", [f"data_batch_{i}" for i in range(1, 6)]), ("test", ["test_batch"])):
            items = []
            for name in names:
                path = os.path.join(folder, name)
                batch = read_cifar_batch(path, ("data", "labels"))
                items += to_items(cifar_images(batch, path), np.asarray(batch["labels"]), classnames, path)
            splits[split] = items
        self.finish(cfg, splits["train"], [], splits["test"], classnames, folder)
