"""Describable Textures (DTD) in CoOp's layout.

``dtd/images/<texture>/*.jpg`` + ``dtd/split_zhou_DescribableTextures.json``.
"""
from __future__ import annotations

from dassl.data.datasets import CUSTOM_TEMPLATES, DATASET_REGISTRY

from .coop_base import CoOpDataset


@DATASET_REGISTRY.register()
class DescribableTextures(CoOpDataset):
    dataset_dir = "dtd"
    image_dir = "images"
    split_file = "split_zhou_DescribableTextures.json"
    NUM_CLASSES = 47
    REQUIRED = (("images/", "one folder of images per texture"),)
    HOW_TO = ("download dtd-r1.0.1.tar.gz, extract it so that dtd/images/<texture>/ exists, and put "
              "split_zhou_DescribableTextures.json (CoOp's DATASETS.md) in dtd/")
    TEMPLATE = CUSTOM_TEMPLATES["DescribableTextures"]
