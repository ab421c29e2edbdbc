"""Fashion-MNIST (Zalando, MIT licence) from its original IDX files; 28x28 grey images, 10 classes.

Looked up, in order, in ``<root>/fashion_mnist/``, torchvision's ``<root>/FashionMNIST/raw/`` and the
Debian package ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist/``, install with
``apt-get install -y dataset-fashion-mnist``); each file may be gzipped or not. Images stay grey
``(28, 28)`` ``uint8`` arrays in memory; the loaders convert them to RGB and resize them to
``INPUT.SIZE``.
"""
from __future__ import annotations

import os

from dassl.data.datasets import DATASET_REGISTRY

from .common import DatasetFilesMissing, RealDataset, dataset_root
from .torchvision_format import existing, read_idx, to_items

DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
CLASSNAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
              "Ankle boot"]


def candidate_dirs(root: str) -> list[str]:
    """Folders searched for the IDX files, in order."""
    return [os.path.join(root, "fashion_mnist"), os.path.join(root, "FashionMNIST", "raw"), DEBIAN_DIR]


def find_files(root: str) -> dict[str, str] | None:
    """``{file stem: path}`` for the four IDX files from the first folder holding all of them, else None."""
    for folder in candidate_dirs(root):
        found = {}
        for stem in (s for pair in FILES.values() for s in pair):
            path = existing(os.path.join(folder, stem), os.path.join(folder, stem + ".gz"))
            if path:
                found[stem] = path
        if len(found) == 4:
            return found
    return None


@DATASET_REGISTRY.register()
class FashionMNIST(RealDataset):
    dataset_dir = "fashion_mnist"
    HOW_TO = ("apt-get install -y dataset-fashion-mnist (Debian/Ubuntu; installs the IDX files in "
              f"{DEBIAN_DIR}), or put train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
              "t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz in <root>/fashion_mnist/")
    TEMPLATE = "a photo of a {}."

    @classmethod
    def missing(cls, root: str) -> list[str]:
        if find_files(root):
            return []
        return [f"{' or '.join(candidate_dirs(root))} (the four IDX files "
                f"{', '.join(s + '[.gz]' for pair in FILES.values() for s in pair)})"]

    @classmethod
    def location(cls, root: str) -> str:
        files = find_files(root)
        return os.path.dirname(files["train-images-idx3-ubyte"]) if files else super().location(root)

    def __init__(self, cfg):
        root = dataset_root(cfg)
        files = find_files(root)
        if files is None:
            raise DatasetFilesMissing(self.missing_message(root, self.missing(root)))
        splits = {}
        for split, (images, labels) in FILES.items():
            splits[split] = to_items(read_idx(files[images]), read_idx(files[labels]), CLASSNAMES, files[images])
        source = os.path.dirname(files["train-images-idx3-ubyte"])
        self.finish(cfg, splits["train"], [], splits["test"], list(CLASSNAMES), source)
