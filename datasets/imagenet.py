"""ImageNet in CoOp's layout: ``imagenet/images/{train,val}/<wnid>/*.JPEG`` + ``imagenet/classnames.txt``.

``classnames.txt`` has one ``<wnid> <class name>`` line per class (CoOp's file). Labels follow the
sorted wnid folders of ``images/train``; the test split is ``images/val`` (arranged in wnid folders),
and val = test, as CoOp does.
"""
from __future__ import annotations

import os

from dassl.data.datasets import CUSTOM_TEMPLATES, DATASET_REGISTRY, Datum
from federated.errors import DataError

from .common import IMAGE_EXTENSIONS, list_class_folders
from .coop_base import CoOpDataset, read_text_lines


@DATASET_REGISTRY.register()
class ImageNet(CoOpDataset):
    dataset_dir = "imagenet"
    image_dir = "images"
    split_file = ""
    NUM_CLASSES = 1000
    REQUIRED = (
        ("images/train/", "training images, one folder per wnid"),
        ("images/val/", "validation images, one folder per wnid"),
        ("classnames.txt", "'<wnid> <class name>' lines (CoOp's DATASETS.md link)"),
    )
    HOW_TO = ("extract ILSVRC2012 train and val into imagenet/images/train and imagenet/images/val, with the val "
              "images moved into wnid folders (e.g. with the valprep.sh script), and put CoOp's classnames.txt in "
              "imagenet/")
    TEMPLATE = CUSTOM_TEMPLATES["ImageNet"]

    def load_splits(self, seed: int) -> dict[str, list[Datum]]:
        path = os.path.join(self.dataset_dir_abs, "classnames.txt")
        names = {}
        for line in read_text_lines(path):
            wnid, _, name = line.partition(" ")
            names[wnid] = name.strip()
        train_dir = os.path.join(self.image_dir_abs, "train")
        wnids = list_class_folders(train_dir)
        unknown = [w for w in wnids if w not in names]
        if unknown:
            raise DataError(f"{path} has no name for the folders {unknown[:5]} of {train_dir}")

        def read(split: str) -> list[Datum]:
            items = []
            for label, wnid in enumerate(wnids):
                folder = os.path.join(self.image_dir_abs, split, wnid)
                if not os.path.isdir(folder):
                    raise DataError(f"ImageNet: {folder} is missing (every wnid of images/train needs a folder in "
                                    f"images/{split})")
                for im in sorted(os.listdir(folder)):
                    if im.lower().endswith(IMAGE_EXTENSIONS):
                        items.append(Datum(impath=os.path.join(folder, im), label=label, classname=names[wnid]))
            return items

        test = read("val")
        return {"train": read("train"), "val": test, "test": test}
