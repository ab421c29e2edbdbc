"""FGVC-Aircraft (variants) in CoOp's layout: ``fgvc_aircraft/images/*.jpg``, ``variants.txt`` and
``images_variant_{train,val,test}.txt`` (lines ``<image id> <variant name>``).

The dataset ships its own split, so there is no split json; labels follow the order of ``variants.txt``.
"""
from __future__ import annotations

import os

from dassl.data.datasets import CUSTOM_TEMPLATES, DATASET_REGISTRY, Datum
from federated.errors import DataError

from .coop_base import CoOpDataset, read_text_lines


@DATASET_REGISTRY.register()
class FGVCAircraft(CoOpDataset):
    dataset_dir = "fgvc_aircraft"
    image_dir = "images"
    split_file = ""
    NUM_CLASSES = 100
    REQUIRED = (
        ("images/", "the aircraft images"),
        ("variants.txt", "the 100 variant names, in label order"),
        ("images_variant_train.txt", "train split"),
        ("images_variant_val.txt", "val split"),
        ("images_variant_test.txt", "test split"),
    )
    HOW_TO = ("download fgvc-aircraft-2013b.tar.gz and move its data/ folder to fgvc_aircraft/ (images/, variants.txt, "
              "images_variant_*.txt)")
    TEMPLATE = CUSTOM_TEMPLATES["FGVCAircraft"]

    def load_splits(self, seed: int) -> dict[str, list[Datum]]:
        names = read_text_lines(os.path.join(self.dataset_dir_abs, "variants.txt"))
        lab = {n: i for i, n in enumerate(names)}
        out: dict[str, list[Datum]] = {}
        missing: list[str] = []
        for split in ("train", "val", "test"):
            path = os.path.join(self.dataset_dir_abs, f"images_variant_{split}.txt")
            items = []
            for line in read_text_lines(path):
                imid, _, variant = line.partition(" ")
                if variant not in lab:
                    raise DataError(f"{path}: variant '{variant}' of image {imid} is not in variants.txt")
                impath = os.path.join(self.image_dir_abs, f"{imid}.jpg")
                if not os.path.isfile(impath):
                    missing.append(impath)
                items.append(Datum(impath=impath, label=lab[variant], classname=variant))
            out[split] = items
        if missing:
            raise DataError(f"FGVCAircraft: images_variant_*.txt name {len(missing)} image(s) missing from "
                            f"{self.image_dir_abs}, e.g. {missing[:3]}")
        return out
