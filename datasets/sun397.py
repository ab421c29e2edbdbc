"""SUN397 in CoOp's layout: ``sun397/SUN397/<letter>/<scene>/...`` + ``split_zhou_SUN397.json``.

Without the split file, the split is generated from ``ClassName.txt`` (label order), ``Training_01.txt``
and ``Testing_01.txt`` (partition 1 of the official ten), with 20% of each class's training images as
val, as CoOp does. Class name: the path below the letter, reversed and space-joined
(``/b/bakery/shop`` -> "shop bakery").
"""
from __future__ import annotations

import os
import random

from dassl.data.datasets import CUSTOM_TEMPLATES, DATASET_REGISTRY
from federated.errors import DataError

from .coop_base import CoOpDataset, Entry, read_text_lines, split_trainval


def scene_name(class_path: str) -> str:
    """``a/abbey`` -> "abbey"; ``b/bakery/shop`` -> "shop bakery"."""
    return " ".join(reversed(class_path.strip("/").split("/")[1:]))


@DATASET_REGISTRY.register()
class SUN397(CoOpDataset):
    dataset_dir = "sun397"
    image_dir = "SUN397"
    split_file = "split_zhou_SUN397.json"
    NUM_CLASSES = 397
    REQUIRED = (("SUN397/", "the scene images in <letter>/<scene>/ folders"),)
    HOW_TO = ("download SUN397.tar.gz and Partitions.zip, extract them into sun397/ (ClassName.txt, Training_01.txt, "
              "Testing_01.txt next to SUN397/), and put split_zhou_SUN397.json (CoOp's DATASETS.md) in sun397/")
    TEMPLATE = CUSTOM_TEMPLATES["SUN397"]

    def generate_split(self, seed: int) -> tuple[list[Entry], list[Entry], list[Entry]]:
        self.need_annotations(["ClassName.txt", "Training_01.txt", "Testing_01.txt"])
        classes = [line.strip("/") for line in read_text_lines(os.path.join(self.dataset_dir_abs, "ClassName.txt"))]
        lab = {c: i for i, c in enumerate(classes)}

        def read(name: str) -> list[Entry]:
            path = os.path.join(self.dataset_dir_abs, name)
            out = []
            for line in read_text_lines(path):
                rel = line.lstrip("/")
                cls = os.path.dirname(rel)
                if cls not in lab:
                    raise DataError(f"{path}: {line} is in class '{cls}', which ClassName.txt does not list")
                out.append((rel, lab[cls], scene_name(cls)))
            return out

        train, val = split_trainval(read("Training_01.txt"), 0.2, random.Random(seed))
        return train, val, read("Testing_01.txt")
