"""Oxford Flowers-102 in CoOp's layout: ``oxford_flowers/jpg/image_*.jpg``, ``cat_to_name.json``,
``imagelabels.mat`` + ``split_zhou_OxfordFlowers.json``.

Class names come from ``cat_to_name.json`` (keys "1".."102"); without the split file, the split is
generated from ``imagelabels.mat`` (label of ``image_{i:05d}.jpg`` at position i-1): per class 50% train,
20% val, the rest test, as CoOp does.
"""
from __future__ import annotations

import json
import os
import random
from collections import defaultdict

from dassl.data.datasets import CUSTOM_TEMPLATES, DATASET_REGISTRY
from federated.errors import DataError

from .coop_base import CoOpDataset, Entry


@DATASET_REGISTRY.register()
class OxfordFlowers(CoOpDataset):
    dataset_dir = "oxford_flowers"
    image_dir = "jpg"
    split_file = "split_zhou_OxfordFlowers.json"
    NUM_CLASSES = 102
    REQUIRED = (("jpg/", "the flower images image_00001.jpg ..."), ("cat_to_name.json", "class id -> class name"))
    HOW_TO = ("download 102flowers.tgz and imagelabels.mat (Oxford VGG), extract jpg/ into oxford_flowers/, and put "
              "cat_to_name.json and split_zhou_OxfordFlowers.json (CoOp's DATASETS.md) in oxford_flowers/")
    TEMPLATE = CUSTOM_TEMPLATES["OxfordFlowers"]

    def generate_split(self, seed: int) -> tuple[list[Entry], list[Entry], list[Entry]]:
        self.need_annotations(["imagelabels.mat"])
        from scipy.io import loadmat

        names_path = os.path.join(self.dataset_dir_abs, "cat_to_name.json")
        try:
            with open(names_path) as f:
                cat_to_name = json.load(f)
            labels = loadmat(os.path.join(self.dataset_dir_abs, "imagelabels.mat"))["labels"].reshape(-1)
        except (OSError, ValueError, KeyError) as err:
            raise DataError(f"cannot read {names_path} or imagelabels.mat in {self.dataset_dir_abs}: {err}") from None
        by_label: dict[int, list[Entry]] = defaultdict(list)
        for i, lab in enumerate(labels.tolist(), start=1):
            if str(int(lab)) not in cat_to_name:
                raise DataError(f"{names_path} has no name for class {int(lab)} (image_{i:05d}.jpg)")
            by_label[int(lab) - 1].append((f"image_{i:05d}.jpg", int(lab) - 1, cat_to_name[str(int(lab))]))
        rng = random.Random(seed)
        train, val, test = [], [], []
        for label in sorted(by_label):
            items = by_label[label]
            rng.shuffle(items)
            n_train, n_val = round(len(items) * self.P_TRN), round(len(items) * self.P_VAL)
            train += items[:n_train]
            val += items[n_train:n_train + n_val]
            test += items[n_train + n_val:]
        return train, val, test
