"""Caltech101 in CoOp's layout: ``caltech-101/101_ObjectCategories/<class>/*.jpg`` + ``split_zhou_Caltech101.json``.

100 classes (``BACKGROUND_Google`` and ``Faces_easy`` are left out, four folder names are renamed as
CoOp does).
"""
from __future__ import annotations

from dassl.data.datasets import CUSTOM_TEMPLATES, DATASET_REGISTRY

from .coop_base import CoOpDataset


@DATASET_REGISTRY.register()
class Caltech101(CoOpDataset):
    dataset_dir = "caltech-101"
    image_dir = "101_ObjectCategories"
    split_file = "split_zhou_Caltech101.json"
    NUM_CLASSES = 100
    IGNORED = ("BACKGROUND_Google", "Faces_easy")
    NEW_CNAMES = {"airplanes": "airplane", "Faces": "face", "Leopards": "leopard", "Motorbikes": "motorbike"}
    REQUIRED = (("101_ObjectCategories/", "one folder of images per class"),)
    HOW_TO = ("download 101_ObjectCategories.tar.gz (Caltech101), extract it into caltech-101/, and put "
              "split_zhou_Caltech101.json (CoOp's DATASETS.md) next to it")
    TEMPLATE = CUSTOM_TEMPLATES["Caltech101"]
