"""CIFAR-100 in torchvision's format: ``<root>/cifar-100-python/{train,test,meta}``.

Fine labels are the classes (names from ``meta``'s ``fine_label_names``, label order); the coarse
labels give ``coarse_of_fine`` (fine label -> superclass), which the hierarchical Dirichlet partition
(``noniid-labeldir100``) needs. Downloads through torchvision when allowed, like CIFAR-10.
"""
from __future__ import annotations

import os

import numpy as np

from dassl.data.datasets import DATASET_REGISTRY
from federated.errors import DataError

from .cifar10 import ensure_cifar
from .common import RealDataset
from .torchvision_format import cifar_images, read_cifar_batch, to_items


@DATASET_REGISTRY.register()
class CIFAR100(RealDataset):
    dataset_dir = "cifar-100-python"
    REQUIRED = (("train", "train split"), ("test", "test split"), ("meta", "class names"))
    HOW_TO = ("download cifar-100-python.tar.gz (https://www.cs.toronto.edu/~kriz/cifar.html) and extract it in the "
              "data root (giving cifar-100-python/), or run once with network access (DATASET.DOWNLOAD True)")
    TEMPLATE = "a photo of a {}."

    def __init__(self, cfg):
        folder = ensure_cifar(type(self), cfg, "CIFAR100")
        meta = read_cifar_batch(os.path.join(folder, "meta"), ("fine_label_names",))
        classnames = meta["fine_label_names"]
        self.coarse_classnames = meta.get("coarse_label_names", [])
        coarse_of_fine: dict[int, int] = {}
        splits = {}
        for split in ("train", "test"):
            path = os.path.join(folder, split)
            batch = read_cifar_batch(path, ("data", "fine_labels", "coarse_labels"))
            fine, coarse = np.asarray(batch["fine_labels"]), np.asarray(batch["coarse_labels"])
            for f, c in zip(fine.tolist(), coarse.tolist(), strict=True):
                if coarse_of_fine.setdefault(f, c) != c:
                    raise DataError(f"{path}: fine label {f} appears under coarse labels {coarse_of_fine[f]} and {c}")
            splits[split] = to_items(cifar_images(batch, path), fine, classnames, path)
        #: ``coarse_of_fine[f]``: the superclass of fine label ``f`` (length = number of classes)
        self.coarse_of_fine = [coarse_of_fine.get(f, -1) for f in range(len(classnames))]
        self.finish(cfg, splits["train"], [], splits["test"], classnames, folder)
