"""Oxford-IIIT Pets in CoOp's layout: ``oxford_pets/images/*.jpg``, ``annotations/`` + ``split_zhou_OxfordPets.json``.

Without the split file, the split is generated from ``annotations/trainval.txt`` and ``test.txt``
(lines ``<image> <class id 1..37> <species> <breed id>``): 20% of each breed's trainval images go to
val, as CoOp does. The breed name is the image name without its trailing number, lower-cased.
"""
from __future__ import annotations

import os
import random

from dassl.data.datasets import CUSTOM_TEMPLATES, DATASET_REGISTRY
from federated.errors import DataError

from .coop_base import CoOpDataset, Entry, read_text_lines, split_trainval


@DATASET_REGISTRY.register()
class OxfordPets(CoOpDataset):
    dataset_dir = "oxford_pets"
    image_dir = "images"
    split_file = "split_zhou_OxfordPets.json"
    NUM_CLASSES = 37
    REQUIRED = (("images/", "the pet images"),)
    HOW_TO = ("download images.tar.gz and annotations.tar.gz (Oxford-IIIT Pet), extract both into oxford_pets/, "
              "and put split_zhou_OxfordPets.json (CoOp's DATASETS.md) in oxford_pets/")
    TEMPLATE = CUSTOM_TEMPLATES["OxfordPets"]

    def _read(self, name: str) -> list[Entry]:
        path = os.path.join(self.dataset_dir_abs, "annotations", name)
        out = []
        for line in read_text_lines(path):
            parts = line.split()
            try:
                imname, label = parts[0], int(parts[1]) - 1
            except (IndexError, ValueError):
                raise DataError(f"{path}: malformed line {line!r}; expected '<image> <class id> ...'") from None
            breed = "_".join(imname.split("_")[:-1]).lower()
            out.append((f"{imname}.jpg", label, breed))
        return out

    def generate_split(self, seed: int) -> tuple[list[Entry], list[Entry], list[Entry]]:
        self.need_annotations(["annotations/trainval.txt", "annotations/test.txt"])
        train, val = split_trainval(self._read("trainval.txt"), 0.2, random.Random(seed))
        return train, val, self._read("test.txt")
