"""Food-101 in CoOp's layout: ``food-101/images/<dish>/*.jpg`` + ``split_zhou_Food101.json``."""
from __future__ import annotations

from dassl.data.datasets import CUSTOM_TEMPLATES, DATASET_REGISTRY

from .coop_base import CoOpDataset


@DATASET_REGISTRY.register()
class Food101(CoOpDataset):
    dataset_dir = "food-101"
    image_dir = "images"
    split_file = "split_zhou_Food101.json"
    NUM_CLASSES = 101
    REQUIRED = (("images/", "one folder of images per dish"),)
    HOW_TO = ("download food-101.tar.gz (ETH Zurich), extract it into DATA/ (giving food-101/images/), and put "
              "split_zhou_Food101.json (CoOp's DATASETS.md) in food-101/")
    TEMPLATE = CUSTOM_TEMPLATES["Food101"]
